"""``--distribute`` end to end: two ``MultiWorkerMirroredStrategy`` workers on 127.0.0.1 for the search
and for the Child training, a lost worker and the resume of both, ``mirrored`` with the dcp strategy,
and one-line ``TF_CONFIG`` errors.

Every multi-worker run is two real processes, each with its own ``TF_CONFIG`` (ports chosen free at
test time); nothing of TensorFlow is mocked. Worker 1 gets its own ``--output_dir`` and ``TMPDIR``, so
"only the chief writes" is checked by both staying empty. Independent runs start together and the
sizes are the smallest that still search or train (C=4, 3 cells, 1 node, batches of 8 or 16, 2 steps
per epoch): most of each run is TensorFlow starting and tracing the step, so the search's two workers
are started once for both search tests: they lose worker 1 in epoch 2 and resume (no separate
uninterrupted two-worker run). Measured in a full `make test` (two xdist workers on 2 cores, the other
worker busy) while that was still a separate run: the search fixture 163 s, the lost worker 251 s,
training 119 s, mirrored dcp 192 s; all four tests are marked slow.

Two workers against one process, same global batch: each worker takes its half of every global batch
(TensorFlow's DATA auto-sharding after the rebatch), gradients and BatchNorm statistics are averaged
over both, and the seed gives both workers the single process's initial weights, so a step computes
what one device computes on the whole batch, up to float summation order (a mean of two half-batch
means instead of one mean, a ring all-reduce). Those differences (~1e-7 relative) can flip the sign of a
latent binary weight that sits near 0, so the runs are equal up to a tolerance, not bit for bit: the
genotypes must be equal and the architecture probabilities within 25% of how far the search moved them
(measured: see the asserts' comments).
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
ENV.update(PYTHONPATH=REPO, PYTHONUNBUFFERED="1")  # the worktree's tfbnas in every child process
TIMEOUT = 1800

# darts (no Parent) keeps the traced step small; a weight-only first epoch makes epoch 2 retrace the step,
# which leaves seconds between the chief's first checkpoint and the first step that needs both workers.
SEARCH = ["--flagfile=configs/smoke.flags", "--strategy=darts", "--init_channels=4", "--nodes=1",
          "--train_examples=64", "--batch_size=8", "--search_epochs=2", "--search_steps_per_epoch=2",
          "--arch_frozen_epochs=1", "--arch_lr=0.05"]
TRAIN = ["--train_examples=128", "--test_examples=64", "--batch_size=16", "--parent_epochs=1", "--epochs=1",
         "--steps_per_epoch=2", "--val_fraction=0.125"]
ARTEFACTS = ("flags.json", "genotype.json", "alphas.csv", "search_history.csv", "search_summary.json",
             "cell_normal.png", "checkpoints/checkpoint")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(module, args, log, tf_config=None, tmpdir=None):
    """``python -m module args`` with stdout/stderr in ``log``.out/.err (files, not pipes: a worker blocked on
    a full pipe would stall the other worker in its next collective)."""
    env = dict(ENV)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if tmpdir is not None:
        os.makedirs(tmpdir, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", module] + args, cwd=REPO, env=env, stdout=out, stderr=err)
    proc.log = log
    return proc


def start_workers(module, args_per_worker, tmp):
    """One process per worker, worker i with ``args_per_worker[i]``, its own TMPDIR ``tmp/tmp<i>`` and its
    output in ``tmp/worker<i>.out/.err``."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(len(args_per_worker))]}
    return [start(module, args, tmp / f"worker{i}", {"cluster": cluster, "task": {"type": "worker", "index": i}},
                  tmp / f"tmp{i}") for i, args in enumerate(args_per_worker)]


def finish(procs):
    """Waits for every process (killing them all after TIMEOUT); ``(returncode, stdout, stderr)`` per process."""
    deadline = time.time() + TIMEOUT
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            proc.wait()
    return [(proc.wait(), open(f"{proc.log}.out").read(), open(f"{proc.log}.err").read()) for proc in procs]


def ok(result):
    code, _, stderr = result
    assert code == 0, stderr[-3000:]


def summary(run_dir):
    return json.loads((run_dir / "search_summary.json").read_text())


def history(run_dir, key):
    """One column of a search's ``search_history.csv``, one value per epoch."""
    with open(run_dir / "search_history.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def assert_same_search(a, b, share=0.25):
    """Same genotype; architecture probabilities within ``share`` of how far the search moved them."""
    assert a["genotype"] == b["genotype"]
    for cell in ("normal", "reduce"):
        pa, pb = np.array(a["arch_probabilities"][cell]), np.array(b["arch_probabilities"][cell])
        moved = np.abs(pa - 1 / pa.shape[1]).max()
        assert moved > 1e-3, "the search did not move the architecture: nothing to compare"
        assert np.abs(pa - pb).max() < share * moved, (np.abs(pa - pb).max(), moved)


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """One process beside two workers on the same flags. Worker 1 is killed once the chief has checkpointed
    epoch 1: the chief stops at its next collective; then both are restarted with ``--resume`` and finish
    the search. (An uninterrupted two-worker run besides would cost two more processes: the resumed run is
    compared with the single process, which the uninterrupted one matched to 1e-5 of the movement.)

    No race: epoch 2 cannot finish without worker 1, so the chief cannot complete once it is killed.
    """
    tmp = tmp_path_factory.mktemp("searches")
    out = tmp / "chief"
    single = start("tfbnas.search", SEARCH + [f"--output_dir={tmp / 'single'}"], tmp / "single")
    chief, worker = start_workers("tfbnas.search", [SEARCH + ["--distribute=multiworker", f"--output_dir={tmp / d}"]
                                                    for d in ("chief", "worker1")], tmp)
    state = out / "checkpoints" / "checkpoint"
    deadline = time.time() + TIMEOUT
    while not (state.exists() and "ckpt-1" in state.read_text()) and chief.poll() is None and \
            time.time() < deadline:
        time.sleep(0.1)
    assert chief.poll() is None, open(f"{chief.log}.err").read()[-3000:]
    worker.send_signal(signal.SIGKILL)
    stopped = finish([chief, worker])[0]
    finished_before_resume = (out / "search_summary.json").exists()
    resumed = finish(start_workers("tfbnas.search", [[f"--resume={out}"]] * 2, tmp / "again"))
    return tmp, finish([single])[0], stopped, finished_before_resume, resumed


@pytest.mark.slow
def test_two_worker_search_matches_one_process(searches):
    tmp, single, _, _, (chief, worker) = searches
    for result in (single, chief, worker):
        ok(result)
    for name in ARTEFACTS:
        assert (tmp / "chief" / name).exists(), name
    assert any((tmp / "chief" / "tensorboard").rglob("events.out.tfevents*"))
    # worker 1 wrote nothing: not its --output_dir, and its temporary folder is gone
    assert not (tmp / "worker1").exists() and not list((tmp / "again" / "tmp1").iterdir())
    assert "written by the chief" in worker[1] and f"run folder: {tmp / 'chief'}" in chief[1]
    a, b = summary(tmp / "single"), summary(tmp / "chief")
    assert (a["replicas"], b["replicas"]) == (1, 2)
    # measured: max |p_single - p_workers| 1.5e-7 with the probabilities moved by 0.015 (and 2e-4 of 4e-3
    # in a run of 2 architecture epochs without the warm-up: binary weights that flipped in epoch 2)
    assert_same_search(a, b)
    assert history(tmp / "chief", "temperature") == [1.0, 1.0]  # logs are means over the workers, not sums


@pytest.mark.slow
def test_a_lost_worker_stops_the_chief_in_one_line_and_both_resume(searches):
    """Worker 1 was killed once the chief had checkpointed epoch 1 (the ``searches`` fixture): the chief
    stopped at its next collective (exit 1, one line naming ``--resume``); both restarted with ``--resume``
    continue from the chief's checkpoint (worker 1 restores a copy of it) and end where one process ends."""
    tmp, _, (code, _, stderr), finished_before_resume, resumed = searches
    out = tmp / "chief"
    assert code == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("tfbnas.search: error: another worker stopped") and f"--resume={out}" in last, last
    assert not finished_before_resume
    for result in resumed:
        ok(result)
    assert "continuing at epoch 2" in resumed[0][1] and "continuing at epoch 2" in resumed[1][1]
    assert not list((tmp / "again" / "tmp1").iterdir())
    assert len((out / "search_history.csv").read_text().splitlines()) == 3  # epoch rows not duplicated
    # where an uninterrupted two-worker run ends: it ended within 1.5e-7 of the single process (probabilities
    # moved by 0.015), and the resumed run equal to it to the last bit; measured: resumed vs single 1.5e-7.
    # (A binary weight flipped by float order would show here as a few % of the movement: then compare
    # with an uninterrupted two-worker run again.)
    assert_same_search(summary(tmp / "single"), summary(out), share=0.01)


@pytest.fixture(scope="module")
def genotype_path(tmp_path_factory):
    """A search-run folder as ``python -m tfbnas.search`` leaves it: genotype.json + flags.json."""
    from tfbnas.space.genotype import Genotype

    folder = tmp_path_factory.mktemp("genotype")
    Genotype("dcp", 1, [("sep_conv_3x3", 0), ("skip_connect", 1)],
             [("max_pool_3x3", 0), ("dil_conv_3x3", 1)]).save(str(folder / "genotype.json"))
    (folder / "flags.json").write_text(json.dumps({"preset": "dcp", "init_channels": 4, "num_cells": 3, "nodes": 1}))
    return str(folder / "genotype.json")


@pytest.mark.slow
def test_two_worker_training_matches_one_process(genotype_path, tmp_path):
    """Parent phase (compiled loss) and distilled Child phase on two workers against one process. The
    Child is binary: a latent weight near 0 whose sign flips with float order changes its outputs, so
    the trained weights are compared with a tolerance and the test accuracy is compared loosely."""
    args = [f"--genotype={genotype_path}"] + TRAIN
    single = start("tfbnas.train", args + [f"--output_dir={tmp_path / 'single'}"], tmp_path / "single")
    workers = start_workers("tfbnas.train", [args + ["--distribute=multiworker", f"--output_dir={tmp_path / d}"]
                                             for d in ("chief", "worker1")], tmp_path)
    results = finish([single] + workers)
    for result in results:
        ok(result)
    for name in ("child.keras", "parent.keras", "metrics.json", "history.csv", "curves.png", "cost.md"):
        assert (tmp_path / "chief" / name).exists(), name
    assert not (tmp_path / "worker1").exists() and not list((tmp_path / "tmp1").iterdir())

    import tensorflow as tf  # after tfbnas (conftest), which registers the Child's layers for load_model

    from tfbnas.config import DEFAULT_LR

    lr, steps = DEFAULT_LR["adam"], 2  # TRAIN: 2 steps per phase at Adam's default learning rate
    for name in ("parent.keras", "child.keras"):
        model = tf.keras.models.load_model(tmp_path / "single" / name, compile=False)
        a = model.get_weights()
        b = tf.keras.models.load_model(tmp_path / "chief" / name, compile=False).get_weights()
        assert [x.shape for x in a] == [y.shape for y in b]
        # Moving variances differ by the Bessel factor n / (n - 1): the fused BatchNorm of one device corrects
        # the batch variance it averages in, the synchronised BatchNorm of two workers does not; the smallest
        # n is 16 x 7 x 7 (the second reduction cell's dilated conv), 1.3e-3 (measured 1.25e-3).
        # Everything else: Adam's first steps move each weight by about +-lr whatever its gradient's size, so
        # a weight whose gradient is float-order noise can land 2 lr apart per step on two workers (measured:
        # 18 of the Parent's 4026 weights, up to 3.9e-3, none of the Child's; all others within the tight
        # tolerance). A worker that missed the other's gradients or statistics would move most weights.
        tight, total = 0, 0
        for weight, x, y in zip(model.weights, a, b):
            rtol = 2e-3 if "moving_variance" in weight.name else 1e-3
            np.testing.assert_allclose(x, y, rtol=rtol, atol=2 * lr * steps, err_msg=f"{name} {weight.name}")
            tight += int(np.isclose(y, x, rtol=rtol, atol=1e-4).sum())
            total += x.size
        assert tight >= 0.97 * total, (name, tight, total)
    m_single, m_chief = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "chief"))
    assert m_single["sizes"] == m_chief["sizes"]
    assert abs(m_single["test_top1"] - m_chief["test_top1"]) <= 0.05
    # per-epoch training and validation metrics: of the global batch, not summed over the workers (which would
    # double them); the Parent's few noise-moved weights shift them by up to 2.6e-3 (measured)
    single_rows, chief_rows = (list(csv.DictReader(open(tmp_path / d / "history.csv"))) for d in ("single", "chief"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5"):
        np.testing.assert_allclose([float(r[key]) for r in chief_rows], [float(r[key]) for r in single_rows],
                                   rtol=1e-2, err_msg=key)


DCP = ["--flagfile=configs/smoke.flags", "--init_channels=4", "--nodes=1", "--train_examples=128",
       "--batch_size=16", "--search_epochs=2", "--search_steps_per_epoch=2", "--arch_lr=0.05"]


@pytest.mark.slow
def test_mirrored_dcp_matches_default(tmp_path):
    """The dcp strategy (Parent, tangent term, decoupled backtracking through merge_call assignments) on
    two logical CPUs gives the genotype of one device."""
    procs = [start("tfbnas.search", DCP + [f"--output_dir={tmp_path / 'default'}"], tmp_path / "default"),
             start("tfbnas.search", DCP + [f"--output_dir={tmp_path / 'mirrored'}", "--distribute=mirrored",
                                           "--cpu_devices=2"], tmp_path / "mirrored")]
    for result in finish(procs):
        ok(result)
    a, b = summary(tmp_path / "default"), summary(tmp_path / "mirrored")
    assert (a["replicas"], b["replicas"]) == (1, 2)
    # measured: max |p_default - p_mirrored| 3.3e-4 with the probabilities moved by 0.042
    assert_same_search(a, b)
    assert history(tmp_path / "mirrored", "temperature") == [1.0, 1.0]  # means over replicas, not sums
    np.testing.assert_allclose(history(tmp_path / "mirrored", "psi_mean"), history(tmp_path / "default", "psi_mean"),
                               rtol=1e-3)


# ------------------------------------------------------------------------------------ TF_CONFIG errors

GOOD = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("tf_config, expected", [
    (None, "needs TF_CONFIG"),
    ("", "needs TF_CONFIG"),
    ("{cluster: 1}", "TF_CONFIG is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"task": GOOD["task"]}, "has no 'cluster'"),
    ({"cluster": GOOD["cluster"]}, "has no 'task'"),
    ({**GOOD, "task": {"type": "worker", "index": 2}}, "task index 2 is out of range"),
    ({**GOOD, "task": {"type": "worker", "index": -1}}, "task index -1 is out of range"),
    ({**GOOD, "task": {"type": "chief", "index": 0}}, "task type 'chief' is not a job of its cluster"),
    ({**GOOD, "cluster": {**GOOD["cluster"], "ps": ["127.0.0.1:2224"]}}, "cluster job 'ps' is not one"),
    ({**GOOD, "cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}, "'host:port'"),
    ({**GOOD, "cluster": {"worker": GOOD["cluster"]["worker"], "chief": ["a:1", "b:1"]}}, "2 chiefs"),
])
def test_a_bad_tf_config_is_one_config_error(tf_config, expected, monkeypatch):
    from tfbnas.errors import ConfigError
    from tfbnas.search.distribute import check_tf_config, make_distribution

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str) else json.dumps(tf_config))
    with pytest.raises(ConfigError) as error:
        make_distribution("multiworker")  # checks before creating anything
    message = str(error.value)
    assert expected in message and "\n" not in message and error.value.exit_code == 2
    assert check_tf_config(json.dumps(GOOD)) == GOOD


def test_the_chief_is_task_chief_or_else_worker_0():
    from tfbnas.search.distribute import is_chief

    workers = ["127.0.0.1:2222", "127.0.0.1:2223"]
    assert is_chief(None)
    assert is_chief({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})
    assert not is_chief({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}})
    with_chief = {"chief": ["127.0.0.1:2221"], "worker": workers}
    assert is_chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})
    assert not is_chief({"cluster": with_chief, "task": {"type": "worker", "index": 0}})


def test_the_search_entry_point_reports_a_bad_tf_config_in_one_line(monkeypatch, capsys, tmp_path):
    """In process: ``tfbnas.flags.run`` with the search's main, before any run folder or TensorFlow work."""
    from absl.testing import flagsaver

    from tfbnas import flags as tflags
    from tfbnas.search import __main__ as search_main

    monkeypatch.setenv("TF_CONFIG", json.dumps({**GOOD, "task": {"type": "worker", "index": 5}}))
    monkeypatch.setattr(sys, "argv", ["tfbnas.search", "--distribute=multiworker", f"--output_dir={tmp_path / 'r'}",
                                      "--resume="])
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_:
        tflags.run(search_main.main, prog="tfbnas.search")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("tfbnas.search: error: TF_CONFIG task index 5 is out of range")
    assert not (tmp_path / "r").exists()


def test_the_train_entry_point_reports_a_missing_tf_config_in_one_line(genotype_path, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tfbnas.train", f"--genotype={genotype_path}",
                             "--distribute=multiworker", f"--output_dir={tmp_path / 'r'}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("tfbnas.train") or "Traceback" in line]
    assert len(ours) == 1 and "needs TF_CONFIG" in ours[0] and "docs/distributed.md" in ours[0]
    assert not (tmp_path / "r").exists()
