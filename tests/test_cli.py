"""Entry points from the outside: one-line errors for bad input, and the main job on real data."""

import json
import os
import subprocess
import sys

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
    result = run_module("tfbnas.run", *args, "--baseline_epochs=0")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "flag error" in line]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_unwritable_output_dir_and_missing_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_module("tfbnas.run", f"--output_dir={blocker}/run", "--baseline_epochs=0")
    assert result.returncode == 1
    assert any("cannot write the run folder" in line and "--output_dir" in line for line in result.stderr.splitlines())
    result = run_module("tfbnas.run", "--dataset=cifar10", f"--data_dir={tmp_path}", f"--output_dir={tmp_path}/r",
                        "--baseline_epochs=0")
    assert result.returncode == 1
    assert any("not prepared" in line and "tfds build cifar10" in line for line in result.stderr.splitlines())


def test_main_job_on_real_fashion_mnist(tmp_path):
    out = tmp_path / "run"
    result = run_module("tfbnas.run", "--flagfile=configs/fashion_mnist.flags", "--train_examples=6000",
                        "--test_examples=2000", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6000 train = 3000 search-train + 3000 search-val, 2000 test" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["test_accuracy"] > 0.5  # chance is 0.1
    flags_txt = (out / "flags.txt").read_text()
    assert "--train_examples=6000" in flags_txt and "--dataset=fashion_mnist" in flags_txt
