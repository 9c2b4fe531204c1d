"""The op table of the 1-bit search space: every candidate op, the presets that pick them, and the
group-count rule that decides which grouped binary convs LCE can run as ``LceBconv2d``.

    >>> preset_ops("bireal")[:4]
    ('none', 'skip_connect', 'max_pool_3x3', 'avg_pool_3x3')
    >>> OPS["bireal_dil_conv_5x5"].kernel_size, OPS["bireal_dil_conv_5x5"].dilation
    (5, 2)
    >>> group_count(128), lce_binary(64, 2), lce_binary(48, 2)
    (4, True, False)
    >>> stem_stride_for((28, 28, 1)), stem_stride_for((224, 224, 3)), stem_channels(48, 3, 4)
    (1, 4, (24, 144))
"""

import numbers
from typing import Dict, NamedTuple, Optional, Tuple, Union

from tfbnas.errors import SpaceError



BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3

# BATS uses grouped convs with 12 groups (the DARTS widths 36/72/144 divide by 12).
BATS_GROUPS = 12
# LCE binarises a grouped conv only when every group has a multiple of 32 input channels.
LCE_GROUP_CHANNELS = 32
GROUP_POLICIES = ("lce", "paper")
# The real-valued stem: stride 1 (one 3x3 conv + BN) or 4 (two stride-2 3x3 convs, DARTS's ImageNet stem).
STEM_STRIDES = (1, 4)
# Images this tall or wide (ImageNet-sized) get the stride-4 stem; smaller ones (28x28, 32x32) stride 1.
STRIDED_STEM_MIN_SIZE = 128


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


def check_partial_channels(init_channels: int, partial_channels) -> int:
    """The partial-channel ``K`` of a supernet of ``init_channels``: each edge's ops see ``C / K`` channels of every
    cell (C, 2C, 4C), an even count (the factorized reduce halves it), so ``init_channels`` divides by ``2K``.

    Raises:
        SpaceError: ``K`` not a positive integer, or ``init_channels`` does not divide by ``2K``.
    """
    k = partial_channels
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or init_channels % (2 * k):
        raise SpaceError(f"--partial_channels={k!r} needs --init_channels divisible by twice it (each edge's ops see "
                         f"C/K channels, an even count); got {init_channels}: use a smaller --partial_channels or a "
                         "wider --init_channels")
    return int(k)


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


def stem_stride_for(input_shape, stem_stride: Optional[int] = None) -> int:
    """The stride of the real-valued stem for images of ``input_shape``: the one owner of this rule.

    ``stem_stride=None`` ("auto") chooses from the image size: 4 when the height or width is at least
    :data:`STRIDED_STEM_MIN_SIZE` (ImageNet-sized: the first cell runs at 56x56 for 224x224 inputs, as in
    DARTS's ImageNet network), else 1 (Fashion-MNIST, CIFAR: the first cell runs at full resolution).
    An explicit 1 or 4 is returned as it is.

    Args:
        input_shape: ``(height, width, channels)`` (a leading batch dimension is allowed).
        stem_stride: ``None`` (auto), 1 or 4.

    Raises:
        SpaceError: another stride, or ``None`` with an unknown or malformed image size.

    Example:
        >>> stem_stride_for((32, 32, 3)), stem_stride_for((224, 224, 3)), stem_stride_for((224, 224, 3), 1)
        (1, 4, 1)
    """
    if stem_stride is not None:
        if isinstance(stem_stride, bool) or stem_stride not in STEM_STRIDES:
            raise SpaceError(f"stem_stride={stem_stride!r} is not a stem; use 1 (small images), 4 (ImageNet-sized) "
                             "or None (chosen from the input size).")
        return int(stem_stride)
    dims = tuple(input_shape) if input_shape is not None else ()
    if len(dims) not in (3, 4) or dims[-3] is None or dims[-2] is None:
        raise SpaceError(f"input_shape={input_shape!r} gives no image size to choose the stem from; pass "
                         "(height, width, channels) or stem_stride=1 or 4.")
    return 4 if max(int(dims[-3]), int(dims[-2])) >= STRIDED_STEM_MIN_SIZE else 1


def stem_channels(init_channels: int, stem_multiplier: int, stem_stride: int) -> Tuple[int, ...]:
    """Output channels of each 3x3 conv of the real-valued stem (supernet and Child).

    Stride 1: one conv of ``stem_multiplier * C``. Stride 4: ``C // 2`` (DARTS's ImageNet stem), then
    ``stem_multiplier * C``: the cells get the same input width with either stem.

    Example:
        >>> stem_channels(48, 3, 1), stem_channels(48, 3, 4)
        ((144,), (24, 144))
    """
    out = stem_multiplier * init_channels
    return (out,) if stem_stride_for(None, stem_stride) == 1 else (max(1, init_channels // 2), out)


def _check_op(name: str, preset: Optional[str] = None) -> OpSpec:
    if name not in OPS:
        raise SpaceError(f"op {name!r} is unknown; use one of {sorted(OPS)}.")
    if preset is not None and name not in preset_ops(preset):
        raise SpaceError(f"op {name!r} is not in preset {preset!r}; its ops are {list(preset_ops(preset))}.")
    return OPS[name]
