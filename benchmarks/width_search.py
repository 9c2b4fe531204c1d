"""Width-search algorithms against the Channel-Bench-Macro ground truth (MobileNet space, CIFAR-10).

Each search spends the same number of queries (table lookups of an architecture's mean accuracy)
under a FLOPs budget; the table then gives the true accuracy of the architecture it returns and
its rank among all 16384 entries and among those within the budget.

    python benchmarks/width_search.py                        # 10 seeds, 100 queries, median FLOPs
    python benchmarks/width_search.py --seeds=20 --queries=50 --budget_fraction=0.3

Methods: ``evolution`` (tfbnas's EvolutionWidthOracle: prior initial population + mutation/crossover),
``evolution_uniform`` (same, uniform initial population), ``random`` (uniform feasible vectors).
"""

import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas.width.channel_bench import GRID, LAYER_NAMES, ChannelBenchMacro, macro_flops
from tfbnas.width.evolution import WidthSpace, run_width_search

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 10, "Independent searches per method.", lower_bound=1)
flags.DEFINE_integer("queries", 100, "Table lookups per search.", lower_bound=2)
flags.DEFINE_float("budget_fraction", None, "Budget as a fraction of the full-width FLOPs (default: median FLOPs).")
flags.DEFINE_string("table", None, "Results_MobileNet.json (default: <repo>/../shared/... or $TFBNAS_CHANNEL_BENCH).")
flags.DEFINE_list("methods", ["evolution", "evolution_uniform", "random"], "Methods to compare.")
flags.DEFINE_string("output_dir", None, "Keep the keras-tuner projects here (default: a temporary folder).")


def search(bench, method, seed, budget, queries, directory):
    space = WidthSpace(LAYER_NAMES, GRID, cost=bench.flops, budget=budget)
    kwargs = {}
    if method == "evolution_uniform":
        method, kwargs = "evolution", {"initial_population": "uniform"}
    tuner = run_width_search(space, bench.accuracy, method, queries, directory,
                             f"{method}{'_u' if kwargs else ''}_seed{seed}", seed, **kwargs)
    w = tuner.best_widths()
    return {"key": bench.key(w), "acc": bench.accuracy(w), "rank_budget": bench.rank(w, budget),
            "rank_all": bench.rank(w), "queries": tuner.queries()}


def main(argv):
    del argv
    bench = ChannelBenchMacro(FLAGS.table)
    budget = (FLAGS.budget_fraction * macro_flops((1.0,) * 7)) if FLAGS.budget_fraction else bench.median_flops()
    feasible = bench.count(budget)
    best = bench.best(budget)
    directory = FLAGS.output_dir or tempfile.mkdtemp(prefix="width_search_")
    print(f"Channel-Bench-Macro MobileNet: {len(bench)} entries, budget {budget / 1e6:.2f} MFLOPs "
          f"({feasible} within), best within budget {bench.key(best)} = {bench.accuracy(best):.3f}%, "
          f"{FLAGS.queries} queries x {FLAGS.seeds} seeds\n")
    results = {m: [] for m in FLAGS.methods}
    header = f"{'seed':>4} | " + " | ".join(f"{m:^36}" for m in FLAGS.methods)
    print(header)
    print(f"{'':>4} | " + " | ".join(f"{'found':>8} {'acc %':>7} {'rank<=B':>8} {'rank':>6} {'q':>3}"
                                     for _ in FLAGS.methods))
    print("-" * len(header))
    start = time.time()
    for seed in range(FLAGS.seeds):
        cells = []
        for m in FLAGS.methods:
            r = search(bench, m, seed, budget, FLAGS.queries, directory)
            results[m].append(r)
            cells.append(f"{r['key']:>8} {r['acc']:7.3f} {r['rank_budget']:8d} {r['rank_all']:6d} {r['queries']:3d}")
        print(f"{seed:>4} | " + " | ".join(cells))
    print("-" * len(header))
    for m in FLAGS.methods:
        acc = np.array([r["acc"] for r in results[m]])
        rb = np.array([r["rank_budget"] for r in results[m]])
        ra = np.array([r["rank_all"] for r in results[m]])
        print(f"{m:>18}: mean acc {acc.mean():.3f}% (std {acc.std():.3f}), mean rank within budget {rb.mean():.1f} "
              f"of {feasible} (median {np.median(rb):.0f}), mean overall rank {ra.mean():.1f} of {len(bench)}, "
              f"found the best {int((rb == 1).sum())}/{len(rb)} times")
    if "evolution" in results and "random" in results:
        evo = np.mean([r["acc"] for r in results["evolution"]])
        rnd = np.mean([r["acc"] for r in results["random"]])
        wins = sum(e["acc"] > r["acc"] for e, r in zip(results["evolution"], results["random"]))
        print(f"\nsummary: evolution {evo:.3f}% vs random {rnd:.3f}% mean true accuracy "
              f"({evo - rnd:+.3f} points, evolution better on {wins}/{FLAGS.seeds} seeds), "
              f"{FLAGS.queries} queries, budget {budget / 1e6:.1f} MFLOPs, {time.time() - start:.1f} s")
    if not FLAGS.output_dir:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"keras-tuner projects: {os.path.abspath(directory)}")


if __name__ == "__main__":
    app.run(main)
