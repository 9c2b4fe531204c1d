"""Channel-Bench-Macro (MobileNet space): a ground-truth table for width-search algorithms.

The table holds the CIFAR-10 test accuracy (mean of three runs) of all ``4**7 = 16384`` width
vectors of one macro network, so a search algorithm can be run against it with the table as its
oracle and judged by the true accuracy and rank of what it finds.

The macro network (input 32x32x3) and its seven searchable widths, in key order:

====  =================  ==========  ===========================================================
pos   layer              max width   what the width scales
====  =================  ==========  ===========================================================
0     ``stage1``         128         3x3 stride-2 stem conv, outputs of MB blocks 1-2 (+ skip)
1     ``mb1_hidden``     768         expanded (hidden) channels of MB block 1
2     ``mb2_hidden``     768         hidden channels of MB block 2
3     ``mb3_hidden``     768         hidden channels of MB block 3 (stride 2, 128 -> 256)
4     ``stage2``         256         outputs of MB blocks 3-4 (+ skip)
5     ``mb4_hidden``     1536        hidden channels of MB block 4
6     ``head``           1024        1x1 conv before global pooling
====  =================  ==========  ===========================================================

An MB block is 1x1 conv-BN-ReLU6, 3x3 depthwise conv-BN-ReLU6, 1x1 conv-BN (+ identity skip when
shapes agree). Each width is a multiplier from ``(0.25, 0.5, 0.75, 1.0)``; the table key is one digit
per position (1 = 0.25 ... 4 = 1.0). :func:`macro_flops` and :func:`macro_params` reproduce the
table's ``flops`` (conv + FC multiply-accumulates) and ``params`` columns exactly, which pins down this
reading of the space.

Example:
    >>> bench = ChannelBenchMacro()            # finds the table next to the repository
    >>> round(bench.accuracy((1.0,) * 7), 2), bench.flops((1.0,) * 7) == macro_flops((1.0,) * 7)
    (91.66, True)
    >>> budget = bench.median_flops()
    >>> bench.key(bench.best(budget)), bench.count(budget)
    ('2433144', 8194)
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tfbnas.width import WidthSearchError

__all__ = [
    "CHANNEL_BENCH_ENV",
    "GRID",
    "LAYER_NAMES",
    "MAX_WIDTHS",
    "ChannelBenchMacro",
    "default_table_path",
    "macro_channels",
    "macro_cost",
    "macro_flops",
    "macro_params",
]

#: Environment variable that overrides where the table is looked for.
CHANNEL_BENCH_ENV = "TFBNAS_CHANNEL_BENCH"
#: Width multipliers of every layer; digit ``k`` of a key is ``GRID[k - 1]``.
GRID: Tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
#: Searchable layers in key order.
LAYER_NAMES: Tuple[str, ...] = ("stage1", "mb1_hidden", "mb2_hidden", "mb3_hidden", "stage2", "mb4_hidden", "head")
#: Channel counts at multiplier 1.0.
MAX_WIDTHS: Tuple[int, ...] = (128, 768, 768, 768, 256, 1536, 1024)

_RELATIVE_TABLE = os.path.join("..", "shared", "benchmarks", "channel-bench-macro", "Results_MobileNet.json")


def default_table_path() -> str:
    """Where the MobileNet table is looked for.

    ``$TFBNAS_CHANNEL_BENCH`` if set, else ``<repository>/../shared/benchmarks/channel-bench-macro/
    Results_MobileNet.json`` (the repository being the folder that holds the ``tfbnas`` package).
    """
    env = os.environ.get(CHANNEL_BENCH_ENV)
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.normpath(os.path.join(repo, _RELATIVE_TABLE))


def macro_channels(widths: Sequence[float], max_widths: Sequence[int] = MAX_WIDTHS) -> Tuple[int, ...]:
    """Channel counts of the seven layers for width multipliers ``widths``."""
    if len(widths) != len(max_widths):
        raise WidthSearchError(f"expected {len(max_widths)} width multipliers, got {len(widths)}: {tuple(widths)}")
    channels = []
    for w, c in zip(widths, max_widths):
        if not 0.0 < float(w) <= 1.0:
            raise WidthSearchError(f"width multiplier {w} is outside (0, 1]; use values such as {GRID}")
        channels.append(max(1, int(round(float(w) * c))))
    return tuple(channels)


def macro_flops(widths: Sequence[float], input_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                max_widths: Sequence[int] = MAX_WIDTHS) -> int:
    """Multiply-accumulates of the macro network (convs and FC, as the table counts ``flops``).

    Args:
        widths: seven width multipliers.
        input_size: input height = width (32 for CIFAR-10).
        in_channels: input channels.
        num_classes: classifier outputs.
        max_widths: channel counts at multiplier 1.0.

    Returns:
        MACs as an int; equals the table's ``flops`` for every key at the defaults.
    """
    cost = macro_cost(widths, input_size, in_channels, num_classes, max_widths, binary=False)
    return int(cost["flops"])


def macro_cost(widths: Sequence[float], input_size: int = 32, in_channels: int = 3, num_classes: int = 10,
               max_widths: Sequence[int] = MAX_WIDTHS, binary: bool = False) -> Dict[str, float]:
    """MACs of the macro network split into float and binary ones.

    Args:
        widths, input_size, in_channels, num_classes, max_widths: as :func:`macro_flops`.
        binary: the 1-bit variant of :mod:`tfbnas.width.bcnet`: the 1x1 convs (expand, project, head)
            are binary; stem, depthwise convs and the classifier stay real.

    Returns:
        ``{"flops": float MACs, "bops": binary MACs, "ops": bops / 64 + flops}``.
    """
    s1, h1, h2, h3, s2, h4, head = macro_channels(widths, max_widths)
    r1 = -(-input_size // 2)  # after the stride-2 stem ("same" padding)
    p1, p2 = r1 ** 2, (-(-r1 // 2)) ** 2  # positions before / after MB block 3
    real = p1 * 9 * in_channels * s1 + head * num_classes  # stem, classifier
    real += p1 * 9 * (h1 + h2 + 0) + p2 * 9 * (h3 + h4)  # depthwise convs
    pointwise = p1 * (2 * s1 * h1 + 2 * s1 * h2 + s1 * h3) + p2 * (h3 * s2 + 2 * s2 * h4 + s2 * head)
    bops = pointwise if binary else 0
    flops = real + (0 if binary else pointwise)
    return {"flops": float(flops), "bops": float(bops), "ops": bops / 64.0 + flops}


def macro_params(widths: Sequence[float], in_channels: int = 3, num_classes: int = 10,
                 max_widths: Sequence[int] = MAX_WIDTHS) -> int:
    """Trainable parameters of the macro network (bias-free convs, BN scale+offset, FC with bias)."""
    s1, h1, h2, h3, s2, h4, head = macro_channels(widths, max_widths)

    def mb(cin, hidden, cout):
        return cin * hidden + 2 * hidden + 9 * hidden + 2 * hidden + hidden * cout + 2 * cout

    params = 9 * in_channels * s1 + 2 * s1
    params += mb(s1, h1, s1) + mb(s1, h2, s1) + mb(s1, h3, s2) + mb(s2, h4, s2)
    params += s2 * head + 2 * head + head * num_classes + num_classes
    return int(params)


class ChannelBenchMacro:
    """The Channel-Bench-Macro MobileNet table as a queryable oracle.

    Args:
        path: the ``Results_MobileNet.json`` file; default :func:`default_table_path`.

    Raises:
        WidthSearchError: the file is missing or is not the 16384-entry table.

    Example:
        >>> bench = ChannelBenchMacro()
        >>> w = bench.best(budget=bench.median_flops())
        >>> bench.rank(w, budget=bench.median_flops())
        1
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path or default_table_path()
        if not os.path.exists(self.path):
            raise WidthSearchError(
                f"Channel-Bench-Macro table not found at {self.path}; pass its path or set ${CHANNEL_BENCH_ENV} "
                "to the Results_MobileNet.json of the Channel-Bench-Macro release"
            )
        with open(self.path) as f:
            table = json.load(f)
        if len(table) != len(GRID) ** len(LAYER_NAMES) or not all(len(k) == len(LAYER_NAMES) for k in table):
            raise WidthSearchError(f"{self.path} is not the Channel-Bench-Macro MobileNet table "
                                   f"({len(table)} entries, expected {len(GRID) ** len(LAYER_NAMES)})")
        self.keys = sorted(table)
        self._index: Dict[str, int] = {k: i for i, k in enumerate(self.keys)}
        self.accuracies = np.array([table[k]["mean"] for k in self.keys], np.float64)
        self.flops_table = np.array([table[k]["flops"] for k in self.keys], np.float64)
        self.params_table = np.array([table[k]["params"] for k in self.keys], np.float64)
        self.std = np.array([table[k]["std"] for k in self.keys], np.float64)

    # ------------------------------------------------------------------ keys
    @staticmethod
    def key(widths: Sequence[float]) -> str:
        """Table key of a width vector, e.g. ``(1.0, 0.25, ...) -> "41..."``."""
        if len(widths) != len(LAYER_NAMES):
            raise WidthSearchError(f"expected {len(LAYER_NAMES)} width multipliers, got {len(widths)}")
        digits = []
        for w in widths:
            matches = [i for i, g in enumerate(GRID) if abs(float(w) - g) < 1e-6]
            if not matches:
                raise WidthSearchError(f"width multiplier {w} is not in the benchmark grid {GRID}")
            digits.append(str(matches[0] + 1))
        return "".join(digits)

    @staticmethod
    def widths(key: str) -> Tuple[float, ...]:
        """Width vector of a table key."""
        return tuple(GRID[int(c) - 1] for c in key)

    def _row(self, widths) -> int:
        return self._index[self.key(widths)]

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.keys)

    def accuracy(self, widths: Sequence[float]) -> float:
        """Mean CIFAR-10 test accuracy (%) of a width vector (the table's ``mean``)."""
        return float(self.accuracies[self._row(widths)])

    def flops(self, widths: Sequence[float]) -> float:
        """The table's ``flops`` (MACs) of a width vector."""
        return float(self.flops_table[self._row(widths)])

    def params(self, widths: Sequence[float]) -> float:
        """The table's parameter count of a width vector."""
        return float(self.params_table[self._row(widths)])

    def median_flops(self) -> float:
        """Median FLOPs over the whole table (a natural mid-size budget)."""
        return float(np.median(self.flops_table))

    def rank(self, widths: Sequence[float], budget: Optional[float] = None) -> int:
        """1-based rank of a width vector by accuracy, among all entries or those within ``budget`` FLOPs.

        Ties count in the vector's favour (rank = 1 + number of strictly better entries).
        """
        acc = self.accuracy(widths)
        pool = self.accuracies
        if budget is not None:
            if self.flops(widths) > budget:
                raise WidthSearchError(f"{self.key(widths)} has {self.flops(widths):.0f} FLOPs and exceeds the "
                                       f"budget {budget:.0f}; rank it without a budget or pick a feasible vector")
            pool = pool[self.flops_table <= budget]
        return int(np.sum(pool > acc) + 1)

    def count(self, budget: Optional[float] = None) -> int:
        """Number of entries, or of entries within ``budget`` FLOPs."""
        return len(self) if budget is None else int(np.sum(self.flops_table <= budget))

    def best(self, budget: Optional[float] = None) -> Tuple[float, ...]:
        """The most accurate width vector (within ``budget`` FLOPs if given)."""
        acc = np.where(self.flops_table <= budget, self.accuracies, -np.inf) if budget is not None else self.accuracies
        return self.widths(self.keys[int(np.argmax(acc))])
