"""The op table of the 1-bit search space, in a supernet form and a Child form.

One table (:data:`OPS`) describes every candidate op; :data:`PRESETS` picks the op list of a
search space:

* ``"dcp"`` (DCP-NAS / CP-NAS): zero, skip, 3x3 max and avg pool, binary 3x3 / 5x5 dilated
  convs (rate 2) and 3x3 / 5x5 separable convs (a real-valued depthwise conv followed by a binary
  1x1 conv, because LCE never binarises depthwise convs: the depthwise part deploys as float).
* ``"bats"`` (BATS): zero, skip, 3x3 max and avg pool, binary 3x3 / 5x5 grouped convs and
  3x3 / 5x5 dilated grouped convs, each followed by a binary 1x1 conv.
* ``"bireal"``: zero, skip, 3x3 max and avg pool, and binary 3x3 / 5x5 convs, plain and dilated,
  each with a real-valued shortcut around it as in Bi-Real Net (``x + BN(bconv(sign(x)))``; at
  stride 2 the shortcut is the 3x3 max pool). Its cells also keep a real-valued path through their
  input preprocessing (:func:`fold_channels`), so no sign bottleneck cuts the network. This is how
  hand-designed BNNs that work are built; the other presets throw the real-valued information
  away at every binary op.

Each op exists in two forms built from the same table:

* the **supernet form** (:func:`make_search_op`): small Keras layers computing with ``tf.nn``
  directly (a grouped conv is one ``tf.nn.conv2d`` with a ``(kh, kw, Cin/G, Cout)`` kernel, never a
  Keras conv layer with ``groups > 1``). ``call(x, training=None, binary=None)`` runs the 1-bit
  Child (``binary=True``: sign/STE activations and weights) or the real-valued Parent
  (``binary=False``: hard-tanh activations, latent weights) on the *same* variables.
  :class:`FusedEdgeOps` is its fast variant for a whole node: every op of all the mixed edges
  leaving one node, each op computed for all edges at once (the plain per-op layers stay the
  reference it is tested against).
* the **Child form** (:func:`child_op`): Functional-API layers built from ``lq.layers.QuantConv2D``
  (+ BatchNormalization, DepthwiseConv2D, pooling), which the LCE converter turns into
  ``LceBconv2d`` ops (BatchNorm folded in).

Both forms compute the same function given the same weights; :func:`transfer_weights` copies a
supernet op's variables (or a fused op's slices, :class:`FusedOpView`) into its Child layers.

A binary conv is: sign/STE input quantizer, sign kernel quantizer, ``weight_clip`` on the latent
weights, "same" padding with +1 (LCE's fast path), then BatchNorm. The BatchNorm scale is the
real-valued per-channel scaling factor of XNOR-Net/BATS; LCE folds it into the ``LceBconv2d``.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.cost import OpCount, register_layer_cost
from tfbnas.errors import SpaceError  # noqa: F401  (importable from here)
from tfbnas.quantizers import HardTanh, is_sign_quantizer


# BatchNorm settings shared by both forms (momentum as DARTS: 0.1 in PyTorch terms).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3

# BATS uses grouped convs with 12 groups (the DARTS widths 36/72/144 divide by 12).
BATS_GROUPS = 12
# LCE binarises a grouped conv only when every group has a multiple of 32 input channels.
LCE_GROUP_CHANNELS = 32
GROUP_POLICIES = ("lce", "paper")


class OpSpec(NamedTuple):
    """One row of the op table.

    Attributes:
        name: op name as used in genotypes.
        kind: ``"zero"``, ``"skip"``, ``"max_pool"``, ``"avg_pool"``, ``"conv"`` (binary kxk conv,
            optionally grouped, optionally followed by a binary 1x1) or ``"sep_conv"`` (real
            depthwise kxk + binary 1x1).
        kernel_size: spatial kernel size.
        dilation: dilation rate of the kxk conv.
        grouped: whether the kxk conv is grouped (group count from :func:`group_count`).
        pointwise: whether a binary 1x1 conv follows the kxk conv.
        deploys: what LCE makes of it.
        shortcut: a real-valued shortcut is added around the op (identity; 3x3 max pool at stride 2).
    """

    name: str
    kind: str
    kernel_size: int = 1
    dilation: int = 1
    grouped: bool = False
    pointwise: bool = False
    deploys: str = ""
    shortcut: bool = False


OPS: Dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("none", "zero", deploys="nothing (edge dropped)"),
        OpSpec("skip_connect", "skip",
               deploys="identity; stride 2: two binary 1x1 convs (LceBconv2d) + concat"),
        OpSpec("max_pool_3x3", "max_pool", 3, deploys="float MAX_POOL_2D"),
        OpSpec("avg_pool_3x3", "avg_pool", 3, deploys="float AVERAGE_POOL_2D"),
        OpSpec("dil_conv_3x3", "conv", 3, 2, deploys="LceBconv2d (dilation 2)"),
        OpSpec("dil_conv_5x5", "conv", 5, 2, deploys="LceBconv2d (dilation 2)"),
        OpSpec("sep_conv_3x3", "sep_conv", 3, pointwise=True,
               deploys="float DEPTHWISE_CONV_2D + LceBconv2d 1x1"),
        OpSpec("sep_conv_5x5", "sep_conv", 5, pointwise=True,
               deploys="float DEPTHWISE_CONV_2D + LceBconv2d 1x1"),
        OpSpec("group_conv_3x3", "conv", 3, 1, grouped=True, pointwise=True,
               deploys="LceBconv2d grouped (32k channels/group) + LceBconv2d 1x1"),
        OpSpec("group_conv_5x5", "conv", 5, 1, grouped=True, pointwise=True,
               deploys="LceBconv2d grouped (32k channels/group) + LceBconv2d 1x1"),
        OpSpec("dil_group_conv_3x3", "conv", 3, 2, grouped=True, pointwise=True,
               deploys="LceBconv2d grouped, dilation 2 + LceBconv2d 1x1"),
        OpSpec("dil_group_conv_5x5", "conv", 5, 2, grouped=True, pointwise=True,
               deploys="LceBconv2d grouped, dilation 2 + LceBconv2d 1x1"),
        OpSpec("bireal_conv_3x3", "conv", 3, shortcut=True, deploys="LceBconv2d + float ADD (shortcut)"),
        OpSpec("bireal_conv_5x5", "conv", 5, shortcut=True, deploys="LceBconv2d + float ADD (shortcut)"),
        OpSpec("bireal_dil_conv_3x3", "conv", 3, 2, shortcut=True,
               deploys="LceBconv2d (dilation 2) + float ADD (shortcut)"),
        OpSpec("bireal_dil_conv_5x5", "conv", 5, 2, shortcut=True,
               deploys="LceBconv2d (dilation 2) + float ADD (shortcut)"),
    )
}

PRESETS: Dict[str, Tuple[str, ...]] = {
    "dcp": ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
            "dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "sep_conv_5x5"),
    "bats": ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
             "group_conv_3x3", "group_conv_5x5", "dil_group_conv_3x3", "dil_group_conv_5x5"),
    "bireal": ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
               "bireal_conv_3x3", "bireal_conv_5x5", "bireal_dil_conv_3x3", "bireal_dil_conv_5x5"),
}

# Presets whose cells keep a real-valued path through their 1x1 input preprocessing.
REAL_PATH_PRESETS = frozenset({"bireal"})

# Ops without learnable kxk weights (DARTS convention: skip counts as parameter-free).
PARAM_FREE_OPS = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})


def preset_ops(preset: str) -> Tuple[str, ...]:
    """The op names of a preset, in alpha-column order.

    Raises:
        SpaceError: unknown preset.
    """
    if preset not in PRESETS:
        raise SpaceError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def real_path(preset: str) -> bool:
    """Whether the cells of ``preset`` add a real-valued shortcut to their binary preprocessing.

    Raises:
        SpaceError: unknown preset.
    """
    preset_ops(preset)
    return preset in REAL_PATH_PRESETS


def check_group_policy(group_policy):
    """Raise :class:`SpaceError` unless ``group_policy`` is ``"lce"``, ``"paper"`` or a positive int."""
    if isinstance(group_policy, bool) or not (
        group_policy in GROUP_POLICIES or (isinstance(group_policy, int) and group_policy >= 1)
    ):
        raise SpaceError(
            f"group_policy={group_policy!r} is invalid; use 'lce' (binary in LCE at any width), "
            f"'paper' (BATS's {BATS_GROUPS} groups) or a fixed positive group count."
        )


def group_count(channels: int, group_policy: Union[str, int] = "lce", max_groups: int = BATS_GROUPS) -> int:
    """Number of groups of a grouped conv with ``channels`` input (and output) channels.

    Args:
        channels: input channels of the conv.
        group_policy: ``"lce"``: the largest ``G <= max_groups`` dividing ``channels`` with a
            multiple of 32 channels per group, else 1 (a dense binary conv), so the conv always
            deploys as ``LceBconv2d``. ``"paper"``: the largest ``G <= max_groups`` dividing
            ``channels`` (BATS's 12 when possible); deploys as a float conv whenever
            ``channels / G`` is not a multiple of 32. An int: that group count (must divide).
        max_groups: upper bound on the group count.

    Returns:
        The group count.

    Example:
        >>> group_count(128), group_count(16), group_count(384, "paper")
        (4, 1, 12)
    """
    check_group_policy(group_policy)
    if isinstance(group_policy, int):
        if channels % group_policy:
            raise SpaceError(
                f"group_policy={group_policy} does not divide {channels} channels; "
                "choose a divisor or use group_policy='lce'."
            )
        return group_policy
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups:
            continue
        if group_policy == "paper" or groups == 1 or (channels // groups) % LCE_GROUP_CHANNELS == 0:
            return groups
    return 1


def lce_binary(channels: int, groups: int) -> bool:
    """Whether LCE turns a binary conv with ``channels`` inputs and ``groups`` groups into LceBconv2d."""
    return groups == 1 or (channels // groups) % LCE_GROUP_CHANNELS == 0


# --------------------------------------------------------------------------- activations


def _inside_unit(x, dy):
    """The straight-through gradient of both activations: ``dy`` where ``|x| <= 1``, else 0."""
    return tf.where(tf.abs(x) <= 1.0, dy, 0.0)


@tf.custom_gradient
def ste_sign(x):
    """larq's ``ste_sign``: sign with ``sign(0) = +1``, straight-through gradient ``dy`` where ``|x| <= 1``.

    The same values and gradients as ``lq.quantizers.ste_sign``; its gradient selects against a
    scalar zero instead of a zeros tensor as large as ``x`` (one pass over memory fewer).

    Example:
        >>> ste_sign(tf.constant([-0.5, 0.0, 2.0])).numpy()
        array([-1.,  1.,  1.], dtype=float32)
    """

    return tf.sign(tf.sign(x) + 0.1), lambda dy: _inside_unit(x, dy)


@tf.custom_gradient
def hard_tanh(x):
    """``clip(x, -1, 1)`` with the gradient of ``tf.clip_by_value`` (``dy`` where ``|x| <= 1``, else 0),
    in one select instead of two."""

    return tf.clip_by_value(x, -1.0, 1.0), lambda dy: _inside_unit(x, dy)


def quantize_input(x, binary: bool):
    """Sign with STE gradient (Child) or hard tanh (Parent): the activation before every binary conv."""
    return ste_sign(x) if binary else hard_tanh(x)


def _pad_value(binary: bool) -> float:
    # Child: LCE pads binarised inputs with +1; Parent: the usual zero padding.
    return 1.0 if binary else 0.0


def _same_pads(size, kernel_size: int, stride: int, dilation: int):
    """TensorFlow 'SAME' padding (before, after) along one axis."""
    effective = (kernel_size - 1) * dilation + 1
    if isinstance(size, int):
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_size(x):
    """``(height, width)`` of an NHWC tensor: Python ints when static, else scalar tensors."""
    return tuple(x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in (1, 2))


def _pad_same(x, kernel_size: int, stride: int, dilation: int, value: float):
    """Pad ``x`` explicitly as TensorFlow's 'SAME' would for this conv, with ``value``."""
    if kernel_size == 1:
        return x
    h, w = _spatial_size(x)
    ph, pw = _same_pads(h, kernel_size, stride, dilation), _same_pads(w, kernel_size, stride, dilation)
    return tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]], constant_values=value)


def shortcut(x, stride: int = 1):
    """The real-valued shortcut of a ``bireal`` op: ``x`` at stride 1, the 3x3 "same" max pool at stride 2.

    Example:
        >>> shortcut(tf.ones([1, 7, 7, 4]), 2).shape
        TensorShape([1, 4, 4, 4])
    """
    return x if stride == 1 else tf.nn.max_pool2d(x, 3, stride, "SAME")


def fold_channels(x, channels: int):
    """Parameter-free real-valued map of ``x``'s channels onto ``channels``: the mean of its consecutive
    ``channels``-wide slices (zero-padded to whole slices); ``x`` itself when the counts are equal.

    The real path around a ``bireal`` cell's binary 1x1 preprocessing: a cell output (its nodes
    concatenated) becomes the mean of its nodes.

    Example:
        >>> fold_channels(tf.reshape(tf.range(6.0), [1, 1, 1, 6]), 2).numpy().ravel()
        array([2., 3.], dtype=float32)
    """
    cin = int(x.shape[-1])
    if cin == channels:
        return x
    k = -(-cin // channels)
    if k * channels != cin:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, k * channels - cin]])
    # One reshape to [..., k, channels] and a sum over the slices: the same values as adding k strided
    # slices, ~6x faster forward + backward on CPU (no StridedSliceGrad per slice).
    shape = [-1] + [d if d is not None else -1 for d in x.shape[1:-1]] + [k, channels]
    if sum(d == -1 for d in shape) > 1:  # unknown spatial size: take it from the tensor
        shape = tf.concat([tf.shape(x)[:-1], [k, channels]], axis=0)
    return tf.reduce_sum(tf.reshape(x, shape), axis=-2) * (1.0 / k)


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
    Child form (stride-1 dilated ``QuantConv2D`` + :class:`Subsample2D`) computes.

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


def _shift_pixel(x, value):
    """Drop the first row and column and pad one row and column at the end (same shape)."""
    return tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]], constant_values=value)


def _check_even_channels(channels: int):
    """Factorized reduce halves the channels: raise :class:`SpaceError` for an odd count."""
    if channels % 2:
        raise SpaceError(f"factorized reduce needs an even channel count, got {channels}; use even widths.")


def _factorized_reduce(xq, kernel_a, kernel_b, edges: int, value: float):
    """``[conv_a(xq)[::2, ::2], conv_b(shift(xq))[::2, ::2]]`` of ``edges`` edges as one 2x2 stride-2 conv.

    ``kernel_a``, ``kernel_b``: ``(1, 1, C, edges * C/2)`` (already quantized). Output channels are
    ordered (edge, [a, b], C/2). Tap (0, 0) of the 2x2 window is pixel ``(2i, 2j)`` (path a), tap
    (1, 1) is ``(2i+1, 2j+1)``, the shifted pixel of path b (the pad value past the border), so no
    strided slices are needed (their gradients are slow on CPU).
    """
    c = int(kernel_a.shape[2])
    half = int(kernel_a.shape[3]) // edges
    a, b = (tf.reshape(k, [c, edges, 1, half]) for k in (kernel_a, kernel_b))
    zeros = tf.zeros_like(a)
    top, bottom = tf.concat([a, zeros], 2), tf.concat([zeros, b], 2)  # (C, edges, 2, half)
    none = tf.zeros_like(top)
    kernel = tf.reshape(tf.stack([tf.stack([top, none]), tf.stack([none, bottom])]), [2, 2, c, edges * 2 * half])
    h, w = _spatial_size(xq)
    x = tf.pad(xq, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]], constant_values=value)
    return tf.nn.conv2d(x, kernel, strides=2, padding="VALID")


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


def _check_op(name: str, preset: Optional[str] = None) -> OpSpec:
    if name not in OPS:
        raise SpaceError(f"op {name!r} is unknown; use one of {sorted(OPS)}.")
    if preset is not None and name not in preset_ops(preset):
        raise SpaceError(f"op {name!r} is not in preset {preset!r}; its ops are {list(preset_ops(preset))}.")
    return OPS[name]


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


# --------------------------------------------------------------------------- Child form


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class Subsample2D(tf.keras.layers.Layer):
    """Keep every ``stride``-th row and column, starting at ``offset``: ``x[:, o::s, o::s, :]``.

    Turns a stride-1 dilated conv into a strided one (Keras convs cannot be strided and dilated).

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

    The second path of the factorized reduce: a stride-2 1x1 conv after it samples the odd pixels.
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
    """Child form of :class:`SearchConvBN`: ``QuantConv2D`` + BN (+ :class:`Subsample2D` when strided
    and dilated). Returns ``(output, weighted_layers)``."""
    conv_stride = 1 if (dilation_rate > 1 and strides > 1) else strides
    conv = quant_conv(filters, kernel_size, conv_stride, dilation_rate, groups, binary, name=f"{prefix}_qconv")
    bn = batch_norm(name=f"{prefix}_bn")
    y = bn(conv(x))
    if conv_stride != strides:
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
        a, la = child_conv_bn(x, channels // 2, 1, 2, binary=binary, prefix=f"{prefix}_a")
        shifted = ShiftPixel(name=f"{prefix}_shift")(x)
        b, lb = child_conv_bn(shifted, channels // 2, 1, 2, binary=binary, prefix=f"{prefix}_b")
        return tf.keras.layers.Concatenate(name=f"{prefix}_concat")([a, b]), la + lb
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


def layer_classes() -> Dict[str, type]:
    """The tfbnas layer classes of this module, by class name."""
    return {cls.__name__: cls for cls in (HardTanh, SearchConvBN, BinaryConvOp, SepConvOp, PoolOp, IdentityOp,
                                          FactorizedReduceOp, ScaledBatchNorm, FusedEdgeOps, Subsample2D,
                                          ShiftPixel, FoldChannels, NativeQuantConv2D)}


__all__ = [
    "SpaceError", "OpSpec", "OPS", "PRESETS", "REAL_PATH_PRESETS", "real_path", "shortcut", "fold_channels",
    "FoldChannels", "child_shortcut", "PARAM_FREE_OPS", "BATS_GROUPS", "LCE_GROUP_CHANNELS",
    "GROUP_POLICIES", "BN_MOMENTUM", "BN_EPSILON", "preset_ops", "check_group_policy", "group_count",
    "lce_binary", "HardTanh", "ste_sign", "hard_tanh", "quantize_input", "SearchOp", "SearchConvBN",
    "BinaryConvOp", "SepConvOp", "PoolOp", "IdentityOp", "FactorizedReduceOp", "make_search_op", "ScaledBatchNorm",
    "FusedEdgeOps", "FusedEdgeView", "FusedOpView", "sum_tensors", "Subsample2D", "ShiftPixel", "NativeQuantConv2D",
    "quant_conv",
    "batch_norm", "child_conv_bn", "child_op", "transfer_weights", "binary_conv_layers", "layer_classes",
]
