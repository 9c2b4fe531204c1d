"""Deploy benchmark: host latency on every LCE kernel path, benchmark_model parsing, and the --ssh mode
against a real OpenSSH server on 127.0.0.1."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import larq as lq
import pytest
import tensorflow as tf

from conftest import BackgroundRun
from tfbnas.deploy import DeployError, benchmark as bench, convert as dc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "deploy", "benchmark.py")
SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small binary model and its float twin as .tflite files (latency does not need training)."""
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False, padding="same", pad_values=1.0)
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((28, 28, 1))
    x = tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    for _ in range(2):
        x = lq.layers.QuantConv2D(64, 3, **binary)(x)
        x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x))
    folder = tmp_path_factory.mktemp("bench")
    paths = {"binary": str(folder / "child.tflite"), "float": str(folder / "child_float.tflite")}
    for key, m in (("binary", model), ("float", dc.float_twin(model))):
        with open(paths[key], "wb") as f:
            f.write(dc.convert_keras(m))
    return paths


def check_rows(rows, paths, runs):
    assert [r.path for r in rows] == list(paths)
    for r in rows:
        assert r.runs == runs
        assert r.median_ms > 0 and r.mean_ms > 0 and r.min_ms > 0
        assert r.min_ms <= r.median_ms <= r.max_ms
        assert r.p95_ms >= r.median_ms


def test_host_benchmark_every_path(models):
    rows = bench.benchmark_host(models["binary"], threads=1, runs=20, warmup=3, float_model=models["float"])
    check_rows(rows, bench.PATHS + ("float",), 20)
    for r in rows:
        assert r.p90_ms >= r.median_ms and r.first_ms > 0 and r.init_ms > 0
    assert rows[-1].engine == "tf.lite.Interpreter"
    assert {r.engine for r in rows[:-1]} == {"lce.testing.Interpreter"}
    table = bench.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| reference |" in table and "| float |" in table


def test_binary_model_is_refused_as_float_baseline(models):
    with pytest.raises(DeployError, match="cannot run on plain TFLite"):
        bench.float_latency(models["binary"], runs=1, warmup=1)


def benchmark_model_text(row, percentiles: bool = True) -> str:
    """What TFLite's benchmark_model prints for these figures (µs; warm-up line first)."""
    us = lambda ms: f"{ms * 1e3:.6g}"  # noqa: E731
    main = (f"count={row.runs} first={us(row.first_ms)} curr={us(row.max_ms)} min={us(row.min_ms)} "
            f"max={us(row.max_ms)} avg={us(row.mean_ms)} std={us(row.std_ms)}")
    if percentiles:
        main += f" p5={us(row.p5_ms)} median={us(row.median_ms)} p95={us(row.p95_ms)}"
    return "\n".join([
        "INFO: STARTING!", f"INFO: Num runs: [{row.runs}]", "INFO: Loaded model child.tflite",
        "INFO: Running benchmark for at least 1 iterations and at least 0 seconds.",
        f"INFO: count=1 curr={us(row.first_ms)} p5={us(row.first_ms)} median={us(row.first_ms)} p95={us(row.first_ms)}",
        "", f"INFO: Running benchmark for at least {row.runs} iterations and at least 0 seconds.", f"INFO: {main}", "",
        f"INFO: Inference timings in us: Init: {us(row.init_ms)}, First inference: {us(row.first_ms)}, "
        f"Warmup (avg): {us(row.warmup_ms)}, Inference (avg): {us(row.mean_ms)}",
        "INFO: Memory footprint delta from the start of the tool (MB): init=1.2 overall=3.4"])


def test_parse_benchmark_output_both_formats(models):
    row = bench.host_latency(models["binary"], "indirect_bgemm", runs=10, warmup=2)
    parsed = bench.parse_benchmark_output(benchmark_model_text(row))
    assert parsed["count"] == 10  # the timed runs' line, not the warm-up line
    assert parsed["median"] == pytest.approx(row.median_ms * 1e3, rel=1e-5)
    assert parsed["inference_avg"] == pytest.approx(row.mean_ms * 1e3, rel=1e-5)
    assert parsed["init"] == pytest.approx(row.init_ms * 1e3, rel=1e-5)
    old = bench._latency_from_output(benchmark_model_text(row, percentiles=False), "indirect_bgemm", "tool", "m", 1)
    assert old.median_ms is None and old.p90_ms is None
    assert old.mean_ms == pytest.approx(row.mean_ms, rel=1e-5) and "no median/p95" in old.note
    with pytest.raises(DeployError, match="no 'Inference timings in us'"):
        bench.parse_benchmark_output("ERROR: Could not open 'x.tflite'.\nBenchmarking failed.")


@pytest.mark.slow
def test_cli_host(models, tmp_path):
    out = tmp_path / "b.json"
    result = subprocess.run([sys.executable, CLI, models["binary"], "--runs=5", "--warmup=2", "--threads=1",
                             f"--float_model={models['float']}", f"--json_out={out}",
                             f"--markdown_out={tmp_path / 'b.md'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["path"] for r in results] == ["default", "indirect_bgemm", "reference", "float"]
    assert all(r["median_ms"] > 0 and r["p90_ms"] > 0 for r in results)
    assert "| indirect_bgemm |" in result.stdout and "| indirect_bgemm |" in (tmp_path / "b.md").read_text()


# The program pays TensorFlow's import: it runs beside the in-process tests (conftest.BackgroundRun).
MISSING_MODEL_RUN = BackgroundRun(__name__, "missing_model_run", "benchmark-missing-model",
                                  lambda folder: [sys.executable, CLI, str(folder / "nope.tflite")])


@pytest.fixture
def missing_model_run():
    return MISSING_MODEL_RUN.result()[0]


def test_cli_missing_model_is_one_line(missing_model_run):
    result = missing_model_run
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("benchmark.py: error: model file not found")


# ---------------------------------------------------------------------------------------- board over ssh


def write_fake_board(folder) -> str:
    """A stand-in for lce_benchmark_model: runs the host benchmark CLI for the requested kernel path and
    prints its figures in benchmark_model's format (also saving the raw JSON next to the graph)."""
    os.makedirs(folder, exist_ok=True)
    script = os.path.join(folder, "lce_benchmark_model")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            #!{sys.executable}
            import argparse, json, subprocess, sys
            p = argparse.ArgumentParser()
            for name in ("graph", "num_threads", "num_runs", "warmup_runs", "min_secs", "warmup_min_secs",
                         "use_indirect_bgemm", "use_reference_bconv", "use_xnnpack"):
                p.add_argument("--" + name, default="false")
            a = p.parse_args()
            path = ("indirect_bgemm" if a.use_indirect_bgemm == "true" else
                    "reference" if a.use_reference_bconv == "true" else "default")
            raw = a.graph + "." + path + ".json"
            subprocess.run([sys.executable, {CLI!r}, a.graph, "--threads=" + a.num_threads, "--runs=" + a.num_runs,
                            "--warmup=" + a.warmup_runs, "--paths=" + path, "--json_out=" + raw,
                            "--markdown_out=" + raw + ".md"], check=True, capture_output=True)
            r = json.load(open(raw))["results"][0]
            us = lambda ms: "%.6g" % (ms * 1e3)
            print("STARTING!")
            print("Graph: [%s]" % a.graph)
            print("count=1 curr=%s" % us(r["first_ms"]))
            print("count=%d first=%s curr=%s min=%s max=%s avg=%s std=%s p5=%s median=%s p95=%s" % (
                r["runs"], us(r["first_ms"]), us(r["max_ms"]), us(r["min_ms"]), us(r["max_ms"]), us(r["mean_ms"]),
                us(r["std_ms"]), us(r["p5_ms"]), us(r["median_ms"]), us(r["p95_ms"])))
            print("Inference timings in us: Init: %s, First inference: %s, Warmup (avg): %s, Inference (avg): %s" % (
                us(r["init_ms"]), us(r["first_ms"]), us(r["warmup_ms"]), us(r["mean_ms"])))
            """))
    os.chmod(script, 0o755)
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 that accepts one freshly generated key."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not installed (apt-get install -y openssh-server)")
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    os.chmod(keys / "authorized_keys", 0o600)
    config = keys / "sshd_config"
    config.write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        HostKey {keys / 'host_key'}
        AuthorizedKeysFile {keys / 'authorized_keys'}
        PidFile {keys / 'sshd.pid'}
        StrictModes no
        UsePAM no
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PubkeyAuthentication yes
        PermitRootLogin prohibit-password
        Subsystem sftp internal-sftp
        LogLevel ERROR
        """))
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    port = free_port()
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-p", str(port)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"sshd did not start: {server.stderr.read()[-1000:]}")
            time.sleep(0.1)
    yield {"destination": f"{getpass.getuser()}@127.0.0.1", "port": port, "key": str(keys / "user_key"),
           "options": ["StrictHostKeyChecking=no", f"UserKnownHostsFile={keys / 'known_hosts'}"]}
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.slow
def test_ssh_board_benchmark(models, sshd, tmp_path):
    fake = write_fake_board(str(tmp_path / "local"))  # a local file: copied to the board by scp
    remote = tmp_path / "board"
    out = tmp_path / "ssh.json"
    result = subprocess.run(
        [sys.executable, CLI, models["binary"], "--nohost", f"--ssh={sshd['destination']}",
         f"--ssh_port={sshd['port']}", f"--ssh_key={sshd['key']}", f"--ssh_options={','.join(sshd['options'])}",
         f"--remote_dir={remote}", f"--lce_benchmark_model={fake}", "--paths=default,indirect_bgemm",
         f"--float_model={models['float']}", "--runs=5", "--warmup=2", f"--json_out={out}",
         f"--markdown_out={tmp_path / 'ssh.md'}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["path"] for r in rows] == ["default", "indirect_bgemm", "float"]
    # scp put the model, the float model and the tool on the board.
    for name in ("child.tflite", "child_float.tflite", "lce_benchmark_model"):
        assert (remote / name).exists()
    for row in rows:
        assert row["engine"] == f"lce_benchmark_model @ {sshd['destination']}"
        assert row["runs"] == 5 and row["median_ms"] > 0 and row["p90_ms"] is None
        graph = "child_float.tflite" if row["path"] == "float" else "child.tflite"
        board_path = "default" if row["path"] == "float" else row["path"]
        raw = json.loads((remote / f"{graph}.{board_path}.json").read_text())["results"][0]
        assert row["median_ms"] == pytest.approx(raw["median_ms"], rel=1e-4)
        assert row["p95_ms"] == pytest.approx(raw["p95_ms"], rel=1e-4)
        assert row["mean_ms"] == pytest.approx(raw["mean_ms"], rel=1e-4)
    assert f"lce_benchmark_model @ {sshd['destination']}" in result.stdout


@pytest.mark.slow
def test_local_benchmark_tool(models, tmp_path):
    fake = write_fake_board(str(tmp_path))
    rows = bench.benchmark_board(models["binary"], binary=fake, paths=("indirect_bgemm",), runs=4, warmup=1)
    assert len(rows) == 1 and rows[0].engine == "lce_benchmark_model" and rows[0].runs == 4
    raw = json.loads(open(models["binary"] + ".indirect_bgemm.json").read())["results"][0]
    assert rows[0].median_ms == pytest.approx(raw["median_ms"], rel=1e-4)
    with pytest.raises(DeployError, match="lce_benchmark_model not found"):
        bench.benchmark_board(models["binary"], binary=str(tmp_path / "missing_tool"), runs=1, warmup=1)


def test_ssh_unreachable_board_is_one_error(models, tmp_path):
    ssh = bench.SshTarget(f"{getpass.getuser()}@127.0.0.1", port=free_port(), options=("ConnectTimeout=5",))
    with pytest.raises(DeployError, match="ssh .* failed"):
        bench.benchmark_board(models["binary"], ssh=ssh, paths=("default",), runs=1, warmup=1,
                              remote_dir=str(tmp_path / "r"), timeout=60)
