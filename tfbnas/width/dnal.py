"""DNAL: Differentiable Neural Architecture Learning of layer widths with scaled-sigmoid channel gates.

A :class:`ChannelGate` multiplies every channel of a Conv-BN output by ``g = sigmoid(delta * s)``
(Conv-BN-gate-activation). ``s`` starts at 0; ``delta`` is a non-trainable scale that grows from
1 to 1e4, so ``g`` turns from a smooth sigmoid into the step ``[s > 0]``. The four stages:

1. :func:`train_weights`: gates off (identity), ordinary training of the weights.
2. :func:`train_gates`: weights and BatchNorm frozen, only ``s`` learns, with loss
   ``CE + lambda_a * sum_i sigmoid(delta * s_i)`` (``penalty="mean"`` divides by the number of
   gates) while :class:`DeltaSchedule` raises ``delta`` exponentially from ``delta_start`` to
   ``delta_end`` over the stage.
3. :func:`prune`: channels whose gate is closed (``s <= 0``) are removed and a smaller plain Keras
   model (no gates) is rebuilt with the surviving weights; removal is propagated through the
   layers that consume the channels.
4. :func:`finetune`: ordinary training of the pruned model.

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
    >>> gated = insert_gates(model)
    >>> train_weights(gated, (x, y), epochs=3)
    >>> train_gates(gated, (x, y), epochs=2, lambda_a=2e-3)
    >>> small = prune(gated)
    >>> finetune(small, (x, y), epochs=2)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.errors import PruneError, WidthSearchError  # noqa: F401  (importable from here)

__all__ = [
    "GATE_MODES",
    "ChannelGate",
    "DNALResult",
    "DeltaSchedule",
    "PruneError",
    "default_loss",
    "example_cnn",
    "finetune",
    "gate_layers",
    "insert_gates",
    "prune",
    "prune_plan",
    "register_channel_wise",
    "run_dnal",
    "set_gate_delta",
    "set_gate_mode",
    "train_gates",
    "train_weights",
    "width_table",
]

#: Gate behaviours: identity, ``sigmoid(delta * s)``, and the step ``[s > 0]``.
GATE_MODES = ("off", "soft", "hard")

_L = tf.keras.layers


# ============================================================================ the gate


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class ChannelGate(tf.keras.layers.Layer):
    """Per-channel gate ``x * sigmoid(delta * s)`` on the last axis (DNAL's scaled sigmoid).

    Args:
        mode: ``"off"`` (identity), ``"soft"`` (``sigmoid(delta * s)``) or ``"hard"`` (``[s > 0]``).
            Stored in a variable, so changing :attr:`mode` needs no re-trace.
        delta: initial scale; a non-trainable variable, raised by :class:`DeltaSchedule`.
        **kwargs: base layer arguments.

    Example:
        >>> gate = ChannelGate(mode="soft")
        >>> y = gate(tf.ones([2, 8, 8, 16]))   # s = 0: every gate is sigmoid(0) = 0.5
        >>> gate.mode = "hard"
    """

    def __init__(self, mode: str = "soft", delta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in GATE_MODES:
            raise WidthSearchError(f"ChannelGate mode must be one of {GATE_MODES}, got '{mode}'")
        self._initial_mode = mode
        self._initial_delta = float(delta)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise WidthSearchError(f"{self.name}: the channel axis (last) must be known to build a gate")
        self.s = self.add_weight("s", shape=(int(channels),), initializer="zeros", trainable=True)
        self.delta = self.add_weight("delta", shape=(), initializer=tf.keras.initializers.Constant(self._initial_delta),
                                     trainable=False)
        self._mode = self.add_weight("mode", shape=(), dtype=tf.int32, trainable=False,
                                     initializer=tf.keras.initializers.Constant(GATE_MODES.index(self._initial_mode)))
        super().build(input_shape)

    @property
    def mode(self) -> str:
        if not self.built:
            return self._initial_mode
        return GATE_MODES[int(self._mode.numpy())]

    @mode.setter
    def mode(self, value: str):
        if value not in GATE_MODES:
            raise WidthSearchError(f"ChannelGate mode must be one of {GATE_MODES}, got '{value}'")
        if self.built:
            self._mode.assign(GATE_MODES.index(value))
        self._initial_mode = value

    def gates(self, mode: Optional[str] = None) -> tf.Tensor:
        """The per-channel multipliers for ``mode`` (the current mode if ``None``)."""
        s = tf.cast(self.s, self.compute_dtype)
        table = tf.stack([tf.ones_like(s), tf.sigmoid(tf.cast(self.delta, s.dtype) * s), tf.cast(s > 0, s.dtype)])
        index = self._mode if mode is None else GATE_MODES.index(mode)
        return tf.gather(table, index)

    def call(self, inputs):
        return inputs * self.gates()

    def open_mask(self) -> np.ndarray:
        """Channels that survive pruning: ``s > 0``."""
        return self.s.numpy() > 0

    def get_config(self):
        delta = float(self.delta.numpy()) if self.built else self._initial_delta
        return {**super().get_config(), "mode": self.mode, "delta": delta}


def gate_layers(model: tf.keras.Model) -> List[ChannelGate]:
    """All :class:`ChannelGate` layers of a model (nested models included)."""
    return [layer for layer in model.submodules if isinstance(layer, ChannelGate)]


def set_gate_mode(model: tf.keras.Model, mode: str) -> None:
    """Sets every gate of ``model`` to ``mode`` (``"off"``, ``"soft"`` or ``"hard"``)."""
    for gate in gate_layers(model):
        gate.mode = mode


def set_gate_delta(model: tf.keras.Model, delta: float) -> None:
    """Sets ``delta`` of every gate of ``model``."""
    for gate in gate_layers(model):
        gate.delta.assign(float(delta))


class DeltaSchedule(tf.keras.callbacks.Callback):
    """Raises ``delta`` of every gate exponentially, ``delta_t = start * (end / start) ** (t / (T - 1))``.

    Args:
        start: ``delta`` at the first training step (DNAL: 1).
        end: ``delta`` at the last step (DNAL: 1e4).
        total_steps: number of training steps ``T`` of the stage.
        gates: the gates to drive; default all gates of the model being trained.

    Example:
        >>> model.fit(ds, epochs=2, callbacks=[DeltaSchedule(1.0, 1e4, total_steps=2 * len(ds))])
    """

    def __init__(self, start: float = 1.0, end: float = 1e4, total_steps: int = 1,
                 gates: Optional[Sequence[ChannelGate]] = None):
        super().__init__()
        if start <= 0 or end <= 0:
            raise WidthSearchError(f"delta start and end must be positive, got {start} and {end}")
        if total_steps < 1:
            raise WidthSearchError(f"total_steps must be at least 1, got {total_steps}")
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)
        self._gates = gates
        self.step = 0

    def value(self, step: int) -> float:
        t = min(step, self.total_steps - 1) / max(1, self.total_steps - 1)
        return self.start * (self.end / self.start) ** t

    def on_train_batch_begin(self, batch, logs=None):
        gates = self._gates if self._gates is not None else gate_layers(self.model)
        delta = self.value(self.step)
        for gate in gates:
            gate.delta.assign(delta)
        self.step += 1


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


# ============================================================================ the four stages


def default_loss(model):
    """Sparse categorical cross-entropy, from logits unless the model ends in a softmax."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    softmax = isinstance(last, _L.Softmax) or (act is not None and tf.keras.activations.serialize(act) == "softmax")
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax)


def _fit_args(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return (data,), {}
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return (data[0], data[1]), {"batch_size": batch_size}
    raise WidthSearchError("data must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of arrays")


def _steps(data, batch_size, steps_per_epoch) -> int:
    if steps_per_epoch:
        return int(steps_per_epoch)
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        if n < 0:
            raise WidthSearchError("the dataset's length is unknown; pass steps_per_epoch so delta can be scheduled")
        return n
    return int(math.ceil(len(data[0]) / batch_size))


def _set_trainable(model, gates: bool, weights: bool):
    for layer in model.submodules:
        if isinstance(layer, ChannelGate):
            layer.trainable = gates
        elif isinstance(layer, tf.keras.layers.Layer) and not isinstance(layer, tf.keras.Model):
            layer.trainable = weights


def train_weights(gated_model: tf.keras.Model, data, epochs: int = 1, optimizer=None, loss=None,
                  batch_size: int = 64, validation_data=None, callbacks=None, steps_per_epoch=None,
                  verbose: int = 0) -> tf.keras.callbacks.History:
    """Stage 1: gates off, train the weights (Adam, lr 1e-3, unless ``optimizer`` is given).

    Args:
        gated_model: from :func:`insert_gates`.
        data: ``tf.data.Dataset`` of ``(x, y)`` batches or a tuple ``(x, y)``.
        epochs, batch_size, validation_data, callbacks, steps_per_epoch, verbose: as ``model.fit``.
        optimizer: a Keras optimizer.
        loss: default sparse categorical cross-entropy (from logits unless the model ends in softmax).

    Returns:
        The ``History`` of ``fit``.
    """
    set_gate_mode(gated_model, "off")
    _set_trainable(gated_model, gates=False, weights=True)
    gated_model.compile(optimizer=optimizer or tf.keras.optimizers.Adam(1e-3),
                        loss=loss or default_loss(gated_model), metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    return gated_model.fit(*args, **kwargs, epochs=epochs, validation_data=validation_data, callbacks=callbacks,
                           steps_per_epoch=steps_per_epoch, verbose=verbose)


class _GateTrainer(tf.keras.Model):
    """Trains only the gates of ``inner`` with ``CE + lambda_a * penalty(gates)``."""

    def __init__(self, inner, lambda_a, penalty):
        super().__init__(name=f"{inner.name}_gate_trainer")
        self.inner = inner
        self.lambda_a = float(lambda_a)
        self.penalty = penalty
        self.gate_list = gate_layers(inner)

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def _penalty(self):
        values = tf.concat([g.gates("soft") for g in self.gate_list], axis=0)
        return tf.reduce_sum(values) if self.penalty == "sum" else tf.reduce_mean(values)

    def train_step(self, data):
        x, y = data[0], data[1]
        variables = [g.s for g in self.gate_list]
        with tf.GradientTape() as tape:
            logits = self.inner(x, training=True)
            ce = self.compiled_loss(y, logits)
            pen = self._penalty()
            loss = ce + self.lambda_a * pen
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.compiled_metrics.update_state(y, logits)
        s = tf.concat([g.s for g in self.gate_list], axis=0)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update({"ce": ce, "gate_penalty": pen, "open_fraction": tf.reduce_mean(tf.cast(s > 0, tf.float32)),
                     "delta": self.gate_list[0].delta})
        return logs


def train_gates(gated_model: tf.keras.Model, data, epochs: int = 1, lambda_a: float = 5e-3, penalty: str = "sum",
                delta_start: float = 1.0, delta_end: float = 1e4, batch_norm: str = "batch", optimizer=None, loss=None,
                batch_size: int = 64, steps_per_epoch=None, callbacks=None,
                verbose: int = 0) -> tf.keras.callbacks.History:
    """Stage 2: weights and BatchNorm frozen, learn the gate parameters ``s`` while ``delta`` grows.

    Loss ``CE + lambda_a * sum_i sigmoid(delta * s_i)`` (``penalty="mean"``: divided by the number of
    gated channels). Default optimiser: SGD lr 0.1 (DNAL's constant rate). At the end every gate is
    set to ``"hard"`` so the gated model computes what :func:`prune` will build.

    Args:
        gated_model: from :func:`insert_gates`, after :func:`train_weights`.
        data: ``tf.data.Dataset`` of ``(x, y)`` or a tuple ``(x, y)``.
        epochs: length of the stage (delta goes from ``delta_start`` to ``delta_end`` over it).
        lambda_a: weight of the gate penalty (larger: fewer channels).
        penalty: ``"sum"`` (the paper's eq. 4) or ``"mean"``.
        delta_start, delta_end: the schedule's end points.
        batch_norm: ``"batch"`` (default): BatchNorm scale/offset stay fixed but normalise with batch
            statistics, as a PyTorch model in train mode with frozen parameters does, so a global
            gate scale (all gates start at 0.5) does not compound through the layers, and the moving
            statistics follow the gated network; ``"frozen"``: BatchNorm in inference mode.
        optimizer, loss, batch_size, steps_per_epoch, callbacks, verbose: as in :func:`train_weights`.

    Returns:
        The ``History`` (logs ``ce``, ``gate_penalty``, ``open_fraction``, ``delta``).
    """
    if penalty not in ("sum", "mean"):
        raise WidthSearchError(f"penalty must be 'sum' or 'mean', got '{penalty}'")
    if not gate_layers(gated_model):
        raise WidthSearchError(f"{gated_model.name} has no ChannelGate; call insert_gates first")
    total = epochs * _steps(data, batch_size, steps_per_epoch)
    if batch_norm not in ("batch", "frozen"):
        raise WidthSearchError(f"batch_norm must be 'batch' or 'frozen', got '{batch_norm}'")
    set_gate_mode(gated_model, "soft")
    for gate in gate_layers(gated_model):
        gate.s.assign(tf.zeros_like(gate.s))
    # Only the gates get gradients either way; "frozen" also puts BatchNorm in inference mode.
    _set_trainable(gated_model, gates=True, weights=batch_norm == "batch")
    trainer = _GateTrainer(gated_model, lambda_a, penalty)
    trainer.compile(optimizer=optimizer or tf.keras.optimizers.SGD(0.1), loss=loss or default_loss(gated_model),
                    metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    schedule = DeltaSchedule(delta_start, delta_end, total, gates=gate_layers(gated_model))
    history = trainer.fit(*args, **kwargs, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          callbacks=[schedule] + list(callbacks or []), verbose=verbose)
    set_gate_mode(gated_model, "hard")
    _set_trainable(gated_model, gates=False, weights=True)
    return history


def finetune(model: tf.keras.Model, data, epochs: int = 1, optimizer=None, loss=None, batch_size: int = 64,
             validation_data=None, callbacks=None, steps_per_epoch=None, verbose: int = 0):
    """Stage 4: ordinary training of the pruned model (Adam, lr 5e-4, unless ``optimizer`` is given)."""
    model.compile(optimizer=optimizer or tf.keras.optimizers.Adam(5e-4),
                  loss=loss or default_loss(model), metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    return model.fit(*args, **kwargs, epochs=epochs, validation_data=validation_data, callbacks=callbacks,
                     steps_per_epoch=steps_per_epoch, verbose=verbose)


@dataclasses.dataclass
class DNALResult:
    """What :func:`run_dnal` produced."""

    gated: tf.keras.Model
    pruned: tf.keras.Model
    widths: Dict[str, Tuple[int, int]]
    histories: Dict[str, tf.keras.callbacks.History]


def run_dnal(model: tf.keras.Model, data, weight_epochs: int = 1, gate_epochs: int = 1, finetune_epochs: int = 1,
             lambda_a: float = 5e-3, penalty: str = "sum", delta_start: float = 1.0, delta_end: float = 1e4,
             batch_size: int = 64, weight_optimizer=None, gate_optimizer=None, finetune_optimizer=None,
             validation_data=None, verbose: int = 0) -> DNALResult:
    """All four DNAL stages on ``model``: gate, train weights, train gates, prune, finetune."""
    gated = insert_gates(model)
    hist = {"weights": train_weights(gated, data, weight_epochs, optimizer=weight_optimizer, batch_size=batch_size,
                                     validation_data=validation_data, verbose=verbose) if weight_epochs else None}
    hist["gates"] = train_gates(gated, data, gate_epochs, lambda_a=lambda_a, penalty=penalty, delta_start=delta_start,
                                delta_end=delta_end, optimizer=gate_optimizer, batch_size=batch_size, verbose=verbose)
    pruned = prune(gated)
    hist["finetune"] = finetune(pruned, data, finetune_epochs, optimizer=finetune_optimizer, batch_size=batch_size,
                                validation_data=validation_data, verbose=verbose) if finetune_epochs else None
    return DNALResult(gated, pruned, prune_plan(gated), hist)


# ============================================================================ example models


def example_cnn(kind: str = "vgg", input_shape=(28, 28, 1), num_classes: int = 10, widths=(16, 32, 64),
                binary: bool = False) -> tf.keras.Model:
    """A small Conv-BN-ReLU network to try DNAL on.

    Args:
        kind: ``"vgg"`` (conv pairs + max-pool per stage) or ``"resnet"`` (a stride-2 conv per stage
            and a residual block whose two BN outputs are added).
        input_shape, num_classes: data shape and classes.
        widths: channels per stage.
        binary: Larq ``QuantConv2D`` (ste_sign input and kernel, weight clip, ``pad_values=1``)
            for every conv but the first, and no ReLU before them (sign follows).

    Returns:
        A Functional model that outputs logits.
    """
    if kind not in ("vgg", "resnet"):
        raise WidthSearchError(f"example_cnn kind must be 'vgg' or 'resnet', got '{kind}'")

    def conv(x, filters, name, strides=1, first=False):
        if binary and not first:
            return lq.layers.QuantConv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                         input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                         kernel_constraint="weight_clip", pad_values=1.0, name=name)(x)
        return _L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)

    def act(x, name):
        return x if binary else _L.ReLU(name=name)(x)

    inputs = tf.keras.Input(input_shape, name="image")
    x = inputs
    for i, c in enumerate(widths):
        if kind == "vgg":
            x = conv(x, c, f"conv{i}a", first=i == 0)
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}a")(x), f"relu{i}a")
            x = conv(x, c, f"conv{i}b")
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}b")(x), f"relu{i}b")
            x = _L.MaxPooling2D(name=f"pool{i}")(x)
        else:
            x = conv(x, c, f"conv{i}", strides=1 if i == 0 else 2, first=i == 0)
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}")(x), f"relu{i}")
            y = conv(x, c, f"conv{i}r1")
            y = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}r1")(y), f"relu{i}r1")
            y = conv(y, c, f"conv{i}r2")
            y = _L.BatchNormalization(momentum=0.9, name=f"bn{i}r2")(y)
            x = act(_L.Add(name=f"add{i}")([x, y]), f"relu{i}out")
    x = _L.GlobalAveragePooling2D(name="gap")(x)
    outputs = _L.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=f"{'binary_' if binary else ''}{kind}_example")
