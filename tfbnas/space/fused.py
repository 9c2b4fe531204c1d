"""The fused supernet form: every op of all the mixed edges that leave one node, each op computed for
all edges at once (one binarisation per node, grouped convs as one native ``tf.nn.conv2d``, mixing weights
folded into BatchNorm). Same function and gradients as the per-op layers of :mod:`tfbnas.space.search_ops`
(``tests/test_fast_path.py``); :class:`FusedOpView` exposes one edge's op as if it were such a layer.
See ``docs/performance.md``.
"""

from typing import List, Optional, Sequence, Tuple, Union

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.errors import SpaceError
from tfbnas.space.primitives import (_check_even_channels, _factorized_reduce, _pad_same, _pad_value, quantize_input,
                                     shortcut, ste_sign)
from tfbnas.space.search_ops import IdentityOp, PoolOp, SearchOp
from tfbnas.space.table import BN_EPSILON, BN_MOMENTUM, OPS, _check_op, group_count



# --------------------------------------------------------------------------- fused supernet form


def sum_tensors(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """The sum of a non-empty list of tensors (no ``add_n`` op for a single one)."""
    return tensors[0] if len(tensors) == 1 else tf.add_n(list(tensors))


def _static_bool(value) -> Optional[bool]:
    """``value`` as a Python bool when known while tracing, else ``None``."""
    if isinstance(value, (bool, int, np.bool_)):
        return bool(value)
    static = tf.get_static_value(value)
    return None if static is None else bool(static)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class ScaledBatchNorm(tf.keras.layers.BatchNormalization):
    """BatchNormalization whose output can be scaled per channel without another pass over the data.

    ``layer(x, training, scale=s)`` equals ``s * BatchNormalization()(x, training)``: after its
    statistics BatchNorm is an affine map per channel, so ``s`` is folded into gamma and beta of
    the fused kernel. The moving statistics are updated exactly as Keras updates them. A fused
    edge uses it to apply the mixing weights ``softmax(alpha / T)`` of its ops for free. Where the
    fused kernel does not apply (synchronised BatchNorm across replicas, a symbolic ``training``,
    inputs that are not 4-D) it runs ``BatchNormalization`` and multiplies.

    Example:
        >>> bn = ScaledBatchNorm()
        >>> bn(tf.ones([2, 4, 4, 3]), training=True, scale=tf.constant([1.0, 0.5, 0.0])).shape
        TensorShape([2, 4, 4, 3])
    """

    def call(self, inputs, training=None, scale=None):
        if scale is None:
            return super().call(inputs, training=training)
        training = _static_bool(self._get_training_value(training))
        foldable = (self.fused and not self.synchronized and self.virtual_batch_size is None and not self.renorm
                    and self.adjustment is None and self.center and self.scale and inputs.shape.rank == 4
                    and list(self.axis) == [3] and training is not None and not self._support_zero_size_input())
        if not foldable:
            return super().call(inputs, training=training) * scale
        gamma, beta = self.gamma * scale, self.beta * scale
        if not training:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
                is_training=False, data_format="NHWC")
            return outputs
        # As Keras: the kernel returns the updated moving statistics (exponential_avg_factor = 1 - momentum).
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
            is_training=True, data_format="NHWC", exponential_avg_factor=1.0 - self.momentum)
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return outputs


def _glorot_limit(shape) -> float:
    """Bound of Keras' ``glorot_uniform`` for a kernel of ``shape``."""
    receptive = int(np.prod(shape[:-2]))
    return float(np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1]))))


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class FusedEdgeOps(SearchOp):
    """Every candidate op of the mixed edges that leave one node, each op computed for all edges at once.

    The ``num_edges`` edges read the same input, so (with the mathematics of one
    :class:`~tfbnas.space.supernet.MixedEdge` per edge):

    * the input is binarised once;
    * each binary conv op runs as one conv over all edges (the edges' kernels side by side in the
      output channels), followed by one BatchNorm over the concatenated channels (BatchNorm is per
      channel, so this equals separate BatchNorms); a grouped conv keeps its groups (one
      ``tf.nn.conv2d`` with a grouped kernel), its binary 1x1 conv is block-diagonal over the edges
      (a grouped ``tf.nn.conv2d`` with one group per edge);
    * a separable conv op is one depthwise conv on the input tiled once per edge, then the grouped
      binary 1x1 conv;
    * pooling and identity are computed once (they have no weights); the binary factorized reduces
      (``skip_connect`` at stride 2) of all edges are one conv;
    * the mixing weights are folded into each op's last BatchNorm (:class:`ScaledBatchNorm`), and
      the ops are summed with one ``add_n``.

    Ops of different kernel sizes stay separate convs: zero-padding a 3x3 kernel into a 5x5 one
    would add 2.8x arithmetic to it, which costs more on CPU than the extra op.

    Weights are stored per op with the edges side by side (e.g. ``dil_conv_3x3_kernel`` has shape
    ``(3, 3, C, E * C)``, edge ``e`` in output channels ``[e * C, (e + 1) * C)``);
    :meth:`weight_slices` maps each (edge, op) to its slices in :func:`child_op` layer order, and
    :meth:`edge` gives per-edge views with the :class:`~tfbnas.space.supernet.MixedEdge` interface.

    Args:
        op_names: candidate op names (the columns of the architecture parameters).
        channels: input and output channels ``C``.
        num_edges: edges ``E`` leaving the node.
        stride: stride of every edge (2 on edges from the inputs of a reduction cell).
        binary: default mode (1-bit Child) when ``call`` gets ``binary=None``.
        group_policy: group-count rule of grouped convs (see :func:`group_count`).

    ``call(x, mix, training=None, binary=None)`` takes the mixing weights ``mix`` of shape
    ``[E, len(op_names)]`` and returns ``[N, H', W', E * C]``: edge ``e``'s mixed output in channels
    ``[e * C, (e + 1) * C)``.

    Example:
        >>> ops = FusedEdgeOps(PRESETS["dcp"], 8, num_edges=3)
        >>> ops(tf.zeros([2, 6, 6, 8]), tf.fill([3, 8], 1 / 8)).shape
        TensorShape([2, 6, 6, 24])
    """

    def __init__(self, op_names: Sequence[str], channels: int, num_edges: int, stride: int = 1, binary: bool = True,
                 group_policy: Union[str, int] = "lce", **kwargs):
        super().__init__(binary=binary, **kwargs)
        self.op_names = tuple(op_names)
        self.channels, self.num_edges, self.stride = int(channels), int(num_edges), int(stride)
        self.group_policy = group_policy
        if self.num_edges < 1:
            raise SpaceError(f"num_edges={num_edges} must be >= 1.")
        self.shared_ops, self.shared_columns = [], []
        self.weighted: List[Tuple[int, str]] = []  # (alpha column, op name) of the ops with weights
        self.groups = {}
        for col, name in enumerate(self.op_names):
            spec = _check_op(name)
            if spec.kind == "zero":
                continue
            if spec.kind == "skip" and self.stride == 1:
                self.shared_ops.append(IdentityOp(name=name))
                self.shared_columns.append(col)
            elif spec.kind in ("max_pool", "avg_pool"):
                self.shared_ops.append(PoolOp(spec.kind.split("_")[0], spec.kernel_size, self.stride, name=name))
                self.shared_columns.append(col)
            else:
                if spec.kind == "skip":
                    _check_even_channels(self.channels)
                self.weighted.append((col, name))
                self.groups[name] = group_count(self.channels, group_policy) if spec.grouped else 1
        # Ops with a real-valued shortcut: its mixing weights, summed, scale one shared shortcut per edge.
        self.shortcut_columns = [col for col, name in self.weighted if OPS[name].shortcut]
        # BatchNorms: "<op>_bn" after the kxk (or depthwise) conv of ops with a 1x1 conv, "<op>_out_bn"
        # last, carrying the mixing weights.
        self.norms = {}
        for _, name in self.weighted:
            if OPS[name].pointwise:
                self.norms[name] = ScaledBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")
            self.norms[name + "_out"] = ScaledBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                                        name=f"{name}_out_bn")

    # ------------------------------------------------------------------ variables

    def build(self, input_shape):
        c, e = int(input_shape[-1]), self.num_edges
        if c != self.channels:
            raise SpaceError(f"FusedEdgeOps for {self.channels} channels got an input with {c}; "
                             "build it with channels equal to its input's.")
        self.kernels, self.pw_kernels = {}, {}
        clip = lq.constraints.WeightClip(1.0)
        for _, name in self.weighted:
            spec = OPS[name]
            k = spec.kernel_size
            if spec.kind == "skip":  # factorized reduce: conv_a and conv_b, C -> C/2 each
                self.kernels[name] = [self._uniform(f"{name}_{p}_kernel", (1, 1, c, e * (c // 2)), (1, 1, c, c // 2),
                                                    clip) for p in ("a", "b")]
            elif spec.kind == "sep_conv":  # real-valued depthwise kernel
                self.kernels[name] = self._uniform(f"{name}_depthwise_kernel", (k, k, e * c, 1), (k, k, c, 1))
            else:
                plain = (k, k, c // self.groups[name], c)
                self.kernels[name] = self._uniform(f"{name}_kernel", plain[:3] + (e * c,), plain, clip)
            if spec.pointwise:
                self.pw_kernels[name] = self._uniform(f"{name}_pw_kernel", (1, 1, c, e * c), (1, 1, c, c), clip)
        super().build(input_shape)

    def _uniform(self, name, shape, plain_shape, constraint=None):
        # Every slice is initialised like the kernel of the plain op (glorot_uniform of its own shape).
        limit = _glorot_limit(plain_shape)
        return self.add_weight(name, shape=shape, initializer=tf.keras.initializers.RandomUniform(-limit, limit),
                               constraint=constraint, trainable=True)

    @property
    def binary_kernels(self) -> List[tf.Variable]:
        """Latent kernels of binary convs (only their sign is used in the Child)."""
        out = []
        for _, name in self.weighted:
            kernel = self.kernels[name]
            out += kernel if isinstance(kernel, list) else ([] if OPS[name].kind == "sep_conv" else [kernel])
            out += [self.pw_kernels[name]] if name in self.pw_kernels else []
        return out

    def weight_slices(self, edge: int, name: str) -> List[Tuple[tf.Variable, tuple]]:
        """``(variable, index)`` pairs of op ``name`` on edge ``edge``, in :func:`child_op` layer order.

        ``variable[index]`` is the op's weight as its Child layer holds it (see :meth:`SearchOp.op_weights`).

        Raises:
            SpaceError: unknown op or edge.
        """
        if name not in self.op_names:
            raise SpaceError(f"op {name!r} is not among this edge's ops {list(self.op_names)}.")
        if not 0 <= edge < self.num_edges:
            raise SpaceError(f"edge {edge} is out of range: this node has {self.num_edges} outgoing edges.")
        if name not in self.kernels:
            return []
        c = self.channels

        def bn(layer, start, width):
            index = (slice(start, start + width),)
            return [(v, index) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]

        out_slice = (Ellipsis, slice(edge * c, (edge + 1) * c))
        kind, out_bn = OPS[name].kind, self.norms[name + "_out"]
        if kind == "skip":  # [conv_a, bn_a, conv_b, bn_b]; edge e's outputs are [a (C/2), b (C/2)]
            half = c // 2
            index = (Ellipsis, slice(edge * half, (edge + 1) * half))
            a, b = self.kernels[name]
            return [(a, index)] + bn(out_bn, edge * c, half) + [(b, index)] + bn(out_bn, edge * c + half, half)
        if kind == "sep_conv":
            first = (slice(None), slice(None), slice(edge * c, (edge + 1) * c), slice(None))
        else:
            first = out_slice
        out = [(self.kernels[name], first)]
        if OPS[name].pointwise:
            out += bn(self.norms[name], edge * c, c) + [(self.pw_kernels[name], out_slice)]
        return out + bn(out_bn, edge * c, c)

    def op_layer(self, name: str) -> Optional[SearchOp]:
        """The layer of a weightless op (identity, pooling), ``None`` for the others."""
        if name in self.op_names and self.op_names.index(name) in self.shared_columns:
            return self.shared_ops[self.shared_columns.index(self.op_names.index(name))]
        return None

    def edge(self, edge: int) -> "FusedEdgeView":
        """Per-edge view (``view.op(name)``), like a :class:`~tfbnas.space.supernet.MixedEdge`."""
        return FusedEdgeView(self, edge)

    def edge_kernel_norms(self, param_free_norm) -> tf.Tensor:
        """``[E, len(op_names)]``: ``||w_m||^2`` summed over the kernels of each (edge, op).

        Args:
            param_free_norm: ``f(layer_or_None) -> float`` for ops without kernels (``None`` for zero).
        """
        e = self.num_edges
        columns = []
        for name in self.op_names:
            kernels = [v for v, _ in self.weight_slices(0, name) if "kernel" in v.name]
            if not kernels:
                columns.append(tf.fill([e], float(param_free_norm(self.op_layer(name)))))
                continue
            per_edge = []
            for v in kernels:
                axis = 2 if "depthwise" in v.name else 3  # where the edges sit side by side
                sums = tf.reduce_sum(tf.square(v), axis=[a for a in range(4) if a != axis])
                per_edge.append(tf.reduce_sum(tf.reshape(sums, [e, -1]), axis=1))
            columns.append(tf.add_n(per_edge))
        return tf.stack(columns, axis=1)

    # ------------------------------------------------------------------ forward

    @tf.autograph.experimental.do_not_convert
    def call(self, x, mix, training=None, binary=None):
        binary = self._mode(binary)
        mix = tf.convert_to_tensor(mix)
        quantized = tiled = None
        outputs = []
        if self.weighted:  # per op, edge e's mixing weight on each of its C channels: [ops, E * C]
            scales = tf.reshape(tf.tile(tf.expand_dims(tf.transpose(mix), 2), [1, 1, self.channels]),
                                [len(self.op_names), self.num_edges * self.channels])
        for col, name in self.weighted:
            spec = OPS[name]
            with tf.name_scope(name):
                scale = scales[col]
                if spec.kind == "sep_conv":
                    if tiled is None:  # one copy of the input per edge, shared by the separable ops
                        tiled = tf.tile(x, [1, 1, 1, self.num_edges]) if self.num_edges > 1 else x
                    outputs.append(self._separable(name, tiled, scale, training, binary))
                else:
                    if quantized is None:
                        quantized = quantize_input(x, binary)
                    op = self._reduce if spec.kind == "skip" else self._conv
                    outputs.append(op(name, quantized, scale, training, binary))
        if self.shared_ops:
            with tf.name_scope("shared"):
                outputs.append(self._shared(x, mix))
        if self.shortcut_columns:
            with tf.name_scope("shortcut"):
                outputs.append(self._shortcut(x, mix))
        return sum_tensors(outputs)

    def _shortcut(self, x, mix):
        # Edge e adds (sum of its shortcut ops' mixing weights) * shortcut(x).
        weights = tf.reduce_sum(tf.gather(mix, self.shortcut_columns, axis=1), axis=1)  # [E]
        y = shortcut(x, self.stride)
        if self.num_edges == 1:
            return weights[0] * y
        return tf.tile(y, [1, 1, 1, self.num_edges]) * tf.repeat(weights, self.channels)

    def _binary_kernel(self, variable, binary):
        kernel = tf.convert_to_tensor(variable)
        return ste_sign(kernel) if binary else kernel

    def _conv(self, name, xq, scale, training, binary):
        spec, c, e, s, g = OPS[name], self.channels, self.num_edges, self.stride, self.groups[name]
        k, d = spec.kernel_size, spec.dilation
        kernel = self._binary_kernel(self.kernels[name], binary)
        if g > 1 and e > 1:  # tf.nn.conv2d wants the output channels ordered (group, ...)
            kernel = tf.reshape(kernel, [k, k, c // g, e, g, c // g])
            kernel = tf.reshape(tf.transpose(kernel, [0, 1, 2, 4, 3, 5]), [k, k, c // g, e * c])
        x = _pad_same(xq, k, 1 if d > 1 else s, d, _pad_value(binary))
        y = tf.nn.conv2d(x, kernel, strides=[1, s, s, 1], padding="VALID", dilations=[1, d, d, 1])
        if g > 1 and e > 1:  # back to (edge, channel)
            y = tf.reshape(y, tf.concat([tf.shape(y)[:3], [g, e, c // g]], 0))
            y = tf.reshape(tf.transpose(y, [0, 1, 2, 4, 3, 5]), tf.concat([tf.shape(y)[:3], [e * c]], 0))
        if spec.pointwise:
            y = self._pointwise(name, self.norms[name](y, training=training), binary)
        return self.norms[name + "_out"](y, training=training, scale=scale)

    def _pointwise(self, name, y, binary):
        # Block-diagonal binary 1x1 over the edges: a grouped tf.nn.conv2d, one group per edge.
        kernel = self._binary_kernel(self.pw_kernels[name], binary)
        return tf.nn.conv2d(quantize_input(y, binary), kernel, strides=1, padding="VALID")

    def _separable(self, name, tiled, scale, training, binary):
        s = self.stride
        y = tf.nn.depthwise_conv2d(tiled, self.kernels[name], [1, s, s, 1], "SAME")
        y = self._pointwise(name, self.norms[name](y, training=training), binary)
        return self.norms[name + "_out"](y, training=training, scale=scale)

    def _reduce(self, name, xq, scale, training, binary):
        # The factorized reduces of all edges as one conv; edge e's output is [conv_a, conv_b] as in the plain op.
        a, b = (self._binary_kernel(k, binary) for k in self.kernels[name])
        y = _factorized_reduce(xq, a, b, self.num_edges, _pad_value(binary))
        return self.norms[name + "_out"](y, training=training, scale=scale)

    def _shared(self, x, mix):
        # Weightless ops are the same for every edge: computed once, mixed by one 1x1 conv whose
        # kernel is mix (x) identity.
        c, e = self.channels, self.num_edges
        outs = [op(x) for op in self.shared_ops]
        weights = tf.gather(mix, self.shared_columns, axis=1)  # [E, S]
        if e == 1:
            return tf.add_n([weights[0, i] * y for i, y in enumerate(outs)])
        kernel = tf.reshape(tf.einsum("es,cd->sced", weights, tf.eye(c)), [1, 1, len(outs) * c, e * c])
        z = tf.concat(outs, -1) if len(outs) > 1 else outs[0]
        return tf.nn.conv2d(z, kernel, strides=1, padding="VALID")

    def get_config(self):
        return {**super().get_config(), "op_names": list(self.op_names), "channels": self.channels,
                "num_edges": self.num_edges, "stride": self.stride, "group_policy": self.group_policy}


class FusedEdgeView:
    """One edge of a :class:`FusedEdgeOps`: ``op(name)`` like :meth:`MixedEdge.op`.

    Weightless ops are the shared layers themselves; weighted ops are :class:`FusedOpView` objects
    whose ``op_weights()`` are the edge's slices (so :func:`transfer_weights` works unchanged).
    """

    def __init__(self, fused: FusedEdgeOps, edge: int):
        self.fused, self.index = fused, int(edge)

    @property
    def op_names(self) -> Tuple[str, ...]:
        return self.fused.op_names

    def op(self, name: str):
        """The op ``name`` of this edge: a layer, a :class:`FusedOpView`, or ``None`` for ``"none"``."""
        _check_op(name)
        if name not in self.fused.op_names:
            raise SpaceError(f"op {name!r} is not among this edge's ops {list(self.fused.op_names)}.")
        if OPS[name].kind == "zero":
            return None
        layer = self.fused.op_layer(name)
        return layer if layer is not None else FusedOpView(self.fused, self.index, name)


class FusedOpView:
    """The weights of one (edge, op) inside a :class:`FusedEdgeOps`, in Child-layer order."""

    def __init__(self, fused: FusedEdgeOps, edge: int, name: str):
        self.fused, self.edge, self.name = fused, int(edge), name

    def weight_slices(self) -> List[Tuple[tf.Variable, tuple]]:
        return self.fused.weight_slices(self.edge, self.name)

    def op_weights(self) -> List[tf.Tensor]:
        """Current values (tensors) in the order of the Child layers' ``get_weights()``."""
        return [v[index] for v, index in self.weight_slices()]

    def assign_op_weights(self, values: Sequence):
        """Write ``values`` (Child-layer order, as :meth:`op_weights` returns them) into the fused variables."""
        slices = self.weight_slices()
        if len(values) != len(slices):
            raise SpaceError(f"op {self.name!r} has {len(slices)} weights, got {len(values)} values.")
        for (v, index), value in zip(slices, values):
            v[index].assign(tf.cast(value, v.dtype))

    @property
    def trainable_weights(self) -> List[tf.Tensor]:
        return [v[index] for v, index in self.weight_slices() if v.trainable]
