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

This module gathers the op table's parts, one concept each: :mod:`tfbnas.space.table` (the table, the
presets, the group rule, the stem-stride rule), :mod:`tfbnas.space.primitives` (sign / hard-tanh, padding,
shortcut, channel fold), :mod:`tfbnas.space.search_ops` (the supernet form), :mod:`tfbnas.space.fused` (its fused
form) and :mod:`tfbnas.space.child_ops` (the Child form). Import from here or from the part.

A binary conv is: sign/STE input quantizer, sign kernel quantizer, ``weight_clip`` on the latent
weights, "same" padding with +1 (LCE's fast path), then BatchNorm. The BatchNorm scale is the
real-valued per-channel scaling factor of XNOR-Net/BATS; LCE folds it into the ``LceBconv2d``.
"""

from typing import Dict

from tfbnas.errors import SpaceError
from tfbnas.quantizers import HardTanh
from tfbnas.space.child_ops import (FoldChannels, NativeQuantConv2D, ShiftPixel, Subsample2D, batch_norm,
                                    binary_conv_layers, child_conv_bn, child_op, child_shortcut, quant_conv,
                                    transfer_weights)
from tfbnas.space.fused import FusedEdgeOps, FusedEdgeView, FusedOpView, ScaledBatchNorm, sum_tensors
from tfbnas.space.primitives import fold_channels, hard_tanh, quantize_input, shortcut, ste_sign
from tfbnas.space.search_ops import (BinaryConvOp, FactorizedReduceOp, IdentityOp, PoolOp, SearchConvBN, SearchOp,
                                     SepConvOp, make_search_op)
from tfbnas.space.table import (BATS_GROUPS, BN_EPSILON, BN_MOMENTUM, GROUP_POLICIES, LCE_GROUP_CHANNELS, OPS,
                                PARAM_FREE_OPS, PRESETS, REAL_PATH_PRESETS, STEM_STRIDES, STRIDED_STEM_MIN_SIZE, OpSpec,
                                check_group_policy, group_count, lce_binary, preset_ops, real_path, stem_channels,
                                stem_stride_for)


def layer_classes() -> Dict[str, type]:
    """The tfbnas layer classes of this module, by class name."""
    return {cls.__name__: cls for cls in (HardTanh, SearchConvBN, BinaryConvOp, SepConvOp, PoolOp, IdentityOp,
                                          FactorizedReduceOp, ScaledBatchNorm, FusedEdgeOps, Subsample2D,
                                          ShiftPixel, FoldChannels, NativeQuantConv2D)}


__all__ = [
    "SpaceError", "OpSpec", "OPS", "PRESETS", "REAL_PATH_PRESETS", "real_path", "shortcut", "fold_channels",
    "FoldChannels", "child_shortcut", "PARAM_FREE_OPS", "BATS_GROUPS", "LCE_GROUP_CHANNELS",
    "GROUP_POLICIES", "BN_MOMENTUM", "BN_EPSILON", "preset_ops", "check_group_policy", "group_count",
    "lce_binary", "STEM_STRIDES", "STRIDED_STEM_MIN_SIZE", "stem_channels", "stem_stride_for", "HardTanh",
    "ste_sign", "hard_tanh", "quantize_input", "SearchOp", "SearchConvBN",
    "BinaryConvOp", "SepConvOp", "PoolOp", "IdentityOp", "FactorizedReduceOp", "make_search_op", "ScaledBatchNorm",
    "FusedEdgeOps", "FusedEdgeView", "FusedOpView", "sum_tensors", "Subsample2D", "ShiftPixel", "NativeQuantConv2D",
    "quant_conv",
    "batch_norm", "child_conv_bn", "child_op", "transfer_weights", "binary_conv_layers", "layer_classes",
]
