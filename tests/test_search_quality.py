"""``benchmarks/search_quality.py`` end to end at the smallest size, no mocks: one real search, one
OPs-matched random genotype and the hand-designed ResNet trained with one proxy recipe; the SUMMARY
line, the results files, a resumed call that trains nothing, and a one-line error for a changed config."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, BackgroundRun
from tfbnas.errors import ConfigError

SCRIPT = [sys.executable, os.path.join(REPO, "benchmarks", "search_quality.py")]
# The smoke search (DCP) for one step with one node per cell; the recipe: 1 epoch on 128 images, labels only
# (--distill_alpha=0 skips the Parent phase to keep the test near 3 minutes on 2 cores).
TINY = ["--flagfile=configs/smoke.flags", "--seeds=0", "--random=1", "--proxy_train_examples=128",
        "--proxy_epochs=1", "--proxy_parent_epochs=1", "--search_epochs=1", "--search_steps_per_epoch=1",
        "--nodes=1", "--val_fraction=0", "--distill_alpha=0", "--test_examples=64", "--benchmark_runs=2",
        "--ops_tolerance=0.5"]
SUMMARY = re.compile(r"^SUMMARY search-quality: searched mean 0\.\d{4} min 0\.\d{4} \(n=1\); random mean 0\.\d{4} "
                     r"best 0\.\d{4} \(n=1\); hand-designed 0\.\d{4}; searched beats random mean on [01]/1 seeds$")
TRAINING = re.compile(r"^\[\d+/\d+\] training ", re.M)


def rows(results, name="results.jsonl"):
    with open(results / name) as f:
        return [json.loads(line) for line in f]


# The calls start beside the in-process tests (conftest.BackgroundRun); the later ones once the first has ended.
FIRST = BackgroundRun(__name__, "first", "search-quality", lambda folder: SCRIPT + TINY + [
    f"--results_dir={folder / 'results'}"])


def _second_call(folder):
    results = FIRST.folder / "results"
    shutil.copy(results / "results.jsonl", folder / "rows_before.jsonl")  # the rows before the second call
    return SCRIPT + TINY + [f"--results_dir={results}"]


SECOND = BackgroundRun(__name__, "second", "search-quality-again", _second_call, after=FIRST)
CHANGED = BackgroundRun(__name__, "changed", "search-quality-changed", lambda _: SCRIPT + TINY + [
    "--random_seed=7", f"--results_dir={FIRST.folder / 'results'}"], after=FIRST)


@pytest.fixture(scope="module")
def first():
    result, folder = FIRST.result()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return folder / "results", result


@pytest.mark.slow
def test_full_comparison_at_tiny_size(first):
    results, result = first
    assert SUMMARY.match(result.stdout.strip().splitlines()[-1]), result.stdout[-1000:]
    assert result.stdout.startswith("recipe (all models): train_examples=")
    assert len(TRAINING.findall(result.stdout)) == 3
    table = rows(results)
    assert [(r["name"], r["group"], r["seed"]) for r in table] == [
        ("searched-seed0", "searched", 0), ("random0", "random", None), ("hand-designed", "hand-designed", None)]
    for r in table:
        assert 0.0 <= r["top1"] <= 1.0 and r["ops"] > 0 and r["size_kib"] > 0 and r["latency_ms"] > 0, r
    assert (results / "search_seed0" / "search_summary.json").exists()
    assert (results / "random0.json").exists() and (results / "config.json").exists()
    report = json.loads((results / "search_quality.json").read_text())
    recipe = report["recipe"]
    assert (recipe["train_examples"], recipe["epochs"], recipe["parent_epochs"]) == (128, 1, 0)
    assert recipe["proxy"] == {"proxy_train_examples": 128, "proxy_epochs": 1, "proxy_parent_epochs": 1}
    assert report["summary"]["n_searched"] == 1 and report["summary"]["n_random"] == 1
    assert report["summary"]["line"] == result.stdout.strip().splitlines()[-1]
    markdown = (results / "search_quality.md").read_text()
    assert "| searched | 1 |" in markdown and "verdict: " in markdown


@pytest.fixture(scope="module")
def second():
    return SECOND.result()


@pytest.fixture(scope="module")
def changed():
    return CHANGED.result()[0]


@pytest.mark.slow
def test_second_call_trains_nothing(first, second):
    results, result = first
    again, folder = second
    before = rows(folder, "rows_before.jsonl")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not TRAINING.search(again.stdout), again.stdout
    assert "search seed 0: finished earlier" in again.stdout
    assert rows(results) == before
    assert again.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_changed_config_on_resume_is_one_line_exit_2(first, changed):
    assert changed.returncode == 2, changed.stderr[-3000:]
    errors = [line for line in changed.stderr.splitlines() if line.startswith("search_quality.py:")]
    assert errors == [changed.stderr.strip().splitlines()[-1]]  # one line, the last (TensorFlow logs before it)
    assert errors[0].startswith("search_quality.py: error: --random_seed=7 differs from --random_seed=1234"), errors
    assert not TRAINING.search(changed.stdout)


ABLATION = [sys.executable, os.path.join(REPO, "benchmarks", "dcp_ablation.py")]
ABLATION_SUMMARY = re.compile(r"^SUMMARY dcp-ablation: reference 0\.\d{4}; retrain 0\.\d{4} \([+-]0\.\d{4}\); "
                              r"nodcp_tangent 0\.\d{4} \([+-]0\.\d{4}\); random mean 0\.\d{4}$")


def ablate(args, timeout=1800):
    return subprocess.run(ABLATION + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _ablation_args(folder):
    return [f"--reference={FIRST.folder / 'results'}", "--variants=retrain,nodcp_tangent",
            f"--ablation_dir={folder / 'ablation'}"]


ABLATION_RUN = BackgroundRun(__name__, "ablation_run", "dcp-ablation",
                             lambda folder: ABLATION + _ablation_args(folder), after=FIRST)


@pytest.fixture(scope="module")
def ablation_run():
    return ABLATION_RUN.result()


@pytest.mark.slow
def test_ablation_searches_each_variant_with_the_reference_recipe(first, ablation_run):
    results, _ = first
    result, folder = ablation_run
    args, out = _ablation_args(folder), folder / "ablation"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert ABLATION_SUMMARY.match(result.stdout.strip().splitlines()[-1]), result.stdout[-1000:]
    table = rows(out)
    assert [(r["name"], r["group"]) for r in table] == [("retrain-seed0", "retrain"),
                                                        ("nodcp_tangent-seed0", "nodcp_tangent")]
    reference = {r["name"]: r for r in rows(results)}
    assert table[0]["genotype"] == reference["searched-seed0"]["genotype"]  # retrain: the reference's genotype
    searched = out / "nodcp_tangent" / "search_seed0"
    flags_used = json.loads((searched / "flags.json").read_text())
    assert flags_used["dcp_tangent"] is False and flags_used["search_steps_per_epoch"] == 1  # the reference's rest
    assert "| nodcp_tangent | --dcp_tangent=false |" in (out / "dcp_ablation.md").read_text()
    again = ablate(args)  # resumed: nothing trained or searched again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training its Child" not in again.stdout and "searching in" not in again.stdout, again.stdout
    assert again.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("variant, message", [
    ("dcp_tangnet", "'dcp_tangnet' names no tfbnas flag"),
    ("strategy", "'strategy' needs a value, e.g. strategy=dcp"),
    ("strategy=greedy", "'strategy=greedy': value should be one of"),
])
def test_ablation_bad_variant_fails_before_writing(first, tmp_path, variant, message, parse_flags):
    # the benchmark's main in this process (test_ablation_needs_a_search_quality_reference runs the program:
    # the error as its last stderr line, exit 2)
    ablation = _benchmark_module("dcp_ablation")
    results, _ = first
    parse_flags(f"--reference={results}", f"--variants={variant}", f"--ablation_dir={tmp_path}")
    with pytest.raises(ConfigError) as error:
        ablation.main([])
    assert error.value.exit_code == 2 and str(error.value).startswith("--variants: ") and message in str(error.value)
    assert not (tmp_path / "config.json").exists()


NO_REFERENCE_RUN = BackgroundRun(__name__, "no_reference_run", "ablation-no-reference", lambda folder: ABLATION + [
    f"--reference={folder}", f"--ablation_dir={folder / 'out'}"])


@pytest.fixture
def no_reference_run():
    return NO_REFERENCE_RUN.result()


def test_ablation_needs_a_search_quality_reference(no_reference_run):
    result, folder = no_reference_run
    assert result.returncode == 2, result.stderr[-3000:]
    assert "is not a search-quality run (no config.json)" in result.stderr.strip().splitlines()[-1]
    assert not (folder / "out").exists()


def _benchmark_module(name="search_quality"):
    """A benchmark as the module ``name`` (``search_quality``: the name other benchmarks import it by, so a
    second import in the same test process finds it in ``sys.modules`` instead of defining its flags twice)."""
    benchmarks = os.path.join(REPO, "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)


def test_ops_adjusted_compares_at_equal_ops():
    sq = _benchmark_module()
    line = lambda ops: 0.5 + 0.02 * np.log(ops)  # noqa: E731  (random genotypes: exactly on a line in log OPs)
    figures = {"size_kib": 50.0, "latency_ms": 1.0, "seconds": 10.0, "seed": None}
    rows = [{**figures, "name": f"random{i}", "group": "random", "ops": ops, "top1": line(ops)}
            for i, ops in enumerate((0.5e6, 0.7e6, 1.0e6, 1.4e6))]
    rows += [{**figures, "name": "searched-seed0", "group": "searched", "ops": 1.4e6, "top1": line(1.4e6) - 0.005},
             {**figures, "name": "searched-seed1", "group": "searched", "ops": 0.5e6, "top1": line(0.5e6) + 0.03},
             {**figures, "name": "hand-designed", "group": "hand-designed", "ops": 0.7e6, "top1": line(0.7e6)}]
    summary = sq.summarize(rows)
    # both beat the random mean (0.7727), seed0 by size alone: at its OPs it is below the random line
    assert summary["beats_random_mean"] == 2
    np.testing.assert_allclose([summary["residuals"][n] for n in ("searched-seed0", "searched-seed1",
                                                                  "hand-designed")], [-0.005, 0.03, 0.0], atol=1e-9)
    np.testing.assert_allclose(summary["adjusted_mean"], 0.0125, atol=1e-9)
    np.testing.assert_allclose(summary["points_per_doubling"], 0.02 * np.log(2), atol=1e-9)
    assert "the searched Childs lie +1.25 points above the random line, the hand-designed ResNet +0.00" in \
        summary["verdict"]
    table = sq.markdown(rows, summary, {"proxy": {}})
    assert "| searched-seed0 | searched |  | 0.7780 | 2 of 5 | -0.50 | 1.40 |" in table, table
