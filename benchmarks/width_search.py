"""Width-search algorithms against the Channel-Bench-Macro ground truth (MobileNet space, CIFAR-10).

Each search spends the same number of queries under a FLOPs budget; the table then gives the true
accuracy of the architecture it returns (its ``best_widths()``) and its rank among the entries within
the budget. Two evaluators answer the queries:

* ``exact``: the table's mean accuracy (three trainings averaged), the same answer every time.
* ``noisy``: what one training run would give: the ``j``-th evaluation of width vector ``w`` in seed
  ``s`` returns ``mean(w) + std(w) * z`` with ``z ~ N(0, 1)`` drawn from an RNG seeded by
  ``(s, key(w), j)``. Every method of a seed sees the same draws for the same evaluation, and a
  re-evaluation (``j = 1, 2, ...``) gets a new draw.

    python benchmarks/width_search.py --budget_fraction=0.3                 # 30 seeds, 100 queries, both evaluators
    python benchmarks/width_search.py --budget_fraction=0.3 --evaluator=noisy --queries=50

Methods: ``surrogate`` (SurrogateWidthOracle: additive Bayesian model, Thompson sampling, re-evaluation
under noise), ``evolution`` (EvolutionWidthOracle: prior initial population + mutation/crossover),
``evolution_uniform`` (same, uniform initial population), ``random`` (uniform feasible vectors).
Per method and evaluator it reports the median and mean true rank within the budget, P(rank <= 5), the
mean true accuracy and the seeds on which it picked a truly more accurate vector than random search
(ties are not wins), then one ``SUMMARY`` line per evaluator.
"""

import os
import shutil
import tempfile
import time

import numpy as np
from absl import flags

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas import flags as tflags
from tfbnas.errors import ConfigError
from tfbnas.width.channel_bench import GRID, LAYER_NAMES, ChannelBenchMacro, macro_flops
from tfbnas.width.evolution import WidthSpace, run_width_search

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 30, "Independent searches per method.", lower_bound=1)
flags.DEFINE_integer("queries", 100, "Evaluations per search (re-evaluations included).", lower_bound=2)
flags.DEFINE_float("budget_fraction", None, "Budget as a fraction of the full-width FLOPs (default: median FLOPs).")
flags.DEFINE_string("table", None, "Results_MobileNet.json (default: <repo>/../shared/... or $TFBNAS_CHANNEL_BENCH).")
flags.DEFINE_list("methods", ["surrogate", "evolution", "random"],
                  "Methods to compare (surrogate, evolution, evolution_uniform, random).")
flags.DEFINE_list("evaluator", ["exact", "noisy"], "exact (table mean), noisy (mean + std * N(0, 1)), or both.")
flags.DEFINE_string("output_dir", None, "Keep the keras-tuner projects here (default: a temporary folder).")

METHODS = ("surrogate", "evolution", "evolution_uniform", "random")
EVALUATORS = ("exact", "noisy")


def make_evaluator(bench, kind, seed):
    """``widths -> accuracy``: the table mean, or one simulated training run (see the module docstring)."""
    if kind == "exact":
        return bench.accuracy
    std = dict(zip(bench.keys, bench.std))
    evaluations = {}

    def noisy(widths):
        key = bench.key(widths)
        j = evaluations.get(key, 0)
        evaluations[key] = j + 1
        z = np.random.default_rng([seed, int(key), j]).standard_normal()
        return bench.accuracy(widths) + std[key] * z

    return noisy


def search(bench, method, kind, seed, budget, queries, directory):
    space = WidthSpace(LAYER_NAMES, GRID, cost=bench.flops, budget=budget)
    name, kwargs = method, {}
    if method == "evolution_uniform":
        name, kwargs = "evolution", {"initial_population": "uniform"}
    tuner = run_width_search(space, make_evaluator(bench, kind, seed), name, queries, directory,
                             f"{method}_{kind}_seed{seed}", seed, **kwargs)
    w = tuner.best_widths()
    queried = {tuple(row["widths"]) for row in tuner.history()}
    return {"key": bench.key(w), "acc": bench.accuracy(w), "rank": bench.rank(w, budget),
            "best_queried": min(bench.rank(q, budget) for q in queried), "distinct": len(queried),
            "queries": tuner.queries()}


def report(results, kind, feasible, budget, fraction):
    """Per-method statistics and the SUMMARY line of one evaluator."""
    random_acc = [r["acc"] for r in results["random"]] if "random" in results else None
    parts = []
    print(f"\nevaluator={kind}: true rank within the budget ({feasible} feasible), lower is better")
    for m, rows in results.items():
        rank = np.array([r["rank"] for r in rows])
        acc = np.array([r["acc"] for r in rows])
        queried = np.array([r["best_queried"] for r in rows])
        distinct = np.mean([r["distinct"] for r in rows])
        wins = "-" if random_acc is None or m == "random" else \
            f"{sum(a > b for a, b in zip(acc, random_acc))}/{len(rows)}"
        print(f"{m:>18}: median rank {np.median(rank):5.1f}, mean rank {rank.mean():6.1f}, P(rank<=5) "
              f"{np.mean(rank <= 5):.2f}, mean true acc {acc.mean():.3f}% (std {acc.std():.3f}), wins vs random "
              f"{wins}, median best-queried rank {np.median(queried):.0f}, distinct widths {distinct:.0f}")
        parts.append(f"{m}: median {np.median(rank):g}, mean {rank.mean():.1f}, P(<=5) {np.mean(rank <= 5):.2f}, "
                     f"acc {acc.mean():.3f}%, wins vs random {wins}")
    seeds = len(next(iter(results.values())))
    where = f"budget {fraction:g} x full FLOPs" if fraction else "budget median FLOPs"
    print(f"SUMMARY evaluator={kind} {where} ({budget / 1e6:.2f} MFLOPs), {FLAGS.queries} queries, {seeds} seeds | "
          + " | ".join(parts))


def main(argv):
    del argv
    unknown = [m for m in FLAGS.methods if m not in METHODS] + [e for e in FLAGS.evaluator if e not in EVALUATORS]
    if unknown:
        raise ConfigError(f"unknown method or evaluator {unknown}; methods {METHODS}, evaluators {EVALUATORS}")
    bench = ChannelBenchMacro(FLAGS.table)
    budget = (FLAGS.budget_fraction * macro_flops((1.0,) * 7)) if FLAGS.budget_fraction else bench.median_flops()
    feasible = bench.count(budget)
    best = bench.best(budget)
    directory = FLAGS.output_dir or tempfile.mkdtemp(prefix="width_search_")
    print(f"Channel-Bench-Macro MobileNet: {len(bench)} entries, budget {budget / 1e6:.2f} MFLOPs "
          f"({feasible} within), best within budget {bench.key(best)} = {bench.accuracy(best):.3f}%, "
          f"{FLAGS.queries} queries x {FLAGS.seeds} seeds, evaluators {', '.join(FLAGS.evaluator)}")
    summaries = []
    start = time.time()
    for kind in FLAGS.evaluator:
        results = {m: [] for m in FLAGS.methods}
        header = f"{kind:>5} {'seed':>4} | " + " | ".join(f"{m:^31}" for m in FLAGS.methods)
        print("\n" + header)
        print(f"{'':>10} | " + " | ".join(f"{'found':>8} {'acc %':>7} {'rank<=B':>8} {'q':>4}" for _ in FLAGS.methods))
        print("-" * len(header))
        for seed in range(FLAGS.seeds):
            cells = []
            for m in FLAGS.methods:
                r = search(bench, m, kind, seed, budget, FLAGS.queries, directory)
                results[m].append(r)
                cells.append(f"{r['key']:>8} {r['acc']:7.3f} {r['rank']:8d} {r['queries']:4d}")
            print(f"{'':>5} {seed:>4} | " + " | ".join(cells), flush=True)
        summaries.append((results, kind))
    for results, kind in summaries:
        report(results, kind, feasible, budget, FLAGS.budget_fraction)
    print(f"\n{time.time() - start:.1f} s")
    if not FLAGS.output_dir:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"keras-tuner projects: {os.path.abspath(directory)}")


if __name__ == "__main__":
    tflags.run(main, prog="width_search.py")
