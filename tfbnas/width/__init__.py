"""Width search: per-layer channel counts of a trained network or of a macro backbone.

* :mod:`tfbnas.width.dnal` — DNAL: scaled-sigmoid channel gates, gate training, pruning to a smaller
  plain Keras model, finetuning (works on any Functional Conv-BN model, real or Larq 1-bit).
* :mod:`tfbnas.width.bcnet` — BCNet: a bilaterally coupled, width-sliceable supernet of the
  Channel-Bench-Macro MobileNet space (real or 1-bit) with stochastic complementary training.
* :mod:`tfbnas.width.evolution` — budgeted evolutionary search (prior initial population) as a
  keras-tuner Oracle/Tuner, and the random-search control.
* :mod:`tfbnas.width.surrogate` — model-based search (additive Bayesian surrogate, Thompson sampling,
  re-evaluation under noise) as a keras-tuner Oracle; the default of ``run_width_search``.
* :mod:`tfbnas.width.channel_bench` — the Channel-Bench-Macro table as a ground-truth oracle.
* :mod:`tfbnas.width.stage` — the main job's width stage (``python -m tfbnas.run --width=dnal``): DNAL
  gate scores of the trained Child choose per-cell widths within an OPs budget.

Command line: ``python -m tfbnas.width --method=dnal|bcnet ...`` (see ``docs/width_search.md``).
"""

from tfbnas.errors import WidthSearchError  # noqa: F401  (importable from here)
from tfbnas.width.channel_bench import ChannelBenchMacro, macro_cost, macro_flops
from tfbnas.width.dnal import (ChannelGate, DeltaSchedule, PruneError, finetune, insert_gates, prune,
                               train_gates, train_weights)
from tfbnas.width.bcnet import BCNetSupernet, build_macro_model

# The keras-tuner searches load on first use: keras-tuner imports Keras 3, which a process that only loads
# or prunes models does not need (``import tfbnas`` registers the width layers through this package).
_LAZY = {"EvolutionWidthOracle": "evolution", "RandomWidthOracle": "evolution", "WidthSpace": "evolution",
         "WidthTuner": "evolution", "run_width_search": "evolution", "AdditiveSurrogate": "surrogate",
         "SurrogateWidthOracle": "surrogate"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"tfbnas.width.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'tfbnas.width' has no attribute {name!r}")

__all__ = [
    "AdditiveSurrogate",
    "BCNetSupernet",
    "ChannelBenchMacro",
    "ChannelGate",
    "DeltaSchedule",
    "EvolutionWidthOracle",
    "PruneError",
    "RandomWidthOracle",
    "SurrogateWidthOracle",
    "WidthSearchError",
    "WidthSpace",
    "WidthTuner",
    "build_macro_model",
    "finetune",
    "insert_gates",
    "macro_cost",
    "macro_flops",
    "prune",
    "run_width_search",
    "train_gates",
    "train_weights",
]
