"""The Child form of the op table: Functional-API layers built from ``lq.layers.QuantConv2D`` (as
:class:`NativeQuantConv2D`, one native conv op), BatchNorm, depthwise convs and pooling, which the LCE
converter turns into ``LceBconv2d`` (BatchNorm folded in); :func:`transfer_weights` copies a supernet op's
variables into them.

    >>> x = tf.keras.Input((8, 8, 16))
    >>> y, layers = child_op("bireal_conv_3x3", x, 16, prefix="edge")
    >>> tf.keras.Model(x, y).output_shape
    (None, 8, 8, 16)
"""

from typing import List, Optional, Sequence, Union

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.cost import OpCount, register_layer_cost
from tfbnas.errors import SpaceError
from tfbnas.quantizers import HardTanh, is_sign_quantizer
from tfbnas.space.primitives import _check_even_channels, _pad_value, _shift_pixel, fold_channels
from tfbnas.space.search_ops import SearchOp
from tfbnas.space.table import BN_EPSILON, BN_MOMENTUM, _check_op, group_count



# --------------------------------------------------------------------------- Child form


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class Subsample2D(tf.keras.layers.Layer):
    """Keep every ``stride``-th row and column: ``x[:, ::s, ::s, :]``.

    Turns a stride-1 dilated conv before it (Keras convs cannot be strided and dilated), or a 1x1 conv after
    it (the factorized reduce), into a strided one.

    Args:
        stride: subsampling factor.

    Example:
        >>> Subsample2D(2)(tf.zeros([1, 7, 7, 3])).shape
        TensorShape([1, 4, 4, 3])
    """

    def __init__(self, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, inputs):
        return inputs[:, :: self.stride, :: self.stride, :]

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class ShiftPixel(tf.keras.layers.Layer):
    """Shift the image one pixel up-left, zero-filling the last row and column (same shape).

    The second path of the factorized reduce: a :class:`Subsample2D` after it keeps the odd pixels.
    Zero becomes +1 after the sign quantizer, matching the supernet form.
    """

    def call(self, inputs):
        return _shift_pixel(inputs, 0.0)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class FoldChannels(tf.keras.layers.Layer):
    """Child form of :func:`fold_channels`: the mean of the input's ``channels``-wide channel slices.

    Args:
        channels: output channels.

    Example:
        >>> FoldChannels(8)(tf.zeros([1, 7, 7, 24])).shape
        TensorShape([1, 7, 7, 8])
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, inputs):
        return fold_channels(inputs, self.channels)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.channels])

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@register_layer_cost(FoldChannels)
def _fold_channels_cost(layer, input_shapes, output_shapes):
    # k slices: k - 1 adds and one multiply per output element (nothing when the counts are equal).
    slices = -(-int(input_shapes[0][-1]) // layer.channels)
    return OpCount(minor_ops=slices * int(np.prod(output_shapes[0][1:])) if slices > 1 else 0)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class NativeQuantConv2D(lq.layers.QuantConv2D):
    """Larq's ``QuantConv2D`` computing its convolution as one native ``tf.nn.conv2d`` op.

    Same arguments, weights and values as ``lq.layers.QuantConv2D``; only the graph differs, in two
    ways that matter for deployment and speed:

    * **Dilation**: Keras lowers a dilated conv to ``SpaceToBatchND -> Conv2D -> BatchToSpaceND`` on
      CPU. When two dilated convs of the same shape read one tensor (two edges of a cell with the same
      op and input), graph optimisation merges their ``SpaceToBatchND`` ops, the TFLite converter can
      no longer fold the pattern back into a dilated conv, and LCE emits a *float* ``CONV_2D`` with
      32-bit kernels. A native ``Conv2D`` with a ``dilations`` attribute always becomes ``LceBconv2d``.
    * **Groups**: Keras routes ``groups > 1`` through an XLA-compiled op (~65x slower than a dense
      conv on CPU); the native grouped ``Conv2D`` runs at dense speed and converts alike.

    Example:
        >>> conv = NativeQuantConv2D(32, 3, dilation_rate=2, padding="same", pad_values=1.0,
        ...                          input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        ...                          kernel_constraint="weight_clip", use_bias=False)
    """

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        padding = self.padding.upper() if isinstance(self.padding, str) else self.padding
        return tf.nn.conv2d(inputs, kernel, strides=[1, *self.strides, 1], padding=padding,
                            dilations=[1, *self.dilation_rate, 1], data_format="NHWC")

    def _jit_compiled_convolution_op(self, inputs, kernel):
        return self.convolution_op(inputs, kernel)


def quant_conv(filters: int, kernel_size: int = 1, strides: int = 1, dilation_rate: int = 1, groups: int = 1,
               binary: bool = True, name: Optional[str] = None) -> lq.layers.QuantConv2D:
    """The Child's conv layer: binary :class:`NativeQuantConv2D` (or its real-valued Parent twin).

    Binary: ``ste_sign`` input and kernel quantizers, ``weight_clip``, "same" padding with +1.
    Parent twin (``binary=False``): :class:`HardTanh` input, real kernel, zero padding; same weight
    shapes, so weights copy between the two.
    """
    return NativeQuantConv2D(
        filters, kernel_size, strides=strides, dilation_rate=dilation_rate, groups=groups, padding="same",
        pad_values=_pad_value(binary), input_quantizer="ste_sign" if binary else HardTanh(),
        kernel_quantizer="ste_sign" if binary else None, kernel_constraint="weight_clip", use_bias=False, name=name,
    )


def batch_norm(name: Optional[str] = None) -> tf.keras.layers.BatchNormalization:
    """BatchNorm with the search space's settings."""
    return tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def child_conv_bn(x, filters: int, kernel_size: int = 1, strides: int = 1, dilation_rate: int = 1, groups: int = 1,
                  binary: bool = True, prefix: str = "conv"):
    """Child form of :class:`SearchConvBN`: ``QuantConv2D`` + BN. Returns ``(output, weighted_layers)``.

    Keras convs cannot be strided and dilated. Such a conv reads only every ``strides``-th pixel when its
    dilation and its "same" padding (``dilation * (k - 1) / 2`` at stride 1) are multiples of the stride (the
    table's ops: dilation 2, odd k, stride 2), so the Child keeps those pixels first (:class:`Subsample2D`)
    and convolves them at stride 1 with ``dilation / strides``: the strided dilated conv exactly, BatchNorm
    over its outputs as in the supernet, for ``1 / strides**2`` of the stride-1 conv's arithmetic. Other
    strided dilated convs run at stride 1 and keep every ``strides``-th output after BatchNorm.
    """
    conv_stride, conv_dilation, before, after = strides, dilation_rate, False, False
    if dilation_rate > 1 and strides > 1:
        conv_stride = 1
        if dilation_rate % strides == 0 and (dilation_rate * (kernel_size - 1) // 2) % strides == 0:
            conv_dilation, before = dilation_rate // strides, True
        else:
            after = True
    if before:
        x = Subsample2D(strides, name=f"{prefix}_subsample")(x)
    conv = quant_conv(filters, kernel_size, conv_stride, conv_dilation, groups, binary, name=f"{prefix}_qconv")
    bn = batch_norm(name=f"{prefix}_bn")
    y = bn(conv(x))
    if after:
        y = Subsample2D(strides, name=f"{prefix}_subsample")(y)
    return y, [conv, bn]


def child_op(name: str, x, channels: int, stride: int = 1, binary: bool = True,
             group_policy: Union[str, int] = "lce", prefix: Optional[str] = None):
    """Child form of op ``name`` applied to Keras tensor ``x``.

    Args:
        name: op name (not ``"none"``).
        x: Functional-API input tensor with ``channels`` channels.
        channels: output channels.
        stride: 1 or 2.
        binary: 1-bit Child (True) or real-valued Parent twin (False).
        group_policy: see :func:`group_count`.
        prefix: layer-name prefix (unique within the model).

    Returns:
        ``(output, layers)``: the output tensor and the weighted layers in :meth:`SearchOp.op_weights` order.
    """
    spec = _check_op(name)
    prefix = prefix or name
    if spec.kind == "zero":
        raise SpaceError("op 'none' (zero) has no Child form: a derived cell never keeps a zero edge.")
    if spec.kind == "skip":
        if stride == 1:
            return x, []
        _check_even_channels(channels)
        # Each half: keep every 2nd pixel, then a stride-1 1x1 conv. That is a stride-2 1x1 "same" conv exactly
        # (it pads nothing, even or odd sizes), but TensorFlow 2.18's oneDNN kernels crash training the strided
        # conv on 56x56 and larger maps. Same layers and weights, plus the two Subsample2D.
        halves, layers = [], []
        for half, y in (("a", x), ("b", ShiftPixel(name=f"{prefix}_shift")(x))):
            y = Subsample2D(2, name=f"{prefix}_{half}_subsample")(y)
            y, lh = child_conv_bn(y, channels // 2, 1, binary=binary, prefix=f"{prefix}_{half}")
            halves.append(y)
            layers += lh
        return tf.keras.layers.Concatenate(name=f"{prefix}_concat")(halves), layers
    if spec.kind in ("max_pool", "avg_pool"):
        pool = tf.keras.layers.MaxPool2D if spec.kind == "max_pool" else tf.keras.layers.AveragePooling2D
        return pool(spec.kernel_size, strides=stride, padding="same", name=f"{prefix}_pool")(x), []
    if spec.kind == "sep_conv":
        dw = tf.keras.layers.DepthwiseConv2D(spec.kernel_size, strides=stride, padding="same", use_bias=False,
                                             name=f"{prefix}_dwconv")
        bn = batch_norm(name=f"{prefix}_dw_bn")
        y = bn(dw(x))
        y, lp = child_conv_bn(y, channels, 1, binary=binary, prefix=f"{prefix}_pw")
        return y, [dw, bn] + lp
    groups = group_count(channels, group_policy) if spec.grouped else 1
    y, layers = child_conv_bn(x, channels, spec.kernel_size, stride, spec.dilation, groups, binary, prefix)
    if spec.pointwise:
        y, lp = child_conv_bn(y, channels, 1, binary=binary, prefix=f"{prefix}_pw")
        layers = layers + lp
    if spec.shortcut:
        y = tf.keras.layers.Add(name=f"{prefix}_shortcut_add")([child_shortcut(x, stride, prefix), y])
    return y, layers


def child_shortcut(x, stride: int, prefix: str):
    """Child form of :func:`shortcut`: ``x``, or a 3x3 "same" ``MaxPool2D`` at stride 2."""
    if stride == 1:
        return x
    return tf.keras.layers.MaxPool2D(3, strides=stride, padding="same", name=f"{prefix}_shortcut_pool")(x)


def transfer_weights(search_op: Optional[SearchOp], child_layers: Sequence[tf.keras.layers.Layer]):
    """Copy a (built) supernet op's variables into the layers its :func:`child_op` returned.

    Raises:
        SpaceError: the two do not describe the same op (different weight count or shapes).
    """
    src = [] if search_op is None else [np.asarray(v.numpy()) for v in search_op.op_weights()]
    dst_layers = list(child_layers)
    count = sum(len(layer.get_weights()) for layer in dst_layers)
    if count != len(src):
        raise SpaceError(f"supernet op has {len(src)} weights but its Child layers have {count}; "
                         "build both from the same op name, channels and stride.")
    i = 0
    for layer in dst_layers:
        n = len(layer.get_weights())
        values = src[i:i + n]
        for have, want in zip(layer.get_weights(), values):
            if have.shape != want.shape:
                raise SpaceError(f"weight shape {want.shape} does not fit layer {layer.name!r} ({have.shape}).")
        layer.set_weights(values)
        i += n


def binary_conv_layers(model: tf.keras.Model) -> List[lq.layers.QuantConv2D]:
    """The ``QuantConv2D`` layers of ``model`` with binary input and kernel quantizers."""

    return [layer for layer in model.layers
            if isinstance(layer, lq.layers.QuantConv2D)
            and is_sign_quantizer(layer.input_quantizer) and is_sign_quantizer(layer.kernel_quantizer)]
