"""``python -m tfbnas.search`` end to end: the smoke run's artefacts, resume after a kill, and one-line
errors (``--distribute``: tests/test_distributed.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from conftest import REPO, BackgroundRun
from tfbnas import flags as tflags
from tfbnas.errors import RunDirError
from tfbnas.models import build_child
from tfbnas.space.genotype import Genotype
from tfbnas.space.ops import binary_conv_layers

SEARCH = [sys.executable, "-m", "tfbnas.search"]
# The smoke search with one node per cell (half the traced step of two nodes); 8 steps per epoch leave
# time to kill the run inside epoch 2.
SMOKE = ["--flagfile=configs/smoke.flags", "--nodes=1"]
# The tiny DARTS search of the non-finite-loss test.
TINY = ["--flagfile=configs/smoke.flags", "--strategy=darts", "--init_channels=4", "--nodes=1",
        "--train_examples=128", "--batch_size=16", "--search_epochs=2"]

# Runs the tests only read once they have ended: they start beside the in-process tests (conftest.BackgroundRun).
SMOKE_RUN = BackgroundRun(__name__, "smoke_run", "search-smoke", lambda folder: SEARCH + SMOKE + [
    f"--output_dir={folder / 'run'}"])
NAN_RUN = BackgroundRun(__name__, "nan_run", "search-nan", lambda folder: SEARCH + TINY + [
    f"--output_dir={folder / 'run'}", "--arch_lr=inf"])
BAD_FLAG_RUN = BackgroundRun(__name__, "bad_flag_run", "search-bad-flag",
                             lambda _: SEARCH + ["--flagfile=configs/smoke.flags", "--dcp_tau=1.5"])
INDIVISIBLE_RUN = BackgroundRun(__name__, "indivisible_run", "search-indivisible", lambda folder: SEARCH + [
    "--flagfile=configs/smoke.flags", f"--output_dir={folder / 'r'}", "--batch_size=30", "--dcp_ggn",
    "--dcp_ggn_samples=4"])


def run(args, timeout=1800):
    return subprocess.run(SEARCH + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def summary(run_dir):
    with open(os.path.join(run_dir, "search_summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smoke_run():
    result, folder = SMOKE_RUN.result()
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", result


@pytest.fixture(scope="module")
def nan_run():
    result, folder = NAN_RUN.result()
    return result, folder / "run"


@pytest.fixture
def bad_flag_run():
    return BAD_FLAG_RUN.result()[0]


@pytest.fixture
def indivisible_run():
    return INDIVISIBLE_RUN.result()[0]


@pytest.mark.slow
def test_smoke_search_writes_every_artefact(smoke_run):
    out, result = smoke_run
    for name in ("flags.txt", "flags.json", "genotype.json", "alphas.csv", "alphas.png", "search_history.csv",
                 "cell_normal.png", "cell_reduce.png", "cell_normal.svg", "search_summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoints" / "checkpoint").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").rglob("*"))
    assert "genotype (dcp" in result.stdout and "normal cell" in result.stdout
    margins = summary(out)["edge_margins"]  # one row per kept edge, the genotype's op first
    genotype = summary(out)["genotype"]
    assert [[r["op"], r["source"]] for r in margins["normal"]] == [list(e) for e in genotype["normal"]]
    assert all(0.0 <= r["margin"] <= r["p"] <= 1.0 for cell in ("normal", "reduce") for r in margins[cell])
    history = (out / "search_history.csv").read_text().splitlines()
    assert len(history) == 3 and "param_free_ops" in history[0] and "tangent" in history[0]
    alphas = (out / "alphas.csv").read_text().splitlines()
    assert len(alphas) == 1 + 2 * 2 * 2  # header + epochs x cell types x edges (1 node: 2 edges)
    assert "parameter-free ops" in result.stdout  # logged each epoch
    # The derived Child and its Parent twin holding the supernets' weights of the kept ops (--init_from_search):
    # the genotype's network (its weight shapes) with trained BatchNorm statistics, binary and real-valued.
    assert summary(out)["inherited_models"] == ["inherited_child.keras", "inherited_parent.keras"]
    fresh = build_child(Genotype.from_dict(genotype), init_channels=8, num_cells=3)
    for name, binary in (("inherited_child.keras", True), ("inherited_parent.keras", False)):
        model = tf.keras.models.load_model(out / name, compile=False)
        assert [w.shape for w in model.get_weights()] == [w.shape for w in fresh.get_weights()]
        assert bool(binary_conv_layers(model)) == binary
        means = [w for w in model.weights if "moving_mean" in w.name]
        assert means and all(np.abs(w.numpy()).max() > 0 for w in means)  # fresh BatchNorms hold zeros
    flags_txt = (out / "flags.txt").read_text()  # the flagfile's flags and the command line's
    assert "--strategy=dcp" in flags_txt and "--init_channels=8" in flags_txt and "--nodes=1" in flags_txt


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_uninterrupted_search(smoke_run, tmp_path):
    reference, _ = smoke_run
    out = tmp_path / "killed"
    proc = subprocess.Popen(SEARCH + SMOKE + [f"--output_dir={out}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The manager writes its state file after the checkpoint's files: once it names ckpt-1, epoch 1 is
    # saved whole (the records are written before it) and the run is in epoch 2.
    state = out / "checkpoints" / "checkpoint"
    deadline = time.time() + 1800
    while not (state.exists() and "ckpt-1" in state.read_text()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "search_summary.json").exists() and not (out / "checkpoints" / "ckpt-2.index").exists()

    result = run([f"--resume={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at epoch 2" in result.stdout
    assert json.loads((out / "genotype.json").read_text()) == json.loads((reference / "genotype.json").read_text())
    for cell in ("normal", "reduce"):
        np.testing.assert_allclose(summary(out)["arch_probabilities"][cell],
                                   summary(reference)["arch_probabilities"][cell], rtol=0, atol=1e-6)
    assert len((out / "search_history.csv").read_text().splitlines()) == 3  # epoch rows not duplicated


@pytest.mark.parametrize("args, expected", [
    (["--strategy=evolution"], "strategy"),
    (["--search_epochs=0"], "search_epochs"),
    (["--dcp_tau=1.5"], "dcp_tau"),
])
def test_bad_search_flags_one_line(args, expected, parse_flags, capsys):
    # the entry points' flag parser, in this process (the subprocess test below runs it as a program)
    parse_flags()
    with pytest.raises(SystemExit) as exit_:
        tflags._one_line_parser(["__main__.py", "--flagfile=configs/smoke.flags"] + args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "flag error" in lines[0] and expected in lines[0], lines


def test_bad_search_flag_of_the_program_is_one_line(bad_flag_run):
    result = bad_flag_run
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "flag error" in line]
    assert len(lines) == 1 and "dcp_tau" in lines[0]


def test_unwritable_output_dir_and_no_run_to_resume(tmp_path, parse_flags):
    from tfbnas.search import run_search

    blocker = tmp_path / "file"
    blocker.write_text("x")
    parse_flags("--flagfile=configs/smoke.flags", f"--output_dir={blocker}/run")
    with pytest.raises(RunDirError, match="cannot write the run folder"):
        run_search.main_from_flags(flags.FLAGS)
    parse_flags(f"--resume={tmp_path / 'nothing'}")
    with pytest.raises(RunDirError, match="no flags.json"):
        run_search.main_from_flags(flags.FLAGS)
    assert RunDirError.exit_code == 1


def test_indivisible_batch_is_one_line_and_exit_2(indivisible_run):
    # raised inside the search (after the runtime set-up), so as a program: the last stderr line, exit 2
    result = indivisible_run
    assert result.returncode == 2 and "--batch_size=30 must divide" in result.stderr.splitlines()[-1]  # a bad value


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_no_checkpoint(nan_run):
    result, out = nan_run
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert "non-finite" in last and "epoch 1, step 1" in last and "--resume=" in last
    assert not (out / "checkpoints" / "checkpoint").exists()


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_clear_error(smoke_run, tmp_path):
    import shutil

    reference, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    for data_file in (copy / "checkpoints").glob("ckpt-*.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:1000])
    result = run([f"--resume={copy}"])
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert "cannot restore" in last and "corrupt" in last
