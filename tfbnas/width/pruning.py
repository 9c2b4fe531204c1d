"""Channel pruning of a Functional Keras model through its channel gates: nothing here is DNAL-specific.

:func:`insert_gates` makes the gated copy of a Functional (or graph Sequential) Keras model: a gate
after every BatchNormalization whose input is the only use of a ``Conv2D``-family conv (plain,
Larq ``QuantConv2D``, separable; not depthwise, grouped or transposed).

How :func:`prune` keeps the function of the gated model with gates at 0/1:

* Channels live in *channel spaces*: a conv output starts one; BatchNorm, gates, activations,
  pooling, dropout and depthwise convs keep it; ``Add``/``Multiply``/``Average``/... merge the
  spaces of their inputs (residual connections), ``Concatenate`` and ``Flatten`` derive a new one.
* A merged space (a residual stream) keeps the **union** of the open channels of all gated convs
  that write into it; a channel closed in one branch but open in another stays, and in the branch
  where it was closed its BatchNorm scale and offset are set to 0, which reproduces the closed
  gate exactly. A space that an ungated layer writes into (the input, a Dense, an ungated conv), that
  feeds a layer tfbnas cannot slice (Lambda, Reshape, grouped conv, nested model, ...) or that is a
  model output keeps all its channels.
* A removed channel is not always zero where it is consumed: after a closed gate it is 0, but a
  BatchNorm after a depthwise conv turns 0 into a constant, and a binary conv's ``sign`` turns 0
  into +1. :func:`prune` tracks that per-channel constant and folds its contribution into the
  consumer (the moving mean of the BatchNorm that follows it, or its bias). This is exact at every
  position for real-valued convs fed by ReLU, and for binary ``QuantConv2D`` with ``padding="valid"``
  or ``pad_values=1.0`` (what LCE prefers); with zero padding and a non-zero constant it is exact
  away from the image border. Kernel quantizers must be element-wise (``ste_sign``); a
  magnitude-aware scale would change with the number of input channels.
* Every space keeps at least one channel (the one with the largest ``s``), zeroed like above if
  its gate was closed.

Example:
    >>> gated = insert_gates(model)          # gates open (mode "off"): the same function as ``model``
    >>> ...                                  # decide which gates close (DNAL: tfbnas.width.dnal.train_gates)
    >>> prune_plan(gated)                    # {conv name: (channels before, after)}
    >>> small = prune(gated)                 # a plain Keras model without the closed channels
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfbnas.errors import PruneError, WidthSearchError

from tfbnas.width.gates import GATE_MODES, ChannelGate

_L = tf.keras.layers


# ============================================================================ graph walking


def _check_graph_model(model):
    if not isinstance(model, tf.keras.Model) or not getattr(model, "_is_graph_network", False):
        raise PruneError(f"{getattr(model, 'name', model)} is not a Functional model; DNAL rebuilds Functional "
                         "(or Sequential with a known input shape) Keras models; build it with tf.keras.Input")


def _ordered_nodes(model):
    """The model's nodes, each after all nodes it depends on."""
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes.extend(model._nodes_by_depth[depth])
    return nodes


def _kt_id(tensor) -> int:
    return id(tensor)


def _map_call(node, tensors: Dict[int, object]):
    flat = tf.nest.flatten((node.call_args, node.call_kwargs))
    mapped = [tensors[_kt_id(t)] if _is_keras_tensor(t) else t for t in flat]
    return tf.nest.pack_sequence_as((node.call_args, node.call_kwargs), mapped)


def _is_keras_tensor(obj) -> bool:
    return hasattr(obj, "_keras_history")


def _consumers(model) -> Dict[int, list]:
    """id(tensor) -> nodes of ``model`` that take it as input (model outputs appear as ``None``)."""
    out: Dict[int, list] = {}
    for node in _ordered_nodes(model):
        if node.is_input:
            continue
        for t in node.keras_inputs:
            out.setdefault(_kt_id(t), []).append(node)
    for t in model.outputs:
        out.setdefault(_kt_id(t), []).append(None)
    return out


def _calls(model) -> Dict[int, int]:
    counts: Dict[int, int] = {}
    for node in _ordered_nodes(model):
        counts[id(node.layer)] = counts.get(id(node.layer), 0) + 1
    return counts


def _new_inputs(model, tensors):
    inputs = []
    for t in model.inputs:
        layer = t._keras_history.layer
        new = tf.keras.Input(shape=t.shape[1:], batch_size=t.shape[0], dtype=t.dtype, name=layer.name)
        tensors[_kt_id(t)] = new
        inputs.append(new)
    return inputs


def _outputs(model, tensors):
    outs = [tensors[_kt_id(t)] for t in model.outputs]
    return outs[0] if len(outs) == 1 else outs


def _clone_layer(layer, **overrides):
    config = layer.get_config()
    config.update(overrides)
    return layer.__class__.from_config(config)


def _is_plain_conv(layer) -> bool:
    """Convs whose output channels DNAL can gate and prune (filters, no groups, not transposed)."""
    if isinstance(layer, (_L.Conv2DTranspose, _L.DepthwiseConv2D)):
        return False
    if isinstance(layer, _L.SeparableConv2D):
        return True
    return isinstance(layer, _L.Conv2D) and getattr(layer, "groups", 1) == 1


def _last_axis(layer, rank: int) -> bool:
    axis = layer.axis
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and axis in (-1, rank - 1)


# ============================================================================ insert_gates


def insert_gates(model: tf.keras.Model, mode: str = "off", delta: float = 1.0,
                 include: Optional[Callable[[tf.keras.layers.Layer, tf.keras.layers.Layer], bool]] = None
                 ) -> tf.keras.Model:
    """A copy of ``model`` with a :class:`ChannelGate` after each BatchNorm that follows a conv.

    Args:
        model: a Functional (or graph Sequential) Keras model; its weights are copied, it is not changed.
        mode: initial gate mode (``"off"`` for stage 1).
        delta: initial ``delta``.
        include: optional ``include(conv, batchnorm) -> bool`` to gate only some layers.

    Returns:
        The gated Functional model (same inputs and outputs). Gate ``i`` is named ``<bn name>_gate``.

    Raises:
        PruneError: the model is not a graph model, or it has no Conv-BN pair to gate.

    Example:
        >>> gated = insert_gates(model)
        >>> [g.name for g in gate_layers(gated)]
        ['bn1_gate', 'bn2_gate']
    """
    _check_graph_model(model)
    if mode not in GATE_MODES:
        raise WidthSearchError(f"mode must be one of {GATE_MODES}, got '{mode}'")
    consumers, calls = _consumers(model), _calls(model)
    gated_bns = set()
    for node in _ordered_nodes(model):
        layer = node.layer
        if not isinstance(layer, _L.BatchNormalization) or len(node.keras_inputs) != 1:
            continue
        src = node.keras_inputs[0]
        conv = src._keras_history.layer
        if not _is_plain_conv(conv) or calls[id(conv)] != 1 or calls[id(layer)] != 1:
            continue
        if len(consumers.get(_kt_id(src), [])) != 1 or not _last_axis(layer, len(src.shape)):
            continue
        if include is not None and not include(conv, layer):
            continue
        gated_bns.add(id(layer))
    if not gated_bns:
        raise PruneError(f"{model.name} has no Conv-BatchNorm pair to gate; DNAL gates a BatchNormalization that "
                         "directly follows a Conv2D/QuantConv2D/SeparableConv2D used once")

    tensors: Dict[int, object] = {}
    inputs = _new_inputs(model, tensors)
    new_layers: Dict[int, tf.keras.layers.Layer] = {}
    copies = []
    for node in _ordered_nodes(model):
        if node.is_input:
            continue
        layer = node.layer
        if id(layer) not in new_layers:
            new_layers[id(layer)] = _clone_layer(layer)
            copies.append((layer, new_layers[id(layer)]))
        args, kwargs = _map_call(node, tensors)
        out = new_layers[id(layer)](*args, **kwargs)
        if id(layer) in gated_bns:
            out = ChannelGate(mode=mode, delta=delta, name=f"{layer.name}_gate")(out)
        for t, y in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
            tensors[_kt_id(t)] = y
    gated = tf.keras.Model(inputs if len(inputs) > 1 else inputs[0], _outputs(model, tensors), name=model.name)
    for old, new in copies:
        new.set_weights(old.get_weights())
    return gated


# ============================================================================ prune

# Layers that map channel c of their input to channel c of their output, position by position.
_CHANNEL_WISE = (
    _L.BatchNormalization, ChannelGate, _L.Activation, _L.ReLU, _L.LeakyReLU, _L.ELU, _L.PReLU,
    _L.ThresholdedReLU, _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D,
    _L.GaussianNoise, _L.GaussianDropout, _L.AlphaDropout, _L.ActivityRegularization,
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.AveragePooling1D, _L.AveragePooling2D,
    _L.AveragePooling3D, _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D, _L.ZeroPadding2D, _L.Cropping2D,
    _L.UpSampling2D,
)
_ELEMENTWISE_MERGE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_REGISTERED_CHANNEL_WISE: List[type] = []


def register_channel_wise(layer_class: type) -> type:
    """Declares a weight-free layer class channel-wise (output channel c depends only on input channel c).

    :func:`prune` then slices through it instead of keeping all channels of its input. Usable as a
    class decorator.
    """
    if layer_class not in _REGISTERED_CHANNEL_WISE:
        _REGISTERED_CHANNEL_WISE.append(layer_class)
    return layer_class


def _register_space_layers():
    # The Child's spatial-only helper layers (pixel shift, subsampling) move pixels, never channels.
    try:
        from tfbnas.space.ops import ShiftPixel, Subsample2D
    except ImportError:  # the search space package is optional here
        return
    register_channel_wise(ShiftPixel)
    register_channel_wise(Subsample2D)


@dataclasses.dataclass
class _Space:
    """A set of channels that must be kept or removed together."""

    size: int
    kind: str  # "fixed" (keep all), "gated" (a gated conv writes it), "derived" (concat/flatten/depthwise m>1)
    open: Optional[np.ndarray] = None  # gated: open mask
    strength: Optional[np.ndarray] = None  # gated: s, to pick a survivor
    sources: Tuple[int, ...] = ()  # derived: source spaces
    derive: Optional[Callable[[List[np.ndarray]], np.ndarray]] = None  # derived: keep of sources -> keep


class _UnionFind:
    def __init__(self):
        self.parent: Dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _is_channel_wise(layer, node) -> bool:
    if isinstance(layer, _L.BatchNormalization):
        return _last_axis(layer, len(node.keras_inputs[0].shape))
    if isinstance(layer, _L.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    if isinstance(layer, _L.PReLU):
        return True
    return isinstance(layer, _CHANNEL_WISE + tuple(_REGISTERED_CHANNEL_WISE))


class _Plan:
    """Channel spaces of a gated model and the channels each keeps."""

    def __init__(self, model: tf.keras.Model):
        _check_graph_model(model)
        _register_space_layers()
        self.model = model
        self.nodes = [n for n in _ordered_nodes(model)]
        self.spaces: List[_Space] = []
        self.space_of: Dict[int, int] = {}  # id(tensor) -> space
        self.uf = _UnionFind()
        self.must_full = set()
        self.gates: Dict[int, ChannelGate] = {}  # id(conv) -> its gate
        self.gated_bn: Dict[int, ChannelGate] = {}  # id(bn) -> its gate
        self.producer_space: Dict[int, int] = {}  # id(conv/dense) -> output space
        self.opaque = set()  # id(node) of layers that see every channel
        self._find_gates()
        self._assign_spaces()
        self._decide()

    # -------------------------------------------------------------- structure
    def _new_space(self, size, kind, **kw) -> int:
        self.spaces.append(_Space(int(size), kind, **kw))
        return len(self.spaces) - 1

    def _find_gates(self):
        calls = _calls(self.model)
        for node in self.nodes:
            gate = node.layer
            if not isinstance(gate, ChannelGate):
                continue
            bn = node.keras_inputs[0]._keras_history.layer
            conv = None
            if isinstance(bn, _L.BatchNormalization) and bn._inbound_nodes and bn._inbound_nodes[0].keras_inputs:
                conv = bn._inbound_nodes[0].keras_inputs[0]._keras_history.layer
            if conv is None or not _is_plain_conv(conv) or calls.get(id(conv), 0) != 1 or calls.get(id(bn), 0) != 1:
                raise PruneError(f"gate '{gate.name}' does not follow a BatchNormalization that follows a conv; "
                                 "DNAL prunes Conv-BN-gate chains as made by insert_gates")
            self.gates[id(conv)] = gate
            self.gated_bn[id(bn)] = gate

    def _assign_spaces(self):
        for t in self.model.inputs:
            self.space_of[_kt_id(t)] = self._new_space(t.shape[-1], "fixed")
        for node in self.nodes:
            if node.is_input:
                continue
            layer, ins, outs = node.layer, node.keras_inputs, tf.nest.flatten(node.outputs)
            in_spaces = [self.space_of[_kt_id(t)] for t in ins]
            if _is_plain_conv(layer) and len(ins) == 1:
                gate = self.gates.get(id(layer))
                if gate is not None:
                    sid = self._new_space(outs[0].shape[-1], "gated", open=gate.open_mask(), strength=gate.s.numpy())
                else:
                    sid = self._new_space(outs[0].shape[-1], "fixed")
                self.producer_space[id(layer)] = sid
                self.space_of[_kt_id(outs[0])] = sid
            elif isinstance(layer, _L.Dense) and len(ins) == 1 and len(ins[0].shape) == 2:
                sid = self._new_space(outs[0].shape[-1], "fixed")
                self.producer_space[id(layer)] = sid
                self.space_of[_kt_id(outs[0])] = sid
            elif len(ins) == 1 and len(outs) == 1 and _is_channel_wise(layer, node):
                self.space_of[_kt_id(outs[0])] = in_spaces[0]
            elif isinstance(layer, _L.DepthwiseConv2D) and len(ins) == 1:
                m = layer.depth_multiplier
                sid = self._new_space(outs[0].shape[-1], "derived", sources=(in_spaces[0],),
                                      derive=lambda keeps, m=m: (keeps[0][:, None] * m + np.arange(m)).reshape(-1))
                self.space_of[_kt_id(outs[0])] = sid
            elif isinstance(layer, _ELEMENTWISE_MERGE) and len(outs) == 1 and \
                    len({t.shape[-1] for t in ins}) == 1:
                for s in in_spaces[1:]:
                    self.uf.union(in_spaces[0], s)
                self.space_of[_kt_id(outs[0])] = in_spaces[0]
            elif isinstance(layer, _L.Concatenate) and len(outs) == 1 and \
                    layer.axis in (-1, len(outs[0].shape) - 1):
                sizes = [int(t.shape[-1]) for t in ins]
                offsets = np.cumsum([0] + sizes[:-1])
                sid = self._new_space(
                    outs[0].shape[-1], "derived", sources=tuple(in_spaces),
                    derive=lambda keeps, o=offsets: np.concatenate([k + off for k, off in zip(keeps, o)]))
                self.space_of[_kt_id(outs[0])] = sid
            elif isinstance(layer, _L.Flatten) and len(ins) == 1 and len(ins[0].shape) > 2 and \
                    all(d is not None for d in ins[0].shape[1:]) and layer.data_format == "channels_last":
                positions = int(np.prod(ins[0].shape[1:-1]))
                c = int(ins[0].shape[-1])
                sid = self._new_space(  # flatten index of (position p, channel k) is p * C + k
                    outs[0].shape[-1], "derived", sources=(in_spaces[0],),
                    derive=lambda keeps, p=positions, c=c: (np.arange(p)[:, None] * c + keeps[0][None, :]).reshape(-1))
                self.space_of[_kt_id(outs[0])] = sid
            else:  # a layer we cannot slice: it sees every channel, its outputs keep all theirs
                self.opaque.add(id(node))
                self.must_full.update(in_spaces)
                for t in outs:
                    self.space_of[_kt_id(t)] = self._new_space(t.shape[-1] if t.shape.rank else 1, "fixed")
        for t in self.model.outputs:
            self.must_full.add(self.space_of[_kt_id(t)])

    # -------------------------------------------------------------- decisions
    def _decide(self):
        groups: Dict[int, List[int]] = {}
        for sid in range(len(self.spaces)):
            groups.setdefault(self.uf.find(sid), []).append(sid)
        self.groups = groups
        full_roots = set()
        for root, members in groups.items():
            kinds = [self.spaces[m].kind for m in members]
            if "fixed" in kinds or any(m in self.must_full for m in members) or \
                    ("derived" in kinds and len(members) > 1):  # derived channels merged with others: keep all
                full_roots.add(root)
        changed = True
        while changed:  # a derived space that must stay full needs full sources
            changed = False
            for root in list(full_roots):
                for m in groups[root]:
                    for src in self.spaces[m].sources:
                        r = self.uf.find(src)
                        if r not in full_roots:
                            full_roots.add(r)
                            changed = True
        self.keep: Dict[int, np.ndarray] = {}
        for sid in range(len(self.spaces)):  # creation order: sources first
            root = self.uf.find(sid)
            if root in self.keep:
                self.keep[sid] = self.keep[root]
                continue
            space = self.spaces[root]
            if root in full_roots:
                keep = np.arange(space.size)
            elif space.kind == "derived":
                keep = space.derive([self.keep[s] for s in space.sources])
            else:
                members = [self.spaces[m] for m in groups[root]]
                mask = np.zeros(space.size, bool)
                for m in members:
                    mask |= m.open
                if not mask.any():  # keep one channel: the one closest to opening
                    mask[int(np.argmax(np.max([m.strength for m in members], axis=0)))] = True
                keep = np.flatnonzero(mask)
            self.keep[root] = keep
            self.keep[sid] = keep

    def keep_of(self, tensor) -> np.ndarray:
        return self.keep[self.space_of[_kt_id(tensor)]]

    def size_of(self, tensor) -> int:
        return self.spaces[self.space_of[_kt_id(tensor)]].size


def prune_plan(gated_model: tf.keras.Model) -> Dict[str, Tuple[int, int]]:
    """``{conv/dense name: (channels before, channels after)}`` that :func:`prune` would produce."""
    plan = _Plan(gated_model)
    out = {}
    for node in plan.nodes:
        sid = plan.producer_space.get(id(node.layer))
        if sid is not None:
            out[node.layer.name] = (plan.spaces[sid].size, len(plan.keep[sid]))
    return out


def _weights_by_name(layer) -> Dict[str, np.ndarray]:
    out = {}
    for w in layer.weights:
        latent = getattr(w, "latent_variable", w)
        out[latent.name.split("/")[-1].split(":")[0]] = latent.numpy()
    return out


def _assign_by_name(layer, values: Dict[str, np.ndarray]):
    for w in layer.weights:
        latent = getattr(w, "latent_variable", w)
        key = latent.name.split("/")[-1].split(":")[0]
        if key not in values:
            raise PruneError(f"internal: no value for weight '{key}' of layer '{layer.name}'")
        latent.assign(values[key].astype(latent.dtype.as_numpy_dtype))


def _constant_like(tensor, values: np.ndarray) -> tf.Tensor:
    """A batch-1 tensor shaped like ``tensor`` whose channel c is ``values[c]`` everywhere."""
    shape = [1] + [8 if d is None else int(d) for d in tensor.shape[1:]]
    return tf.constant(np.broadcast_to(values.astype(np.float32), shape))


def _center(y) -> np.ndarray:
    y = np.asarray(y)
    index = (0,) + tuple(d // 2 for d in y.shape[1:-1])
    return y[index]


def _quantize(quantizer, x: np.ndarray) -> np.ndarray:
    return x if quantizer is None else np.asarray(quantizer(tf.constant(x, tf.float32)))


def _fold(layer, removed: np.ndarray, const: np.ndarray) -> Optional[np.ndarray]:
    """Contribution of removed input channels (constant ``const[removed]``) to each output of ``layer``."""
    if removed.size == 0:
        return None
    w = _weights_by_name(layer)
    q = _quantize(getattr(layer, "input_quantizer", None), const[removed])
    if not np.any(q):
        return None
    if isinstance(layer, _L.SeparableConv2D):
        m = layer.depth_multiplier
        dk = _quantize(getattr(layer, "depthwise_quantizer", None), w["depthwise_kernel"])
        pk = _quantize(getattr(layer, "pointwise_quantizer", None), w["pointwise_kernel"])
        d = q[:, None] * dk[:, :, removed, :].sum(axis=(0, 1))  # [removed, m]
        rows = (removed[:, None] * m + np.arange(m)).reshape(-1)
        return d.reshape(-1) @ pk[0, 0, rows, :]
    kernel = _quantize(getattr(layer, "kernel_quantizer", None), w["kernel"])
    if isinstance(layer, _L.Dense):
        return q @ kernel[removed, :]
    return q @ kernel[:, :, removed, :].sum(axis=(0, 1))


def prune(gated_model: tf.keras.Model) -> tf.keras.Model:
    """Removes the channels of closed gates and rebuilds a smaller plain Keras model (no gates).

    Args:
        gated_model: a model from :func:`insert_gates` after :func:`train_gates` (or with gates set by hand).
            A channel is kept iff its gate's ``s > 0`` (the ``"hard"`` gate), subject to the residual
            union and the rules in the module docstring.

    Returns:
        A new Functional model with the same inputs/outputs and layer names, fewer channels, no
        :class:`ChannelGate`; with gates in ``"hard"`` mode it computes what ``gated_model`` computes.

    Raises:
        PruneError: a gate is not in a Conv-BN-gate chain, or a layer that must be sliced is shared.

    Example:
        >>> small = prune(gated)
        >>> small.count_params() < model.count_params()
        True
    """
    plan = _Plan(gated_model)
    calls = _calls(gated_model)
    consumers = _consumers(gated_model)
    tensors: Dict[int, object] = {}
    consts: Dict[int, np.ndarray] = {}  # id(tensor) -> value removed channels carry there
    inputs = _new_inputs(gated_model, tensors)
    for t in gated_model.inputs:
        consts[_kt_id(t)] = np.zeros(t.shape[-1], np.float32)
    new_layers: Dict[int, tf.keras.layers.Layer] = {}
    assignments: List[Tuple[tf.keras.layers.Layer, object]] = []
    bn_shift: Dict[int, np.ndarray] = {}  # id(bn) -> fold to subtract from its moving mean

    def sole_bn_consumer(node):
        outs = tf.nest.flatten(node.outputs)
        users = consumers.get(_kt_id(outs[0]), [])
        if len(users) == 1 and users[0] is not None and isinstance(users[0].layer, _L.BatchNormalization) \
                and calls[id(users[0].layer)] == 1:
            return users[0].layer
        return None

    for node in plan.nodes:
        if node.is_input:
            continue
        layer, ins, outs = node.layer, node.keras_inputs, tf.nest.flatten(node.outputs)
        args, kwargs = _map_call(node, tensors)
        in_keep = [plan.keep_of(t) for t in ins]
        full_in = all(len(k) == plan.size_of(t) for k, t in zip(in_keep, ins))
        out_keep = [plan.keep_of(t) for t in outs]
        full_out = all(len(k) == plan.size_of(t) for k, t in zip(out_keep, outs))

        if isinstance(layer, ChannelGate):
            y = args[0]
            for t, v in zip(outs, [y]):
                tensors[_kt_id(t)] = v
                consts[_kt_id(t)] = np.zeros(t.shape[-1], np.float32)  # a closed gate outputs 0
            continue

        if (not full_in or not full_out) and calls[id(layer)] > 1 and layer.weights:
            raise PruneError(f"layer '{layer.name}' is shared (called {calls[id(layer)]} times) and would need "
                             "slicing; give each call its own layer or exclude its convs from gating")

        fold = None
        producer = _is_plain_conv(layer) or (isinstance(layer, _L.Dense) and id(layer) in plan.producer_space)
        if producer and len(ins) == 1:
            removed = np.setdiff1d(np.arange(plan.size_of(ins[0])), in_keep[0])
            fold = _fold(layer, removed, consts[_kt_id(ins[0])])
            if fold is not None:
                act = tf.keras.activations.serialize(layer.activation)
                if act not in ("linear", None):
                    raise PruneError(f"layer '{layer.name}' has a built-in activation '{act}' and pruned inputs that "
                                     "carry a constant; put the activation in its own layer after BatchNorm")
            bn = sole_bn_consumer(node) if fold is not None else None
            if bn is not None:
                bn_shift[id(bn)] = fold
                fold = None
            overrides = {}
            if isinstance(layer, _L.Dense):
                overrides["units"] = len(out_keep[0])
            else:
                overrides["filters"] = len(out_keep[0])
            if fold is not None and not layer.use_bias:
                overrides["use_bias"] = True
            new = _clone_layer(layer, **overrides)
            y = new(*args, **kwargs)
            w = _weights_by_name(layer)
            vals = {}
            ki, ko = in_keep[0], out_keep[0]
            if isinstance(layer, _L.SeparableConv2D):
                m = layer.depth_multiplier
                rows = (ki[:, None] * m + np.arange(m)).reshape(-1)
                vals["depthwise_kernel"] = w["depthwise_kernel"][:, :, ki, :]
                vals["pointwise_kernel"] = w["pointwise_kernel"][:, :, rows, :][..., ko]
            elif isinstance(layer, _L.Dense):
                vals["kernel"] = w["kernel"][ki][:, ko]
            else:
                vals["kernel"] = w["kernel"][:, :, ki, :][..., ko]
            bias = w["bias"] if "bias" in w else np.zeros(plan.size_of(outs[0]), np.float32)
            if fold is not None:
                bias = bias + fold
            if layer.use_bias or fold is not None:
                vals["bias"] = bias[ko]
            assignments.append((new, vals))
            tensors[_kt_id(outs[0])] = y
            consts[_kt_id(outs[0])] = np.zeros(outs[0].shape[-1], np.float32)
            continue

        if isinstance(layer, _L.BatchNormalization) and len(ins) == 1 and _last_axis(layer, len(ins[0].shape)) \
                and (id(layer) in plan.gated_bn or id(layer) in bn_shift or not full_in):
            keep = in_keep[0]
            w = _weights_by_name(layer)
            size = plan.size_of(ins[0])
            gamma = w.get("gamma", np.ones(size, np.float32)).copy()
            beta = w.get("beta", np.zeros(size, np.float32)).copy()
            mean = w["moving_mean"].copy()
            if id(layer) in bn_shift:
                mean = mean - bn_shift[id(layer)]
            overrides = {}
            gate = plan.gated_bn.get(id(layer))
            if gate is not None:
                closed = ~gate.open_mask()
                if np.any(closed[keep]):  # kept only for a residual partner: reproduce the closed gate
                    gamma[closed] = 0.0
                    beta[closed] = 0.0
                    overrides = {"scale": True, "center": True}
            new = _clone_layer(layer, **overrides)
            y = new(*args, **kwargs)
            vals = {"moving_mean": mean[keep], "moving_variance": w["moving_variance"][keep]}
            if new.scale:
                vals["gamma"] = gamma[keep]
            if new.center:
                vals["beta"] = beta[keep]
            assignments.append((new, vals))
            tensors[_kt_id(outs[0])] = y
            consts[_kt_id(outs[0])] = np.asarray(_center(layer(_constant_like(ins[0], consts[_kt_id(ins[0])]),
                                                              training=False)))
            continue

        # Everything else: same config; weights sliced on the channel axis if the input was pruned.
        if id(layer) not in new_layers:
            new_layers[id(layer)] = _clone_layer(layer)
            new = new_layers[id(layer)]
            if full_in:
                assignments.append((new, layer))
            elif isinstance(layer, _L.DepthwiseConv2D):
                w = _weights_by_name(layer)
                vals = {"depthwise_kernel": w["depthwise_kernel"][:, :, in_keep[0], :]}
                if "bias" in w:
                    vals["bias"] = w["bias"][out_keep[0]]
                assignments.append((new, vals))
            elif isinstance(layer, _L.PReLU):
                w = _weights_by_name(layer)
                assignments.append((new, {"alpha": w["alpha"][..., in_keep[0]] if w["alpha"].shape[-1] > 1
                                          else w["alpha"]}))
            elif layer.weights:
                raise PruneError(f"internal: layer '{layer.name}' ({type(layer).__name__}) has weights and pruned "
                                 "inputs but no slicing rule")
            else:
                assignments.append((new, layer))
        y = new_layers[id(layer)](*args, **kwargs)
        for t, v in zip(outs, tf.nest.flatten(y)):
            tensors[_kt_id(t)] = v
        if id(node) in plan.opaque:  # its outputs keep every channel: nothing removed to track
            for t in outs:
                consts[_kt_id(t)] = np.zeros(t.shape[-1] if t.shape.rank else 1, np.float32)
        else:  # carry the removed channels' constants through the layer
            const_in = [_constant_like(t, consts[_kt_id(t)]) for t in ins]
            call_args = const_in[0] if len(const_in) == 1 else const_in
            kw = {"training": False} if "training" in getattr(layer, "_call_spec").arg_names else {}
            const_out = tf.nest.flatten(layer(call_args, **kw))
            for t, v in zip(outs, const_out):
                consts[_kt_id(t)] = np.asarray(_center(v))

    pruned = tf.keras.Model(inputs if len(inputs) > 1 else inputs[0], _outputs(gated_model, tensors),
                            name=f"{gated_model.name}_pruned")
    for new, source in assignments:
        if isinstance(source, tf.keras.layers.Layer):
            new.set_weights(source.get_weights())
        else:
            _assign_by_name(new, source)
    return pruned


def width_table(gated_model: tf.keras.Model) -> List[dict]:
    """Rows ``{"layer", "type", "gated", "before", "after"}`` for every conv/dense whose width is decided."""
    plan = _Plan(gated_model)
    rows = []
    for node in plan.nodes:
        sid = plan.producer_space.get(id(node.layer))
        if sid is not None:
            rows.append({"layer": node.layer.name, "type": type(node.layer).__name__,
                         "gated": id(node.layer) in plan.gates, "before": plan.spaces[sid].size,
                         "after": int(len(plan.keep[sid]))})
    return rows
