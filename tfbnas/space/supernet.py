"""The differentiable 1-bit supernet: mixed edges, search cells and the :class:`SuperNet` model.

A :class:`SuperNet` is a DARTS-style network of cells (normal and reduction cells, reductions at 1/3
and 2/3 of the depth) whose every edge is a mixed edge: the ``softmax(alpha / T)``-weighted sum of
all candidate ops of a preset (see :mod:`tfbnas.space.ops`). By default the edges that leave one
node are computed together (:class:`~tfbnas.space.ops.FusedEdgeOps`, see ``docs/performance.md``);
``fused=False`` builds one :class:`MixedEdge` per edge, the plain reference with the same function.
The same variables run as the 1-bit Child (``binary=True``) or as the real-valued Parent
(``binary=False``)::

    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, preset="dcp")
    logits = model(images, training=True)                 # 1-bit Child
    parent_logits = model(images, training=True, binary=False)
    arch_grads = tape.gradient(loss, model.arch_variables)
    model.genotype()                                       # -> Genotype

The real-valued stem has stride 1 for small images and stride 4 for ImageNet-sized ones
(:func:`~tfbnas.space.table.stem_stride_for`), chosen at the first call unless ``stem_stride`` is given::

    SuperNet(1000, init_channels=8, num_cells=3)(tf.zeros([2, 224, 224, 3]))  # cells from 56x56
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfbnas.space.genotype import Genotype, derive_genotype, edge_index, num_edges
from tfbnas.space.ops import (BN_EPSILON, BN_MOMENTUM, BinaryConvOp, FactorizedReduceOp, FusedEdgeOps, SpaceError,
                              check_group_policy, fold_channels, make_search_op, preset_ops, quantize_input,
                              real_path, shortcut, stem_channels, stem_stride_for, sum_tensors)
from tfbnas.space.primitives import partial_bypass, partial_edge_output
from tfbnas.space.table import check_partial_channels

# The layers (attribute and layer names) of each stem, by stride.
STEM_LAYERS = {1: ("stem_conv", "stem_bn"), 4: ("stem_conv0", "stem_bn0", "stem_conv1", "stem_bn1")}


def reduction_cells(num_cells: int) -> List[int]:
    """Indices of the reduction cells: at 1/3 and 2/3 of the depth (DARTS)."""
    return sorted({num_cells // 3, 2 * num_cells // 3})


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class MixedEdge(tf.keras.layers.Layer):
    """One searched edge: ``sum_m mix[m] * op_m(x)``, with ``mix = softmax(alpha / T)`` given by the caller.

    The edge input is binarised once and shared by all binary ops of the edge; the zero op is
    skipped (it adds nothing). This is the plain form (``SuperNet(fused=False)``), one small layer
    per op: the reference that the fused form (:class:`~tfbnas.space.ops.FusedEdgeOps`) is tested
    against.

    Args:
        op_names: candidate op names (columns of the architecture parameters).
        channels: input and output channels.
        stride: 1, or 2 for reduction-cell edges from the cell inputs.
        binary: default mode (1-bit Child) when ``call`` gets ``binary=None``.
        group_policy: group-count rule of grouped convs (see :func:`tfbnas.space.ops.group_count`).

    Example:
        >>> edge = MixedEdge(preset_ops("dcp"), 16)
        >>> edge(tf.zeros([2, 8, 8, 16]), tf.fill([8], 1 / 8)).shape
        TensorShape([2, 8, 8, 16])
    """

    def __init__(self, op_names: Sequence[str], channels: int, stride: int = 1, binary: bool = True,
                 group_policy="lce", **kwargs):
        super().__init__(**kwargs)
        self.op_names = tuple(op_names)
        self.channels, self.stride, self.binary, self.group_policy = int(channels), int(stride), bool(binary), group_policy
        self.op_index: List[int] = []
        self.op_layers = []
        for i, name in enumerate(self.op_names):
            op = make_search_op(name, self.channels, self.stride, self.binary, group_policy, layer_name=name)
            if op is not None:
                self.op_index.append(i)
                self.op_layers.append(op)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, mix, training=None, binary=None):
        binary = self.binary if binary is None else bool(binary)
        quantized = None
        total = None
        for i, op in zip(self.op_index, self.op_layers):
            if op.uses_quantized_input:
                if quantized is None:
                    quantized = quantize_input(x, binary)
                y = op(x, training=training, binary=binary, quantized=quantized)
            else:
                y = op(x, training=training, binary=binary)
            term = mix[i] * y
            total = term if total is None else total + term
        return total

    def op(self, name: str):
        """The supernet-form layer of op ``name`` (``None`` for ``"none"``)."""
        index = self.op_names.index(name)
        return self.op_layers[self.op_index.index(index)] if index in self.op_index else None

    def kernel_norms(self, param_free_norm) -> tf.Tensor:
        """``[len(op_names)]``: ``||w_m||^2`` summed over each op's kernels (``param_free_norm(op)`` for the
        ops without kernels)."""
        values = []
        for name in self.op_names:
            op = self.op(name)
            kernels = [] if op is None else [v for v in op.trainable_weights if "kernel" in v.name]
            if kernels:
                values.append(tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels]))
            else:
                values.append(tf.constant(float(param_free_norm(op)), tf.float32))
        return tf.stack(values)

    def get_config(self):
        return {**super().get_config(), "op_names": list(self.op_names), "channels": self.channels,
                "stride": self.stride, "binary": self.binary, "group_policy": self.group_policy}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class SearchCell(tf.keras.layers.Layer):
    """A searched cell: two inputs, ``nodes`` intermediate nodes, output = their concatenation.

    Inputs are preprocessed to ``channels`` channels by binary 1x1 convs (a binary factorized
    reduce for ``s0`` when the previous cell reduced); in presets with a real path
    (:func:`~tfbnas.space.ops.real_path`) each adds the real-valued input folded onto ``channels``
    (:func:`~tfbnas.space.ops.fold_channels`, after the 3x3 max pool when it halves the resolution),
    batch-normalised, and a node is the mean of its edges (half their sum). Node ``i`` sums one mixed
    edge from every earlier state; in a reduction cell, edges from the two inputs have stride 2.

    With ``fused=True`` (the default) the edges that leave one state are computed together by a
    :class:`~tfbnas.space.ops.FusedEdgeOps` as soon as that state exists (same mathematics, a
    few wide ops instead of one small op per edge and candidate); ``fused=False`` builds one
    :class:`MixedEdge` per edge, the plain reference. Either way ``cell.edges[e].op(name)`` gives
    edge ``e``'s op (a layer, or a view of its slice of the fused weights).

    Args:
        channels: channels ``C`` of every node (output has ``nodes * C``).
        reduction: whether this is a reduction cell.
        reduction_prev: whether the previous cell reduced (``s0`` has twice the resolution).
        nodes: intermediate nodes.
        preset: op-table preset.
        binary: default mode.
        group_policy: group-count rule of grouped convs.
        fused: fused edges (fast) or one :class:`MixedEdge` per edge (plain reference).
        partial_channels: ``K`` of PC-DARTS's partial-channel connections: every edge sends only the first
            ``C / K`` channels of its input through its candidate ops (``K`` times less arithmetic and
            activation memory in the mixed ops); the other channels pass by (2x2 max pool at stride 2) and
            the two parts are shuffled (:func:`~tfbnas.space.primitives.partial_edge_output`). 1: every
            channel, plain DARTS.

    ``call(s0, s1, mix, training=None, binary=None)`` takes ``mix`` of shape ``[num_edges, num_ops]``;
    row ``edge_index(i, j)`` belongs to the edge ``j -> node i``.
    """

    def __init__(self, channels: int, reduction: bool = False, reduction_prev: bool = False, nodes: int = 4,
                 preset: str = "dcp", binary: bool = True, group_policy="lce", fused: bool = True,
                 partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.reduction, self.reduction_prev = int(channels), bool(reduction), bool(reduction_prev)
        self.nodes, self.preset, self.binary, self.group_policy = int(nodes), preset, bool(binary), group_policy
        self.fused, self.partial_channels = bool(fused), int(partial_channels)
        if self.partial_channels < 1 or self.channels % self.partial_channels:
            raise SpaceError(f"partial_channels={partial_channels} must be >= 1 and divide the cell's {channels} "
                             "channels.")
        self.op_channels = self.channels // self.partial_channels  # what the candidate ops of an edge see
        op_names = preset_ops(preset)
        self.real_path = real_path(preset)
        # bireal: a node is the mean of its edges (0.5 x their sum: a derived node keeps two), and the real
        # path around each preprocessing conv is batch-normalised, so the real-valued stream keeps its scale
        # (summed identity paths would double it at every node, and sign's STE passes gradient only in [-1, 1]).
        self.node_scale = 0.5 if self.real_path else 1.0
        if self.real_path:
            self.real_bn0, self.real_bn1 = (
                tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"real_bn{i}")
                for i in (0, 1))
        self.pre0 = (FactorizedReduceOp(self.channels, fast=self.fused, name="pre0") if self.reduction_prev
                     else BinaryConvOp(self.channels, 1, name="pre0"))
        self.pre1 = BinaryConvOp(self.channels, 1, name="pre1")
        if self.fused:
            # State j (inputs 0, 1, then node j - 2) feeds nodes max(0, j - 1) .. nodes - 1; the last node feeds none.
            self.targets = tuple(tuple(range(max(0, j - 1), self.nodes)) for j in range(self.nodes + 1))
            self.rows = tuple(tuple(edge_index(node, j) for node in targets) for j, targets in enumerate(self.targets))
            self.sources = [FusedEdgeOps(op_names, self.op_channels, len(targets), self._stride(j), self.binary,
                                         group_policy, name=f"from_{j}")
                            for j, targets in enumerate(self.targets)]
            views = {}
            for j, (layer, rows) in enumerate(zip(self.sources, self.rows)):
                for t, row in enumerate(rows):
                    views[row] = layer.edge(t)
            self._edge_views = tuple(views[e] for e in range(num_edges(self.nodes)))
        else:
            self.mixed_edges = []
            for node in range(self.nodes):
                for source in range(2 + node):
                    self.mixed_edges.append(MixedEdge(op_names, self.op_channels, self._stride(source), self.binary,
                                                      group_policy, name=f"edge_{source}_{node + 2}"))

    def _stride(self, source: int) -> int:
        return 2 if self.reduction and source < 2 else 1

    def _sampled(self, x):
        """The channels of state ``x`` that its edges' ops see."""
        return x if self.partial_channels == 1 else x[..., :self.op_channels]

    def _partial_output(self, y, x, source: int):
        """The plain form's edge output of all ``C`` channels from its ops' output ``y`` on the sampled
        channels of ``x``."""
        if self.partial_channels == 1:
            return y
        return partial_edge_output(y, partial_bypass(x, self.op_channels, self._stride(source)), self.partial_channels)

    @property
    def edges(self):
        """Per-edge access in architecture-row order: ``cell.edges[e].op(name)``."""
        return self._edge_views if self.fused else self.mixed_edges

    @tf.autograph.experimental.do_not_convert
    def call(self, s0, s1, mix, training=None, binary=None):
        binary = self.binary if binary is None else bool(binary)
        states = [self.pre0(s0, training=training, binary=binary), self.pre1(s1, training=training, binary=binary)]
        if self.real_path:
            r0 = fold_channels(shortcut(s0, 2 if self.reduction_prev else 1), self.channels)
            states[0] += self.real_bn0(r0, training=training)
            states[1] += self.real_bn1(fold_channels(s1, self.channels), training=training)
        if not self.fused:
            e = 0
            for node in range(self.nodes):
                total = None
                for source in range(2 + node):
                    y = self.mixed_edges[e](self._sampled(states[source]), mix[e], training=training, binary=binary)
                    y = self._partial_output(y, states[source], source)
                    total = y if total is None else total + y
                    e += 1
                states.append(self._node(total))
            return tf.concat(states[2:], axis=-1)
        # Per node: its edges' op outputs and (partial channels) the bypassed channels of their sources.
        # The shuffle of a concatenation is a permutation, so the node's sum is one concatenation and one
        # shuffle of the two sums instead of one per edge (the same values as the plain form's).
        incoming = [[] for _ in range(self.nodes)]
        bypassed = [[] for _ in range(self.nodes)]
        for j, layer in enumerate(self.sources):
            if j >= 2:  # node j - 2 is complete: all its sources come before it
                states.append(self._node_sum(incoming[j - 2], bypassed[j - 2]))
            y = layer(self._sampled(states[j]), tf.gather(mix, self.rows[j]), training=training, binary=binary)
            parts = tf.split(y, len(self.targets[j]), axis=-1) if len(self.targets[j]) > 1 else [y]
            bypass = (partial_bypass(states[j], self.op_channels, self._stride(j)) if self.partial_channels > 1
                      else None)
            for node, part in zip(self.targets[j], parts):
                incoming[node].append(part)
                bypassed[node].append(bypass)
        states.append(self._node_sum(incoming[-1], bypassed[-1]))
        return tf.concat(states[2:], axis=-1)

    def _node_sum(self, outputs, bypassed):
        """A node of the fused form from its edges' op outputs and their sources' bypassed channels."""
        total = sum_tensors(outputs)
        if self.partial_channels > 1:
            total = partial_edge_output(total, sum_tensors(bypassed), self.partial_channels)
        return self._node(total)

    def _node(self, total):
        return total * self.node_scale if self.node_scale != 1.0 else total

    def edge_weight_norms(self, param_free_norm) -> tf.Tensor:
        """``[num_edges, num_ops]``: ``||w_m||^2`` of every (edge, op) (DCP's ``R(w_m)``).

        Args:
            param_free_norm: ``f(op_layer_or_None) -> float`` for ops without kernels.
        """
        if not self.fused:
            return tf.stack([edge.kernel_norms(param_free_norm) for edge in self.mixed_edges])
        blocks = tf.concat([layer.edge_kernel_norms(param_free_norm) for layer in self.sources], axis=0)
        order = [row for rows in self.rows for row in rows]  # block row -> edge row
        return tf.gather(blocks, np.argsort(order))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev, "nodes": self.nodes, "preset": self.preset,
                "binary": self.binary, "group_policy": self.group_policy, "fused": self.fused,
                "partial_channels": self.partial_channels}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class SuperNet(tf.keras.Model):
    """DARTS-style supernet over a 1-bit op table; Child (binary) and Parent (real) share its variables.

    Args:
        num_classes: classifier outputs (logits).
        init_channels: channels ``C`` of the first cells (doubled at each reduction).
        num_cells: number of cells; reductions at ``num_cells // 3`` and ``2 * num_cells // 3``.
        nodes: intermediate nodes per cell.
        preset: op-table preset (``"dcp"`` or ``"bats"``).
        binary: default mode of ``call`` (True: 1-bit Child; False: real-valued Parent).
        stem_multiplier: the real-valued stem outputs ``stem_multiplier * C`` channels (DARTS: 3).
        group_policy: group-count rule of grouped convs (see :func:`tfbnas.space.ops.group_count`).
        temperature: initial softmax temperature ``T`` (BATS); held in the non-trainable
            ``model.temperature`` variable.
        fused: compute the edges leaving each node together (:class:`~tfbnas.space.ops.FusedEdgeOps`,
            the fast default) or one :class:`MixedEdge` per edge (the plain reference); the same function.
        partial_channels: PC-DARTS's ``K``: each edge's candidate ops see ``1/K`` of its input's channels
            (see :class:`SearchCell`); ``init_channels`` must divide by ``2K``. The derived Child has every
            channel.
        stem_stride: the real-valued stem: 1 (``stem_conv`` 3x3 + ``stem_bn``), 4 (``stem_conv0`` 3x3 stride 2
            with ``C // 2`` channels + ``stem_bn0`` + ReLU, ``stem_conv1`` 3x3 stride 2 + ``stem_bn1``: DARTS's
            ImageNet stem; widths from :func:`~tfbnas.space.table.stem_channels`) or None: chosen from the
            image size at the first call (:func:`~tfbnas.space.table.stem_stride_for`; the other stem's
            layers are dropped unbuilt).

    Attributes:
        alphas_normal, alphas_reduce: architecture parameters ``[num_edges, num_ops]``
            (init ``1e-3 * randn``).
        arch_variables: ``[alphas_normal, alphas_reduce]``.
        weight_variables: every other trainable variable (after the model is built).
        temperature: non-trainable scalar ``tf.Variable``.
        stem_stride: the stem's stride (None until the first call chooses it).

    Example:
        >>> model = SuperNet(10, init_channels=8, num_cells=3)
        >>> model(tf.zeros([2, 28, 28, 1])).shape
        TensorShape([2, 10])
        >>> model.genotype().preset
        'dcp'
    """

    def __init__(self, num_classes: int = 10, init_channels: int = 16, num_cells: int = 8, nodes: int = 4,
                 preset: str = "dcp", binary: bool = True, stem_multiplier: int = 3, group_policy="lce",
                 temperature: float = 1.0, fused: bool = True, stem_stride: Optional[int] = None,
                 partial_channels: int = 1, name: str = "supernet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.op_names = preset_ops(preset)
        check_group_policy(group_policy)
        for arg, value in (("num_classes", num_classes), ("init_channels", init_channels), ("num_cells", num_cells),
                           ("nodes", nodes), ("stem_multiplier", stem_multiplier)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SpaceError(f"{arg}={value!r} must be a positive integer.")
        if init_channels % 2:
            raise SpaceError(f"init_channels={init_channels} must be even (factorized reduce halves it).")
        self.partial_channels = check_partial_channels(init_channels, partial_channels)
        if not temperature > 0:
            raise SpaceError(f"temperature={temperature!r} must be > 0.")
        self.num_classes, self.init_channels, self.num_cells = int(num_classes), int(init_channels), int(num_cells)
        self.nodes, self.preset, self.binary = int(nodes), preset, bool(binary)
        self.stem_multiplier, self.group_policy = int(stem_multiplier), group_policy
        self.initial_temperature = float(temperature)
        self.fused = bool(fused)
        self.stem_stride = None if stem_stride is None else stem_stride_for(None, stem_stride)

        # Both stems exist until an automatic choice drops one; the stride-1 stem comes first, in its old place.
        conv = dict(kernel_size=3, padding="same", use_bias=False)
        bn = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
        if self.stem_stride in (None, 1):
            (c_stem,) = stem_channels(self.init_channels, self.stem_multiplier, 1)
            self.stem_conv = tf.keras.layers.Conv2D(c_stem, name="stem_conv", **conv)
            self.stem_bn = tf.keras.layers.BatchNormalization(name="stem_bn", **bn)
        if self.stem_stride in (None, 4):
            c0, c1 = stem_channels(self.init_channels, self.stem_multiplier, 4)
            self.stem_conv0 = tf.keras.layers.Conv2D(c0, strides=2, name="stem_conv0", **conv)
            self.stem_bn0 = tf.keras.layers.BatchNormalization(name="stem_bn0", **bn)
            self.stem_conv1 = tf.keras.layers.Conv2D(c1, strides=2, name="stem_conv1", **conv)
            self.stem_bn1 = tf.keras.layers.BatchNormalization(name="stem_bn1", **bn)
        reductions = reduction_cells(self.num_cells)
        channels, reduction_prev = self.init_channels, False
        self.cells = []
        for i in range(self.num_cells):
            reduction = i in reductions
            if reduction:
                channels *= 2
            self.cells.append(SearchCell(channels, reduction, reduction_prev, self.nodes, preset, self.binary,
                                         group_policy, self.fused, self.partial_channels, name=f"cell_{i}"))
            reduction_prev = reduction
        self.global_pool = tf.keras.layers.GlobalAveragePooling2D(name="global_pool")
        self.classifier = tf.keras.layers.Dense(self.num_classes, name="classifier")

        shape = (num_edges(self.nodes), len(self.op_names))
        # One initializer per variable: a reused unseeded initializer repeats its values.
        self.alphas_normal = self.add_weight(name="alphas_normal", shape=shape, trainable=True,
                                             initializer=tf.keras.initializers.RandomNormal(stddev=1e-3))
        self.alphas_reduce = self.add_weight(name="alphas_reduce", shape=shape, trainable=True,
                                             initializer=tf.keras.initializers.RandomNormal(stddev=1e-3))
        self.temperature = self.add_weight(name="temperature", shape=(), trainable=False,
                                           initializer=tf.keras.initializers.Constant(self.initial_temperature))

    # ------------------------------------------------------------------ forward

    def mixing_weights(self):
        """``(softmax(alphas_normal / T), softmax(alphas_reduce / T))`` as tensors."""
        t = tf.convert_to_tensor(self.temperature)
        return (tf.nn.softmax(self.alphas_normal / t, axis=-1), tf.nn.softmax(self.alphas_reduce / t, axis=-1))

    def call(self, inputs, training=None, binary=None):
        binary = self.binary if binary is None else bool(binary)
        mix_normal, mix_reduce = self.mixing_weights()
        s0 = s1 = self.stem(inputs, training=training)
        for cell in self.cells:
            mix = mix_reduce if cell.reduction else mix_normal
            s0, s1 = s1, cell(s0, s1, mix, training=training, binary=binary)
        return self.classifier(self.global_pool(s1))

    def stem(self, inputs, training=None):
        """The real-valued stem's output, both inputs of the first cell: ``[N, H/s, W/s, stem_multiplier * C]``
        for stride ``s``. The first call of a ``stem_stride=None`` supernet chooses its stem here."""
        if self.stem_stride is None:  # the first call's image size chooses; the other stem goes, never built
            self.stem_stride = stem_stride_for(inputs.shape)
            for stride, names in STEM_LAYERS.items():
                if stride != self.stem_stride:
                    for name in names:
                        delattr(self, name)
        if self.stem_stride == 1:
            return self.stem_bn(self.stem_conv(inputs), training=training)
        x = tf.nn.relu(self.stem_bn0(self.stem_conv0(inputs), training=training))
        return self.stem_bn1(self.stem_conv1(x), training=training)

    # ------------------------------------------------------------------ variables

    @property
    def arch_variables(self) -> List[tf.Variable]:
        """Architecture parameters: ``[alphas_normal, alphas_reduce]``."""
        return [self.alphas_normal, self.alphas_reduce]

    @property
    def weight_variables(self) -> List[tf.Variable]:
        """All trainable variables except the architecture parameters (build the model first)."""
        arch = {v.ref() for v in self.arch_variables}
        return [v for v in self.trainable_variables if v.ref() not in arch]

    def _inheritable_variables(self) -> List[tf.Variable]:
        skip = {v.ref() for v in self.arch_variables + [self.temperature]}
        return [v for v in self.variables if v.ref() not in skip]

    def copy_weights_from(self, other: "SuperNet"):
        """Copy every weight (and BatchNorm statistic) of ``other`` into this model; alphas and
        temperature are left alone. DCP-NAS: the 1-bit Child inherits the Parent's weights.

        Both models must have the same configuration apart from ``binary``, ``temperature`` and
        ``name``, and both must be built (called once).

        Raises:
            SpaceError: different configuration, or a model is not built.
        """
        ignore = ("binary", "temperature", "name")
        mine = {k: v for k, v in self.get_config().items() if k not in ignore}
        theirs = {k: v for k, v in other.get_config().items() if k not in ignore}
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise SpaceError(f"cannot copy weights between supernets whose {diff} differ; build both with the same "
                             "configuration.")
        if not (self.built and other.built) or not self.cells[0].built or not other.cells[0].built:
            raise SpaceError("copy_weights_from needs both supernets built; call each once on a batch first.")
        dst, src = self._inheritable_variables(), other._inheritable_variables()
        if len(dst) != len(src) or any(a.shape != b.shape for a, b in zip(dst, src)):
            raise SpaceError("the two supernets hold different variables; build both on inputs of the same shape.")
        for a, b in zip(dst, src):
            a.assign(b)

    # ------------------------------------------------------------------ architecture

    def arch_probabilities(self) -> Dict[str, np.ndarray]:
        """``{"normal": softmax(alphas_normal / T), "reduce": ...}`` as numpy arrays ``[num_edges, num_ops]``."""
        normal, reduce = self.mixing_weights()
        return {"normal": normal.numpy(), "reduce": reduce.numpy()}

    def genotype(self) -> Genotype:
        """The DARTS discretisation of the current architecture parameters."""
        return derive_genotype(self.alphas_normal.numpy(), self.alphas_reduce.numpy(), self.preset, self.nodes,
                               float(self.temperature.numpy()))

    def get_config(self):
        return {"num_classes": self.num_classes, "init_channels": self.init_channels, "num_cells": self.num_cells,
                "nodes": self.nodes, "preset": self.preset, "binary": self.binary,
                "stem_multiplier": self.stem_multiplier, "group_policy": self.group_policy,
                "temperature": self.initial_temperature, "fused": self.fused, "stem_stride": self.stem_stride,
                "partial_channels": self.partial_channels, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


__all__ = ["MixedEdge", "SearchCell", "SuperNet", "STEM_LAYERS", "reduction_cells"]
