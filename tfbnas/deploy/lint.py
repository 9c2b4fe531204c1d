"""Which layers LCE will make binary: the check a model passes before conversion.

LCE turns a ``QuantConv2D`` with binary (sign) input and kernel quantizers into one ``LceBconv2d``;
other layers with binary quantizers silently run in float. :func:`binarization_issues` names each such
layer with the change that fixes it; :func:`expected_binary_convs` counts the convs that must come out
binary, which the converter compares with the flatbuffer.

    >>> from tfbnas.baselines import binary_resnet
    >>> model = binary_resnet((28, 28, 1), 10)
    >>> [str(issue) for issue in binarization_issues(model)]
    []
    >>> expected_binary_convs(model) > 0
    True
"""

import dataclasses
from typing import List, Optional, Tuple

import larq as lq
import tensorflow as tf

from tfbnas.quantizers import is_sign_quantizer
from tfbnas.space.ops import LCE_GROUP_CHANNELS, lce_binary


@dataclasses.dataclass(frozen=True)
class BinarizationIssue:
    """A layer the author meant to be binary that LCE will run in float.

    Attributes:
        layer: the layer's name.
        problem: what LCE does with it.
        fix: what to change in the model.
    """

    layer: str
    problem: str
    fix: str

    def __str__(self):
        return f"layer '{self.layer}': {self.problem}; {self.fix}"


def all_layers(model) -> List[tf.keras.layers.Layer]:
    """Every layer, nested ones included (custom layers holding Larq sublayers, nested models)."""
    layers, seen = [], set()
    for module in [model] + list(model.submodules):
        if isinstance(module, tf.keras.layers.Layer) and id(module) not in seen:
            seen.add(id(module))
            layers.append(module)
    return layers


def _check_layer(layer) -> Tuple[Optional[BinarizationIssue], bool]:
    """``(issue or None, becomes_bconv)`` for one layer."""
    name = layer.name
    if isinstance(layer, lq.layers.QuantSeparableConv2D):
        if any(is_sign_quantizer(getattr(layer, a, None))
               for a in ("input_quantizer", "depthwise_quantizer", "pointwise_quantizer")):
            return BinarizationIssue(
                name, "LCE converts QuantSeparableConv2D to a float DEPTHWISE_CONV_2D + float CONV_2D, never binary",
                "build it as a real DepthwiseConv2D followed by a binary 1x1 QuantConv2D "
                "(input_quantizer and kernel_quantizer 'ste_sign')"), False
        return None, False
    if isinstance(layer, lq.layers.QuantDepthwiseConv2D):
        if any(is_sign_quantizer(getattr(layer, a, None)) for a in ("input_quantizer", "depthwise_quantizer")):
            return BinarizationIssue(
                name, "LCE converts QuantDepthwiseConv2D to a float DEPTHWISE_CONV_2D, never binary",
                "use a real-valued DepthwiseConv2D (drop its quantizers) or a grouped binary QuantConv2D with "
                "a multiple of 32 input channels per group"), False
        return None, False
    if isinstance(layer, lq.layers.QuantConv2D):
        binary_in = is_sign_quantizer(layer.input_quantizer)
        binary_k = is_sign_quantizer(layer.kernel_quantizer)
        if binary_k and not binary_in:
            return BinarizationIssue(
                name, "binary kernel but no binary input quantizer: LCE emits a float CONV_2D with ±1 weights",
                "add input_quantizer='ste_sign' (or drop kernel_quantizer for a real-valued conv)"), False
        if binary_in and not binary_k:
            return BinarizationIssue(
                name, "binary input but real-valued kernel: LCE emits a float CONV_2D",
                "add kernel_quantizer='ste_sign' and kernel_constraint='weight_clip' "
                "(or drop input_quantizer for a real-valued conv)"), False
        if not binary_in:
            return None, False
        groups = int(getattr(layer, "groups", 1) or 1)
        if groups > 1:
            per_group = int(layer.kernel.shape[2]) if layer.built else None
            if per_group is not None and not lce_binary(per_group * groups, groups):
                cin, n = per_group * groups, LCE_GROUP_CHANNELS
                suggestion = [g for g in range(groups, 0, -1) if cin % g == 0 and lce_binary(cin, g)]
                hint = (f"use groups={suggestion[0]}" if suggestion
                        else f"use {groups * n * ((per_group + n - 1) // n)} input channels")
                return BinarizationIssue(
                    name, f"grouped binary conv with {per_group} input channels per group ({cin} channels, "
                          f"groups={groups}): LCE needs a multiple of 32 per group and falls back to a float CONV_2D",
                    f"{hint} so that every group has a multiple of 32 input channels"), False
        return None, True
    if isinstance(layer, lq.layers.QuantDense):
        if is_sign_quantizer(layer.input_quantizer) or is_sign_quantizer(layer.kernel_quantizer):
            return BinarizationIssue(
                name, "LCE has no binary fully-connected kernel: a binary QuantDense runs as a float FULLY_CONNECTED",
                "keep the classifier real-valued (drop its quantizers) or use a binary 1x1 QuantConv2D"), False
    return None, False


def binarization_issues(model) -> List[BinarizationIssue]:
    """Layers with binary quantizers that LCE will not turn into binary ops.

    Checks (measured with LCE 0.16): binary ``QuantDepthwiseConv2D`` / ``QuantSeparableConv2D``
    (always float), grouped binary ``QuantConv2D`` whose input channels per group are not a multiple
    of 32, ``QuantConv2D`` with only one of its two quantizers binary, binary ``QuantDense``.

    Args:
        model: a Keras model (nested layers are inspected too).

    Returns:
        One :class:`BinarizationIssue` per offending layer (empty when everything binary converts).
    """
    return [issue for issue, _ in map(_check_layer, all_layers(model)) if issue is not None]


def expected_binary_convs(model) -> int:
    """Number of ``QuantConv2D`` layers that should each become one ``LceBconv2d``."""
    return sum(1 for _, ok in map(_check_layer, all_layers(model)) if ok)


__all__ = ["BinarizationIssue", "binarization_issues", "expected_binary_convs", "all_layers"]
