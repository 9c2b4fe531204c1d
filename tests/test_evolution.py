"""Evolutionary width search (keras-tuner Oracle/Tuner) and the Channel-Bench-Macro oracle mode."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BackgroundRun
from tfbnas.width import WidthSearchError
from tfbnas.width.channel_bench import (CHANNEL_BENCH_ENV, GRID, LAYER_NAMES, ChannelBenchMacro, default_table_path,
                                        macro_flops, macro_params)
from tfbnas.width.evolution import (EvolutionWidthOracle, RandomWidthOracle, WidthSpace, WidthTuner, additive_cost,
                                    run_width_search)


def _toy_space(budget=2.0):
    # Score grows with width; cost = sum of multipliers: the best feasible vector fills the budget.
    return WidthSpace(["a", "b", "c"], (0.25, 0.5, 0.75, 1.0), cost=lambda w: sum(w), budget=budget)


def _toy_score(w):
    return float(np.dot(w, [3.0, 2.0, 1.0]))


def test_table_path_resolves_relative_to_repo_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(CHANNEL_BENCH_ENV, raising=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert default_table_path() == os.path.normpath(
        os.path.join(repo, "..", "shared", "benchmarks", "channel-bench-macro", "Results_MobileNet.json"))
    monkeypatch.setenv(CHANNEL_BENCH_ENV, str(tmp_path / "t.json"))
    assert default_table_path() == str(tmp_path / "t.json")
    with pytest.raises(WidthSearchError, match="not found"):
        ChannelBenchMacro()


def test_macro_formulas_reproduce_the_table(bench):
    # Every entry: FLOPs and params of our reading of the macro space equal the table's columns.
    for key in bench.keys[::97] + ["4444444", "1111111"]:
        w = bench.widths(key)
        assert macro_flops(w) == bench.flops(w)
        assert macro_params(w) == bench.params(w)
    assert len(bench) == 16384
    assert 89.0 < bench.accuracies.min() < bench.accuracies.max() < 92.0


def test_bench_rank_and_key(bench):
    budget = bench.median_flops()
    best = bench.best(budget)
    assert bench.rank(best, budget) == 1
    assert bench.flops(best) <= budget
    assert bench.key(bench.widths("1234123")) == "1234123"
    assert bench.rank(bench.best()) == 1
    with pytest.raises(WidthSearchError, match="exceeds the budget"):
        bench.rank((1.0,) * 7, budget)
    with pytest.raises(WidthSearchError, match="not in the benchmark grid"):
        bench.key((0.3,) * 7)


def test_space_and_cost_validation():
    space = _toy_space()
    assert space.feasible((1.0, 0.5, 0.5)) and not space.feasible((1.0, 1.0, 0.25))
    assert space.hyperparameters().space[0].values == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(WidthSearchError, match="budget needs a cost"):
        WidthSpace(["a"], (0.5, 1.0), budget=1.0)
    cost = additive_cost({"a": {0.5: 1.0, 1.0: 2.5}, "b": {0.5: 0.2, 1.0: 0.4}}, ["a", "b"])
    assert cost((1.0, 0.5)) == pytest.approx(2.7)
    with pytest.raises(WidthSearchError, match="no multiplier"):
        cost((0.75, 0.5))
    with pytest.raises(WidthSearchError, match="population_size"):
        EvolutionWidthOracle(space, max_trials=5, population_size=1)


def test_budget_is_enforced_and_trials_are_unique(tmp_path):
    space = _toy_space(budget=1.75)
    tuner = run_width_search(space, _toy_score, "evolution", max_trials=25, directory=str(tmp_path), seed=1,
                             population_size=6)
    history = tuner.history()
    assert len(history) == 25
    assert all(row["cost"] <= 1.75 + 1e-9 for row in history)
    assert len({tuple(row["widths"]) for row in history}) == 25
    origins = {row["origin"] for row in history}
    assert "initial" in origins and origins & {"mutation", "crossover"}
    # The prior initial population fills the budget (largest cost among its candidates).
    initial = [row for row in history if row["origin"] == "initial"]
    rng = np.random.default_rng(0)
    feasible = [c for c in (sum(space.sample(rng)) for _ in range(400)) if c <= 1.75]
    assert np.mean([r["cost"] for r in initial]) > np.mean(feasible) + 0.2


def test_oracle_resumes_from_its_directory(tmp_path):
    space = _toy_space()
    first = WidthTuner(EvolutionWidthOracle(space, max_trials=5, population_size=4, seed=3), _toy_score,
                       directory=str(tmp_path), project_name="evo")
    first.search(verbose=0)
    assert first.queries() == 5
    ids_before = list(first.oracle.start_order)
    files = {i: open(tmp_path / "evo" / f"trial_{i}" / "trial.json").read() for i in ids_before}

    second = WidthTuner(EvolutionWidthOracle(space, max_trials=10, population_size=4, seed=3), _toy_score,
                        directory=str(tmp_path), project_name="evo", overwrite=False)
    assert second.queries() == 5  # reloaded, not started over
    second.search(verbose=0)
    assert second.queries() == 10
    order = second.oracle.start_order
    assert order[:5] == ids_before and len(order) == 10
    widths = [tuple(r["widths"]) for r in second.history()]
    assert len(set(widths)) == 10, "a resumed search repeated a trial"
    for i in ids_before:  # earlier trials untouched
        assert json.loads(open(tmp_path / "evo" / f"trial_{i}" / "trial.json").read())["score"] == \
            json.loads(files[i])["score"]
    # Same proposals as an uninterrupted run with the same seed.
    straight = WidthTuner(EvolutionWidthOracle(space, max_trials=10, population_size=4, seed=3), _toy_score,
                          directory=str(tmp_path), project_name="straight")
    straight.search(verbose=0)
    assert [tuple(r["widths"]) for r in straight.history()] == widths


def test_seed_zero_is_reproducible(tmp_path):
    space = _toy_space()
    runs = [run_width_search(space, _toy_score, "evolution", max_trials=12, directory=str(tmp_path),
                             project_name=f"run{i}", seed=0, population_size=4) for i in range(2)]
    assert [r["widths"] for r in runs[0].history()] == [r["widths"] for r in runs[1].history()]
    with pytest.raises(WidthSearchError, match="non-negative"):
        RandomWidthOracle(space, max_trials=3, seed=-1)


def test_random_oracle_stays_within_budget(tmp_path):
    space = _toy_space(budget=1.5)
    tuner = WidthTuner(RandomWidthOracle(space, max_trials=20, seed=0), _toy_score, directory=str(tmp_path),
                       project_name="rnd")
    tuner.search(verbose=0)
    assert tuner.queries() == 20
    assert all(r["cost"] <= 1.5 for r in tuner.history())


def _search(bench, method, seed, budget, queries, directory):
    space = WidthSpace(LAYER_NAMES, GRID, cost=bench.flops, budget=budget)
    tuner = run_width_search(space, bench.accuracy, method, max_trials=queries, directory=directory, seed=seed)
    widths = tuner.best_widths()
    assert tuner.queries() == queries
    assert bench.flops(widths) <= budget
    return bench.accuracy(widths), bench.rank(widths, budget)


@pytest.mark.slow
def test_evolution_beats_random_search_on_the_benchmark(bench, tmp_path):
    budget, queries, seeds = bench.median_flops(), 100, range(10)
    evo = [_search(bench, "evolution", s, budget, queries, str(tmp_path)) for s in seeds]
    rnd = [_search(bench, "random", s, budget, queries, str(tmp_path)) for s in seeds]
    evo_acc, rnd_acc = np.mean([a for a, _ in evo]), np.mean([a for a, _ in rnd])
    print(f"\nChannel-Bench-Macro, budget {budget / 1e6:.1f} MFLOPs, {queries} queries, 10 seeds: "
          f"evolution {evo_acc:.3f}% (mean rank {np.mean([r for _, r in evo]):.1f}), "
          f"random {rnd_acc:.3f}% (mean rank {np.mean([r for _, r in rnd]):.1f}), "
          f"best {bench.accuracy(bench.best(budget)):.3f}%")
    assert evo_acc > rnd_acc
    assert np.mean([r for _, r in evo]) < np.mean([r for _, r in rnd])


# The first call starts beside the in-process tests (conftest.BackgroundRun); it finds the table as `bench` does.
CLI_RUN = BackgroundRun(__name__, "cli_run", "width-bench", lambda folder: [
    sys.executable, "-m", "tfbnas.width", "--method=bcnet", "--benchmark=channel_bench_macro_mobilenet",
    "--max_trials=30", f"--output_dir={folder / 'run'}"])


@pytest.fixture(scope="module")
def cli_run():
    result, folder = CLI_RUN.result()
    return result, folder / "run"


@pytest.mark.slow
def test_cli_benchmark_mode_writes_widths_table_and_model(bench, cli_run):
    proc, out = cli_run
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, CHANNEL_BENCH_ENV: bench.path}
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.load(open(out / "widths.json"))
    widths = tuple(row["multiplier"] for row in summary["widths"])
    assert summary["queries"] == 30
    assert summary["true_accuracy"] == pytest.approx(bench.accuracy(widths))
    assert summary["rank_under_budget"] == bench.rank(widths, bench.median_flops())
    assert "| stage1 | macro width | 128 |" in open(out / "widths.md").read()
    assert (out / "pruned.keras").exists() and (out / "search").is_dir()
    # Same folder again: keras-tuner reloads the finished project instead of searching anew.
    again = subprocess.run(proc.args, capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert again.returncode == 0 and "Reloading Tuner" in again.stdout + again.stderr
    assert json.load(open(out / "widths.json"))["found"] == summary["found"]


NO_METHOD_RUN = BackgroundRun(__name__, "no_method_run", "width-no-method",
                              lambda folder: [sys.executable, "-m", "tfbnas.width", f"--output_dir={folder}"])


@pytest.fixture
def no_method_run():
    return NO_METHOD_RUN.result()[0]


def test_cli_rejects_missing_method(no_method_run):
    proc = no_method_run
    assert proc.returncode == 2 and "--method" in proc.stderr
