"""The supernet form of the op table: one small Keras layer per candidate op, computing with ``tf.nn``
directly, that runs as the 1-bit Child (``binary=True``) or the real-valued Parent (``binary=False``) on
the same variables. :class:`tfbnas.space.fused.FusedEdgeOps` is the fast form these are tested against.

    >>> op = make_search_op("bireal_conv_3x3", channels=16)
    >>> op(tf.zeros([2, 8, 8, 16]), training=True, binary=True).shape
    TensorShape([2, 8, 8, 16])
"""

from typing import List, Optional, Union

import larq as lq
import tensorflow as tf

from tfbnas.errors import SpaceError
from tfbnas.space.primitives import (_check_even_channels, _factorized_reduce, _pad_same, _pad_value, _shift_pixel,
                                     quantize_input, shortcut, ste_sign)
from tfbnas.space.table import BN_EPSILON, BN_MOMENTUM, _check_op, group_count



# --------------------------------------------------------------------------- supernet form


class SearchOp(tf.keras.layers.Layer):
    """Base of the supernet-form ops.

    Args:
        binary: default mode when ``call`` gets ``binary=None``.

    Subclasses implement ``call(x, training=None, binary=None, quantized=None)``; ``quantized``
    is the edge input already passed through :func:`quantize_input` (shared by all binary ops of
    an edge) and is ignored by ops that do not binarise their input.
    """

    uses_quantized_input = False

    def __init__(self, binary: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.binary = bool(binary)

    def _mode(self, binary):
        return self.binary if binary is None else bool(binary)

    def op_weights(self) -> List[tf.Variable]:
        """Variables in the order of the Child layers' ``get_weights()`` (see :func:`transfer_weights`)."""
        return []

    def get_config(self):
        return {**super().get_config(), "binary": self.binary}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class SearchConvBN(SearchOp):
    """Binary (or, in Parent mode, real) conv + BatchNorm on an already quantized input.

    The kernel has shape ``(k, k, Cin / groups, filters)`` and is run by one ``tf.nn.conv2d``.
    The input is padded explicitly ("same", with +1 in Child mode, 0 in Parent mode). A strided
    dilated conv pads as at stride 1 and then keeps every ``strides``-th output, which is what its
    Child form computes (:func:`~tfbnas.space.child_ops.child_conv_bn`: :class:`Subsample2D`, then a
    stride-1 ``QuantConv2D`` of ``dilation / strides``).

    Args:
        filters: output channels.
        kernel_size: spatial kernel size.
        strides: spatial stride.
        dilation_rate: dilation.
        groups: group count (``Cin`` and ``filters`` must divide by it).

    Example:
        >>> conv = SearchConvBN(16, 3)
        >>> conv(quantize_input(tf.ones([1, 8, 8, 16]), True)).shape
        TensorShape([1, 8, 8, 16])
    """

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1, dilation_rate: int = 1,
                 groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        self.groups = int(groups)
        if self.filters % self.groups:
            raise SpaceError(f"filters={self.filters} is not divisible by groups={self.groups}.")
        self.bn = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise SpaceError(f"{channels} input channels are not divisible by groups={self.groups}.")
        k = self.kernel_size
        self.kernel = self.add_weight(
            "kernel", shape=(k, k, channels // self.groups, self.filters), initializer="glorot_uniform",
            constraint=lq.constraints.WeightClip(1.0), trainable=True,
        )
        super().build(input_shape)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        binary = self._mode(binary)
        if quantized is not None:
            x = quantized
        k, s, d = self.kernel_size, self.strides, self.dilation_rate
        kernel = tf.convert_to_tensor(self.kernel)
        if binary:
            kernel = ste_sign(kernel)
        x = _pad_same(x, k, 1 if d > 1 else s, d, _pad_value(binary))
        y = tf.nn.conv2d(x, kernel, strides=[1, s, s, 1], padding="VALID", dilations=[1, d, d, 1])
        return self.bn(y, training=training)

    def op_weights(self):
        bn = self.bn
        return [self.kernel, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "dilation_rate": self.dilation_rate, "groups": self.groups}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class BinaryConvOp(SearchOp):
    """Binary kxk conv (dense, dilated or grouped) + BN, optionally followed by binary 1x1 + BN.

    Used for ``dil_conv_*``, ``group_conv_*``, ``dil_group_conv_*``, ``bireal_*`` and the cells' 1x1
    preprocessing.

    Args:
        filters: output channels.
        kernel_size, strides, dilation_rate, groups: of the kxk conv.
        pointwise: add a binary 1x1 conv after the kxk conv.
        shortcut: add the real-valued input around the op (:func:`shortcut`; needs ``filters``
            equal to the input channels).

    Example:
        >>> op = BinaryConvOp(32, 3, dilation_rate=2)
        >>> op(tf.zeros([2, 8, 8, 32]), binary=False).shape
        TensorShape([2, 8, 8, 32])
    """

    uses_quantized_input = True

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1, dilation_rate: int = 1,
                 groups: int = 1, pointwise: bool = False, shortcut: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.dilation_rate, self.groups, self.pointwise = int(dilation_rate), int(groups), bool(pointwise)
        self.shortcut = bool(shortcut)
        self.conv = SearchConvBN(filters, kernel_size, strides, dilation_rate, groups, name="conv")
        self.pw = SearchConvBN(filters, 1, name="pw") if self.pointwise else None

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        binary = self._mode(binary)
        xq = quantized if quantized is not None else quantize_input(x, binary)
        y = self.conv(xq, training=training, binary=binary)
        if self.pw is not None:
            y = self.pw(quantize_input(y, binary), training=training, binary=binary)
        return y + shortcut(x, self.strides) if self.shortcut else y

    def op_weights(self):
        return self.conv.op_weights() + (self.pw.op_weights() if self.pw is not None else [])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "dilation_rate": self.dilation_rate, "groups": self.groups,
                "pointwise": self.pointwise, "shortcut": self.shortcut}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class SepConvOp(SearchOp):
    """Real-valued depthwise kxk conv + BN, then binary 1x1 conv + BN.

    LCE never binarises depthwise convs, so the depthwise part stays real-valued in both modes
    (it deploys as a float ``DEPTHWISE_CONV_2D``); only the 1x1 conv is binary.

    Args:
        filters: output channels of the 1x1 conv.
        kernel_size: depthwise kernel size.
        strides: depthwise stride.

    Example:
        >>> SepConvOp(16, 3, strides=2)(tf.zeros([1, 8, 8, 16])).shape
        TensorShape([1, 4, 4, 16])
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.dw_bn = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="dw_bn")
        self.pw = SearchConvBN(filters, 1, name="pw")

    def build(self, input_shape):
        k = self.kernel_size
        self.depthwise_kernel = self.add_weight(
            "depthwise_kernel", shape=(k, k, int(input_shape[-1]), 1), initializer="glorot_uniform", trainable=True)
        super().build(input_shape)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        binary = self._mode(binary)
        s = self.strides
        y = tf.nn.depthwise_conv2d(x, self.depthwise_kernel, [1, s, s, 1], "SAME")
        y = self.dw_bn(y, training=training)
        return self.pw(quantize_input(y, binary), training=training, binary=binary)

    def op_weights(self):
        bn = self.dw_bn
        return [self.depthwise_kernel, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance] + self.pw.op_weights()

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class PoolOp(SearchOp):
    """3x3 max or average pooling ("same"; the average excludes the padding), on real inputs.

    Args:
        pool: ``"max"`` or ``"avg"``.
        pool_size: window size.
        strides: stride.
    """

    def __init__(self, pool: str = "max", pool_size: int = 3, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        if pool not in ("max", "avg"):
            raise SpaceError(f"pool={pool!r} is unknown; use 'max' or 'avg'.")
        self.pool, self.pool_size, self.strides = pool, int(pool_size), int(strides)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        fn = tf.nn.max_pool2d if self.pool == "max" else tf.nn.avg_pool2d
        return fn(x, self.pool_size, self.strides, "SAME")

    def get_config(self):
        return {**super().get_config(), "pool": self.pool, "pool_size": self.pool_size, "strides": self.strides}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class IdentityOp(SearchOp):
    """``skip_connect`` at stride 1."""

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        return tf.identity(x)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class FactorizedReduceOp(SearchOp):
    """``skip_connect`` at stride 2: two binary 1x1 stride-2 convs, one on the input shifted by a
    pixel, each with BN, concatenated (DARTS's factorized reduce, binarised).

    Args:
        filters: output channels (even).
        fast: compute both convs as one 2x2 stride-2 conv (no strided slices, whose gradients are
            slow on CPU; 4x the multiply-adds of this small op); the same function.

    Example:
        >>> FactorizedReduceOp(16)(tf.zeros([1, 7, 7, 8])).shape
        TensorShape([1, 4, 4, 16])
    """

    uses_quantized_input = True

    def __init__(self, filters: int, fast: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.fast = int(filters), bool(fast)
        _check_even_channels(self.filters)
        self.conv_a = SearchConvBN(self.filters // 2, 1, strides=2, name="conv_a")
        self.conv_b = SearchConvBN(self.filters // 2, 1, strides=2, name="conv_b")

    def build(self, input_shape):
        for conv in (self.conv_a, self.conv_b):
            conv.build(input_shape)
            conv.bn.build(tuple(input_shape[:-1]) + (self.filters // 2,))
        super().build(input_shape)

    @tf.autograph.experimental.do_not_convert
    def call(self, x, training=None, binary=None, quantized=None):
        binary = self._mode(binary)
        xq = quantized if quantized is not None else quantize_input(x, binary)
        if not self.fast:
            a = self.conv_a(xq, training=training, binary=binary)
            b = self.conv_b(_shift_pixel(xq, _pad_value(binary)), training=training, binary=binary)
            return tf.concat([a, b], axis=-1)
        kernels = [tf.convert_to_tensor(conv.kernel) for conv in (self.conv_a, self.conv_b)]
        if binary:
            kernels = [ste_sign(k) for k in kernels]
        y = _factorized_reduce(xq, kernels[0], kernels[1], 1, _pad_value(binary))
        a, b = tf.split(y, 2, axis=-1)
        return tf.concat([self.conv_a.bn(a, training=training), self.conv_b.bn(b, training=training)], axis=-1)

    def op_weights(self):
        return self.conv_a.op_weights() + self.conv_b.op_weights()

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "fast": self.fast}


def make_search_op(name: str, channels: int, stride: int = 1, binary: bool = True,
                   group_policy: Union[str, int] = "lce", layer_name: Optional[str] = None) -> Optional[SearchOp]:
    """Supernet form of op ``name`` mapping ``channels`` to ``channels`` channels.

    Args:
        name: op name from :data:`OPS`.
        channels: input and output channels.
        stride: 1, or 2 on reduction-cell edges from the cell inputs.
        binary: default mode of the layer.
        group_policy: see :func:`group_count`.
        layer_name: Keras layer name.

    Returns:
        A :class:`SearchOp`, or ``None`` for ``"none"`` (zero contributes nothing to a sum).
    """
    spec = _check_op(name)
    kw = dict(binary=binary, name=layer_name or name)
    if spec.kind == "zero":
        return None
    if spec.kind == "skip":
        return IdentityOp(**kw) if stride == 1 else FactorizedReduceOp(channels, **kw)
    if spec.kind in ("max_pool", "avg_pool"):
        return PoolOp(spec.kind.split("_")[0], spec.kernel_size, stride, **kw)
    if spec.kind == "sep_conv":
        return SepConvOp(channels, spec.kernel_size, stride, **kw)
    groups = group_count(channels, group_policy) if spec.grouped else 1
    return BinaryConvOp(channels, spec.kernel_size, stride, spec.dilation, groups, spec.pointwise, spec.shortcut,
                        **kw)
