"""Latency of a converted model: on the host through LCE's interpreter, on an ARM board through
``lce_benchmark_model`` (locally or over ssh).

Kernel paths (each timed separately):

* ``default`` — LCE's default ``LceBconv2d`` kernel. On aarch64 this is the optimised BGEMM; on x86
  LCE only has portable C++ kernels, so the host figure says little about a board.
* ``indirect_bgemm`` — LCE's indirect BGEMM kernel (``use_indirect_bgemm``), its fastest portable path.
* ``reference`` — LCE's reference ``LceBconv2d`` (``use_reference_bconv``): the slow, simple kernel.
* ``float`` — the float reference flatbuffer (e.g. ``child_float.tflite``) through the plain TFLite
  runtime with XNNPACK (``tf.lite.Interpreter``'s default delegate on the host, ``--use_xnnpack=true``
  on the board).

On a board the numbers come from TFLite's benchmark tool (LCE's build of it), whose summary lines are
``count=50 first=... curr=... min=... max=... avg=... std=... p5=... median=... p95=...`` (all in µs;
older builds stop after ``std``) and ``Inference timings in us: Init: ..., First inference: ...,
Warmup (avg): ..., Inference (avg): ...``; :func:`parse_benchmark_output` reads both.

Example:
    >>> rows = benchmark_host("child.tflite", threads=1, runs=50, float_model="child_float.tflite")
    >>> print(markdown_table(rows))
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import time
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from tfbnas.deploy import DeployError

PATHS = ("default", "indirect_bgemm", "reference")
_INTERPRETER_ARGS = {"default": {}, "indirect_bgemm": {"use_indirect_bgemm": True},
                     "reference": {"use_reference_bconv": True}}
_BOARD_FLAGS = {"default": [], "indirect_bgemm": ["--use_indirect_bgemm=true"],
                "reference": ["--use_reference_bconv=true"], "float": ["--use_xnnpack=true"]}
_NOTES = {
    "default": "LCE default bconv kernel",
    "indirect_bgemm": "LCE indirect BGEMM (use_indirect_bgemm)",
    "reference": "LCE reference bconv (use_reference_bconv)",
    "float": "float reference, TFLite + XNNPACK",
}
_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})")
_PAIR = re.compile(rf"(\w+)=({_NUMBER})")


@dataclasses.dataclass
class Latency:
    """Latency of one model on one kernel path (times in milliseconds; ``None`` = not reported).

    Attributes:
        path: ``default``, ``indirect_bgemm``, ``reference`` or ``float``.
        engine: what ran it (``lce.testing.Interpreter``, ``tf.lite.Interpreter``, ``lce_benchmark_model``
            with the ssh destination when remote).
        model: the flatbuffer's path.
        threads: CPU threads.
        runs: timed runs.
        median_ms, p90_ms, p95_ms, p5_ms, mean_ms, std_ms, min_ms, max_ms: statistics of the timed runs
            (``lce_benchmark_model`` prints p5/median/p95 but no p90).
        first_ms: first inference; warmup_ms: mean of the warm-up runs; init_ms: interpreter set-up.
        note: what the path is, and what is missing.
    """

    path: str
    engine: str
    model: str
    threads: int
    runs: int
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p5_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    std_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    first_ms: Optional[float] = None
    warmup_ms: Optional[float] = None
    init_ms: Optional[float] = None
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _read(model: Union[str, bytes]) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if not os.path.exists(model):
        raise DeployError(f"model file not found: {model}; convert it first with deploy/convert.py")
    with open(model, "rb") as f:
        data = f.read()
    if data[4:8] != b"TFL3":
        raise DeployError(f"{model} is not a TFLite flatbuffer; pass the .tflite written by deploy/convert.py")
    return data


def _random_input(shape, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.randint(info.min, info.max + 1, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _stats(times_s: Sequence[float], **fields) -> Latency:
    t = np.asarray(times_s, np.float64) * 1e3
    return Latency(runs=len(t), median_ms=float(np.median(t)), p90_ms=float(np.percentile(t, 90)),
                   p95_ms=float(np.percentile(t, 95)), p5_ms=float(np.percentile(t, 5)), mean_ms=float(t.mean()),
                   std_ms=float(t.std()), min_ms=float(t.min()), max_ms=float(t.max()), **fields)


def _time_calls(call, runs: int, warmup: int):
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    warm = []
    for _ in range(max(warmup - 1, 0)):
        start = time.perf_counter()
        call()
        warm.append(time.perf_counter() - start)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, (float(np.mean(warm)) if warm else first), times


def host_latency(model: Union[str, bytes], path: str = "indirect_bgemm", *, threads: int = 1, runs: int = 50,
                 warmup: int = 5, name: str = "") -> Latency:
    """Times one LCE kernel path with ``lce.testing.Interpreter`` (one image per inference).

    Args:
        model: ``.tflite`` path or bytes.
        path: ``default``, ``indirect_bgemm`` or ``reference``.
        threads: interpreter threads.
        runs: timed inferences.
        warmup: untimed inferences first (the first one is reported as ``first_ms``).
        name: model name stored in the result.

    Returns:
        A :class:`Latency`.
    """
    import larq_compute_engine as lce

    if path not in _INTERPRETER_ARGS:
        raise DeployError(f"unknown kernel path '{path}'; use one of {', '.join(PATHS)}")
    flatbuffer = _read(model)
    start = time.perf_counter()
    interpreter = lce.testing.Interpreter(flatbuffer, num_threads=threads, **_INTERPRETER_ARGS[path])
    init = time.perf_counter() - start
    inputs = [_random_input(s, t, i) for i, (s, t) in enumerate(zip(interpreter.input_shapes,
                                                                   interpreter.input_types))]
    raw = interpreter.interpreter  # the C++ wrapper: one invoke per call, no Python batching loop
    first, warm, times = _time_calls(lambda: raw.predict(inputs), runs, warmup)
    return _stats(times, path=path, engine="lce.testing.Interpreter", threads=threads,
                  model=name or (model if isinstance(model, str) else "<bytes>"), first_ms=first * 1e3,
                  warmup_ms=warm * 1e3, init_ms=init * 1e3, note=_NOTES[path])


def float_latency(model: Union[str, bytes], *, threads: int = 1, runs: int = 50, warmup: int = 5,
                  name: str = "") -> Latency:
    """Times a float flatbuffer with ``tf.lite.Interpreter`` (TFLite's builtin ops + XNNPACK delegate).

    Raises:
        DeployError: the flatbuffer uses LCE ops (it is not a float model).
    """
    import tensorflow as tf

    flatbuffer = _read(model)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TF 2.18 points to ai_edge_litert; tf.lite is what is installed
            interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise DeployError(f"the float model cannot run on plain TFLite ({str(e).splitlines()[0]}); pass the float "
                          "reference (e.g. child_float.tflite), not the binary model") from None
    init = time.perf_counter() - start
    details = interpreter.get_input_details()
    for i, d in enumerate(details):
        interpreter.set_tensor(d["index"], _random_input(d["shape"], d["dtype"], i))
    first, warm, times = _time_calls(interpreter.invoke, runs, warmup)
    return _stats(times, path="float", engine="tf.lite.Interpreter", threads=threads,
                  model=name or (model if isinstance(model, str) else "<bytes>"),
                  first_ms=first * 1e3, warmup_ms=warm * 1e3, init_ms=init * 1e3, note=_NOTES["float"])


def benchmark_host(model: str, *, threads: int = 1, runs: int = 50, warmup: int = 5,
                   paths: Sequence[str] = PATHS, float_model: Optional[str] = None) -> List[Latency]:
    """All host rows: every LCE kernel path on ``model``, plus the float baseline when given.

    Args:
        model: the binary ``.tflite``.
        threads, runs, warmup: see :func:`host_latency`.
        paths: kernel paths to time.
        float_model: float reference ``.tflite`` (timed with ``tf.lite.Interpreter`` + XNNPACK).

    Returns:
        One :class:`Latency` per path.
    """
    rows = [host_latency(model, p, threads=threads, runs=runs, warmup=warmup, name=str(model)) for p in paths]
    if float_model:
        rows.append(float_latency(float_model, threads=threads, runs=runs, warmup=warmup, name=str(float_model)))
    return rows


# ------------------------------------------------------------------------------------------- on a board


def parse_benchmark_output(text: str) -> Dict[str, float]:
    """Reads the summary of TFLite's / LCE's ``benchmark_model`` output.

    Args:
        text: everything the tool printed (stdout and stderr; log prefixes such as ``INFO:`` are fine).

    Returns:
        Microsecond figures: ``count``, ``first``, ``curr``, ``min``, ``max``, ``avg``, ``std`` and, when
        printed, ``p5``, ``median``, ``p95`` of the timed runs; ``init``, ``first_inference``,
        ``warmup_avg``, ``inference_avg`` from the ``Inference timings in us`` line.

    Raises:
        DeployError: the output holds no ``Inference timings in us`` line (the tool failed).
    """
    lines = text.splitlines()
    timing_at = next((i for i in range(len(lines) - 1, -1, -1) if _TIMINGS.search(lines[i])), None)
    if timing_at is None:
        tail = " | ".join(line.strip() for line in lines[-3:] if line.strip())
        raise DeployError(f"no 'Inference timings in us' line in the benchmark output (last lines: {tail or 'none'})")
    init, first, warm, avg = (float(v) for v in _TIMINGS.search(lines[timing_at]).groups())
    result = {"init": init, "first_inference": first, "warmup_avg": warm, "inference_avg": avg}
    # The timed runs' statistics are the last `count=` line before the summary (earlier ones are warm-up).
    for line in reversed(lines[:timing_at]):
        if "count=" in line:
            result.update({k: float(v) for k, v in _PAIR.findall(line[line.index("count="):])})
            break
    return result


def _latency_from_output(text: str, path: str, engine: str, model: str, threads: int) -> Latency:
    r = parse_benchmark_output(text)
    ms = lambda key: r[key] / 1e3 if key in r else None  # noqa: E731
    missing = [k for k in ("median", "p95") if k not in r]
    note = _NOTES[path] + "; benchmark_model prints no p90"
    if missing:
        note += f"; this build prints no {'/'.join(missing)}"
    ignored = re.search(r"Unconsumed cmdline flags:\s*(.*)", text)
    if ignored:  # benchmark_model only warns about flags it does not know (e.g. no XNNPACK provider built in)
        note += f"; tool ignored {ignored.group(1).strip()}"
    return Latency(path=path, engine=engine, model=model, threads=threads, runs=int(r.get("count", 0)),
                   median_ms=ms("median"), p95_ms=ms("p95"), p5_ms=ms("p5"),
                   mean_ms=ms("avg") if "avg" in r else ms("inference_avg"), std_ms=ms("std"), min_ms=ms("min"),
                   max_ms=ms("max"), first_ms=ms("first_inference"), warmup_ms=ms("warmup_avg"), init_ms=ms("init"),
                   note=note)


@dataclasses.dataclass
class SshTarget:
    """A board reachable with OpenSSH (``ssh``/``scp`` from PATH, key-based login, no prompts).

    Args:
        destination: ``user@host``.
        port: ssh port (default: ssh's own default).
        key: private key file (``-i``).
        options: extra ``-o`` options, e.g. ``("StrictHostKeyChecking=accept-new",)``.
    """

    destination: str
    port: Optional[int] = None
    key: Optional[str] = None
    options: Sequence[str] = ()

    def _common(self, port_flag: str) -> List[str]:
        args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
        for option in self.options:
            args += ["-o", option]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.key:
            args += ["-i", self.key]
        return args

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs a shell command on the board."""
        argv = ["ssh"] + self._common("-p") + [self.destination, command]
        return _run(argv, timeout, f"ssh {self.destination}")

    def copy(self, local: str, remote_path: str, timeout: float = 600):
        """Copies a local file to ``remote_path`` on the board."""
        argv = ["scp", "-q"] + self._common("-P") + [local, f"{self.destination}:{remote_path}"]
        result = _run(argv, timeout, f"scp to {self.destination}")
        if result.returncode:
            raise DeployError(f"scp {local} to {self.destination}:{remote_path} failed: {_last_line(result)}")


def _last_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit code {result.returncode}"


def _run(argv: List[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DeployError(f"{argv[0]} not found; install it (apt-get install -y openssh-client) or fix PATH") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what} did not finish within {timeout:.0f} s; "
                          "raise --timeout or use fewer --runs") from None


def find_benchmark_binary(path: Optional[str] = None) -> Optional[str]:
    """``path`` if given, else ``lce_benchmark_model`` from PATH, else ``None``."""
    if path:
        return path
    return shutil.which("lce_benchmark_model")


def benchmark_board(model: str, *, binary: Optional[str] = None, threads: int = 1, runs: int = 50,
                    warmup: int = 5, paths: Sequence[str] = PATHS, float_model: Optional[str] = None,
                    ssh: Optional[SshTarget] = None, remote_dir: str = "/tmp/tfbnas-deploy",
                    timeout: float = 600) -> List[Latency]:
    """Runs ``lce_benchmark_model`` once per kernel path and parses its summary.

    Args:
        model: the binary ``.tflite`` (local path; copied to ``remote_dir`` in ssh mode).
        binary: the benchmark tool. Locally: its path (default: ``lce_benchmark_model`` on PATH). Over ssh:
            an existing local file is copied to the board; anything else is taken as the command on the board
            (default ``lce_benchmark_model``).
        threads: ``--num_threads``.
        runs: ``--num_runs`` (with ``--min_secs=0`` so the count is exact).
        warmup: ``--warmup_runs`` (with ``--warmup_min_secs=0``).
        paths: kernel paths (``default``, ``indirect_bgemm``, ``reference``).
        float_model: float ``.tflite`` timed with ``--use_xnnpack=true``.
        ssh: run on this board instead of locally.
        remote_dir: folder on the board for the model (and binary) copies.
        timeout: seconds per tool run.

    Returns:
        One :class:`Latency` per path.

    Raises:
        DeployError: missing files, ssh/scp failure, or the tool failing on the board.
    """
    for path in paths:
        if path not in _INTERPRETER_ARGS:
            raise DeployError(f"unknown kernel path '{path}'; use one of {', '.join(PATHS)}")
    models = [(p, model) for p in paths] + ([("float", float_model)] if float_model else [])
    for _, m in models:
        _read(m)  # fail early on missing or non-TFLite files
    if ssh is None:
        binary = find_benchmark_binary(binary)
        if not binary or not (os.path.exists(binary) or shutil.which(binary)):
            raise DeployError("lce_benchmark_model not found; pass --lce_benchmark_model=PATH (see docs/deploy.md "
                              "for the prebuilt aarch64/armv7 binaries)")
        engine, graphs = "lce_benchmark_model", {m: m for _, m in models}
    else:
        engine = f"lce_benchmark_model @ {ssh.destination}"
        made = ssh.run(f"mkdir -p {shlex.quote(remote_dir)}", timeout)
        if made.returncode:
            raise DeployError(f"ssh {ssh.destination} failed: {_last_line(made)}")
        graphs = {}
        for _, m in models:
            if m not in graphs:
                graphs[m] = f"{remote_dir}/{os.path.basename(m)}"
                ssh.copy(m, graphs[m], timeout)
        binary = binary or "lce_benchmark_model"
        if os.path.isfile(binary):
            remote_binary = f"{remote_dir}/{os.path.basename(binary)}"
            ssh.copy(binary, remote_binary, timeout)
            ssh.run(f"chmod +x {shlex.quote(remote_binary)}", timeout)
            binary = remote_binary
    rows = []
    for path, m in models:
        argv = [binary, f"--graph={graphs[m]}", f"--num_threads={threads}", f"--num_runs={runs}", "--min_secs=0",
                f"--warmup_runs={warmup}", "--warmup_min_secs=0"] + _BOARD_FLAGS[path]
        if ssh is None:
            result = _run(argv, timeout, os.path.basename(binary))
        else:
            result = ssh.run(" ".join(shlex.quote(a) for a in argv), timeout)
        if result.returncode:
            raise DeployError(f"{engine} failed on {os.path.basename(m)} ({path}): {_last_line(result)}")
        rows.append(_latency_from_output(result.stdout + "\n" + result.stderr, path, engine, m, threads))
    return rows


# -------------------------------------------------------------------------------------------- reporting


def _ms(value: Optional[float]) -> str:
    return "—" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def markdown_table(rows: Sequence[Latency]) -> str:
    """The rows as a Markdown table (median and p90 first; ``—`` where a figure is not reported)."""
    out = ["| path | engine | threads | runs | median ms | p90 ms | p95 ms | mean ms | note |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        out.append(f"| {r.path} | {r.engine} | {r.threads} | {r.runs} | {_ms(r.median_ms)} | {_ms(r.p90_ms)} | "
                   f"{_ms(r.p95_ms)} | {_ms(r.mean_ms)} | {r.note} |")
    return "\n".join(out)
