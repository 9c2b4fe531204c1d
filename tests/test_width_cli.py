"""``python -m tfbnas.width`` for BCNet: the search choice, flag errors, and the final-training protocol."""

import json
import sys

import pytest

from conftest import BackgroundRun
from tfbnas.width.channel_bench import MAX_WIDTHS, macro_channels

WIDTH = [sys.executable, "-m", "tfbnas.width", "--method=bcnet"]

# Every program of this file runs beside the in-process tests (conftest.BackgroundRun).
SCRATCH_RUN = BackgroundRun(__name__, "scratch_run", "width-bcnet-scratch", lambda folder: WIDTH + [
    "--train_examples=500", "--test_examples=100", "--eval_examples=100", "--recalibrate_examples=100",
    "--supernet_epochs=0", "--max_trials=2", "--final_training=scratch", "--finetune_epochs=1",
    f"--output_dir={folder / 'run'}"])


@pytest.fixture(scope="module")
def scratch_run():
    result, folder = SCRATCH_RUN.result()
    return result, folder / "run"


SEARCHES = [("surrogate", 20), (None, 5)]
for _search, _trials in SEARCHES:
    BackgroundRun(__name__, "search_run", f"width-bench-{_search}", lambda folder, s=_search, t=_trials: WIDTH + [
        "--benchmark=channel_bench_macro_mobilenet", f"--max_trials={t}", f"--output_dir={folder / 'run'}"] + (
        [f"--search={s}"] if s else []), param=f"{_search}-{_trials}")


@pytest.fixture
def search_run(request):
    result, folder = BackgroundRun.for_test(request)
    return result, folder / "run"


@pytest.mark.slow
@pytest.mark.parametrize("search, trials", SEARCHES)
def test_benchmark_search_writes_the_found_widths(bench, search, trials, search_run):
    result, out = search_run
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "widths.json").read_text())
    assert summary["search"] == "surrogate"  # also the default
    assert summary["queries"] == trials and summary["layer_prior"] == "none"
    widths = bench.widths(summary["found"])
    assert summary["true_accuracy"] == pytest.approx(bench.accuracy(widths))
    assert summary["flops"] <= summary["budget_flops"]
    assert [r["after"] for r in summary["widths"]] == list(macro_channels(widths, MAX_WIDTHS))
    assert [r["multiplier"] for r in summary["widths"]] == list(widths)
    assert (out / "search" / "surrogate_seed0" / "oracle.json").exists()


BAD_FLAGS = {
    "population_size": (["--benchmark=channel_bench_macro_mobilenet", "--population_size=8"], "--search=evolution"),
    "initial_population": (["--search=random", "--initial_population=uniform"], "--search=evolution"),
    "finetune_epochs": (["--final_training=scratch", "--finetune_epochs=0"], "--finetune_epochs"),  # needs epochs
}
for _case, (_args, _) in BAD_FLAGS.items():
    BackgroundRun(__name__, "bad_flags_run", f"width-{_case}",
                  lambda folder, a=_args: WIDTH + a + [f"--output_dir={folder / 'run'}"], param=_case)


@pytest.fixture
def bad_flags_run(request):
    result, folder = BackgroundRun.for_test(request)
    return result, folder / "run"


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_bcnet_flags_give_one_error_line_before_any_work(case, bad_flags_run):
    result, out = bad_flags_run
    expected = BAD_FLAGS[case][1]
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower() and expected in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert not out.exists()


@pytest.mark.slow
def test_bcnet_trains_the_found_widths_from_scratch(scratch_run):
    import tensorflow as tf

    result, out = scratch_run
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "widths.json").read_text())
    assert summary["final_training"] == "scratch" and summary["final_epochs"] == 1
    assert summary["recalibrate_examples"] == 100 and summary["search"] == "surrogate"
    assert 0.0 <= summary["test_accuracy_scratch"] <= 1.0 and "test_accuracy_finetuned" not in summary
    model = tf.keras.models.load_model(str(out / "pruned.keras"), compile=False)
    assert model.get_layer("head").filters == summary["widths"][-1]["after"]
