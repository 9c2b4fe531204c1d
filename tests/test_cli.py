"""Entry points from the outside: one-line errors for bad input, and the main job on real data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def error_lines(stderr):
    """stderr lines that are ours (TensorFlow prints its own start-up noise)."""
    return [line for line in stderr.splitlines() if "error" in line.lower() and "tfbnas" in line or "run:" in line]


@pytest.mark.parametrize("args, expected", [
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--batch_size=zero"], "batch_size"),
    (["--batch_size=0"], "batch_size"),
    (["--flagfile=configs/does_not_exist.flags"], "does_not_exist.flags"),
])
def test_bad_flags_give_one_line_and_exit_2(args, expected):
    result = run_module("tfbnas.run", *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "flag error" in line]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_unwritable_output_dir_and_missing_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_module("tfbnas.run", f"--output_dir={blocker}/run")
    assert result.returncode == 1
    assert any("cannot write the run folder" in line and "--output_dir" in line for line in result.stderr.splitlines())
    result = run_module("tfbnas.run", "--dataset=cifar10", f"--data_dir={tmp_path}", f"--output_dir={tmp_path}/r")
    assert result.returncode == 1
    assert any("not prepared" in line and "tfds build cifar10" in line for line in result.stderr.splitlines())


def test_main_job_end_to_end_with_interrupt_and_resume(tmp_path):
    """The whole pipeline on real Fashion-MNIST at toy size, width stage included; Ctrl-C during training,
    then --resume; then the width stage again from its own folder (gate scores and training kept)."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tfbnas.run", "--flagfile=configs/smoke.flags", "--search_epochs=1",
            "--search_examples=1024", "--train_examples=2048", "--test_examples=512", "--epochs=2", "--parent_epochs=1",
            "--parity_examples=128", "--benchmark_runs=3", "--width=dnal", "--width_budget=0.6", "--width_epochs=1",
            f"--output_dir={out}"]
    # Ctrl-C as in a terminal: a test runner started in the background (`cmd &`) hands its children an
    # ignored SIGINT, which Python then keeps ignoring; restore the default so the job gets KeyboardInterrupt.
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = out / "train" / "checkpoints"
    deadline = time.time() + 900
    while not (checkpoints.exists() and any(checkpoints.rglob("*.index"))) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "resume with python -m tfbnas.run --resume=" in stderr
    assert ("2048 train = search on a fixed subset of 1024 (--search_examples): 512 search-train + 512 search-val, "
            "512 test") in stdout
    assert (out / "search" / "genotype.json").exists() and not (out / "report.md").exists()

    result = run_module("tfbnas.run", f"--resume={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search: finished earlier, kept" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    child = summary["train"]["child"]
    assert child["top1"] > 0.2  # chance is 0.1 (std 0.013 on 512 images); 2 tiny epochs
    assert summary["deploy"]["agreement"] >= 0.99 and summary["deploy"]["binary_convs"] > 0
    assert all(row["median_ms"] > 0 for row in summary["latency"])
    report = (out / "report.md").read_text()
    assert "train 2048, test 512, search_train (subset) 512, search_val (subset) 512" in report
    for picture in ("search/cell_normal.png", "search/alphas.png", "train/curves.png"):
        assert picture in report and (out / picture).exists()
    kept = summary["search"]["edge_margins"]["normal"][0]  # the margin table names each kept edge's op
    assert f"| normal | 0 | {kept['source']} | `{kept['op']}` | {kept['p']:.3f} |" in report
    assert "Child test top-1" in result.stdout and "TFLite" in result.stdout
    assert (out / "deploy" / "child.tflite").exists() and (out / "train" / "child.keras").exists()

    # the width stage: the narrowed Child fits the budget, converts with every binary conv binary and parity,
    # and is the one deployed and reported
    width = summary["width"]
    assert width["ops_after"] <= 0.6 * width["ops_before"]
    assert width["ops_before"] == pytest.approx(summary["cost"]["ops"])  # the trained Child's cost
    assert [c["before"] for c in width["cells"]] == [8, 16, 32]
    assert any(c["after"] < c["before"] for c in width["cells"])
    assert width["size_bytes_after"] < width["size_bytes_before"]
    deploy = summary["deploy"]
    trained = json.loads((out / "width" / "figures" / "train_child.json").read_text())["flatbuffer"]["ops"]
    for op in ("LceBconv2d", "CONV_2D", "DEPTHWISE_CONV_2D"):  # narrowing turns no binary conv into a float one
        assert deploy["op_histogram"].get(op, 0) == trained.get(op, 0), (op, deploy["op_histogram"], trained)
    assert deploy["size_bytes"] == width["size_bytes_after"]
    assert f"narrowed Child test top-1 {width['top1_after']:.4f}" in result.stdout
    assert "## Width" in report and "| narrowed Child |" in report and (out / "width" / "curves.png").exists()
    gates = dict(np.load(out / "width" / "gates.npz"))

    os.remove(out / "width" / "widths.json")
    shutil.rmtree(out / "deploy")
    result = run_module("tfbnas.run", f"--resume={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "width: gate scores of an earlier call kept" in result.stdout
    assert "[child] 1 epochs" not in result.stdout  # the finished training only restores
    again = json.loads((out / "summary.json").read_text())["width"]
    assert again["widths"] == width["widths"] and again["top1_after"] == pytest.approx(width["top1_after"])
    for key, value in np.load(out / "width" / "gates.npz").items():
        np.testing.assert_array_equal(value, gates[key])
