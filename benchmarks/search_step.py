"""Search-step speed: how close one supernet step runs to the machine's convolution throughput.

    python benchmarks/search_step.py [--configs=smoke,fashion_mnist,cifar] [--presets=dcp,bats,bireal] [--steps=10]
                                     [--plain] [--no_grappler] [--partial_channels=K] [--max_rss_gb=G]

For each preset and config it measures, in one run:

(a) the machine's dense-conv throughput: fwd+bwd GFLOP/s of a reference 3x3 conv (64->64 channels,
    28x28, batch 64) as ``tf.nn.conv2d`` in a ``tf.function``;
(b) the supernet's arithmetic per step, counted on the *plain* supernet (``SuperNet(fused=False)``:
    one small op per edge and candidate, the op table's definitions), so that zero taps or
    block-diagonal kernels of the fused form never count as work. Only real arithmetic is counted:
    the multiply-accumulates of every ``Conv2D``, ``DepthwiseConv2dNative`` and ``MatMul`` of the
    traced forward pass, x 2 FLOPs, and for the backward passes exactly what each tape needs
    (TensorFlow records only ops that depend on a watched variable):

    * forward ``F``: every conv/matmul;
    * architecture tape (watches the alphas only): ``F`` + input gradients of the convs whose input
      depends on the alphas (``A``; the stem and the first cell's edges from its inputs need none),
      no kernel gradients;
    * weight tape: ``F`` + kernel gradients (``F``) + input gradients of every conv but the stem's (``W``).

    darts = one architecture + one weight tape of the Child; dcp = the same for the Parent and the
    Child (its GGN micro-batches split the same batch). BatchNorm, sign, pooling, padding and the
    mixing sums are not counted (they are memory traffic, not arithmetic);
(c) the median wall time of darts and dcp steps (after warm-up), images/s (training + validation
    images per step) and the achieved fraction of (a); the tracing time of the step function,
    the time of its first call (graph optimisation + first run) and its graph size;
plus the peak memory (RSS) of each preset and config. ``--plain`` also times the plain supernet side by
side (speed-up column).

Each preset and config runs in its own process, so its peak RSS is its own. A process whose RSS passes
``--max_rss_gb`` (default: 90 % of the memory available at the start) is stopped before the machine
swaps or kills it; the run goes on with the next one, reports which configurations did not fit and
exits with code 3. Exit code 0: every configuration ran.

The machine is shared and noisy, so all steps of one preset and config and the reference conv (a)
are timed in turns (one step of each, repeated ``--steps`` times): load from other processes hits
all of them alike and the ratios (fraction of (a), dcp/darts, speed-up) stay meaningful.
It ends with one summary line for the default Fashion-MNIST search config.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfbnas  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbnas import data  # noqa: E402
from tfbnas.search import run_search  # noqa: E402
from tfbnas.search.run_search import SearchConfig, build_search  # noqa: E402
from tfbnas.space.supernet import SuperNet  # noqa: E402

# The search configs are read from configs/<name>.flags (space, batch, GGN micro-batches); images are
# synthetic of the dataset's shape.
CONFIG_FILES = {"smoke": "smoke.flags", "fashion_mnist": "fashion_mnist.flags", "cifar": "cifar.flags"}
CONFIG_FIELDS = {"dataset": str, "preset": str, "init_channels": int, "num_cells": int, "nodes": int, "batch_size": int,
                 "dcp_ggn_samples": int, "partial_channels": int}


def read_config(name):
    """The fields of :data:`CONFIG_FIELDS` set in ``configs/<name>.flags`` (``--key=value`` lines)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", CONFIG_FILES[name])
    spec = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().lstrip("-").partition("=")
            if key in CONFIG_FIELDS and value:
                spec[key] = CONFIG_FIELDS[key](value)
    missing = {"dataset", "init_channels", "num_cells", "nodes", "batch_size"} - set(spec)
    if missing:
        raise SystemExit(f"{path} does not set {', '.join(sorted(missing))}: add them to the flagfile")
    return spec


CONFIGS = {name: read_config(name) for name in CONFIG_FILES}
DEFAULT = (CONFIGS["fashion_mnist"].get("preset", "dcp"), "fashion_mnist")  # the main job's search: summary line
PEAK = dict(channels=64, size=28, batch=64)  # the reference conv of (a)


def reference_conv():
    """The reference conv's fwd+bwd step and its FLOPs (2 per MAC; backward = input + kernel gradients)."""
    c, s, b = PEAK["channels"], PEAK["size"], PEAK["batch"]
    x = tf.random.normal([b, s, s, c])
    k = tf.Variable(tf.random.normal([3, 3, c, c]) * 0.05)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, k, 1, "SAME")
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, k])

    return step, 3 * 2 * 3 * 3 * c * c * s * s * b


def _macs(op):
    """Multiply-accumulates of one conv/matmul op of a traced graph (static shapes)."""
    if op.type == "MatMul":
        a = op.inputs[0].shape.as_list()
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        return m * k * op.outputs[0].shape.as_list()[-1]
    out = int(np.prod(op.outputs[0].shape.as_list()))
    kernel = op.inputs[1].shape.as_list()
    if op.type == "Conv2D":
        return out * kernel[0] * kernel[1] * kernel[2]
    return out * kernel[0] * kernel[1]  # DepthwiseConv2dNative: one input channel per output


def _reachable(graph, tensors):
    seen, stack = set(), list(tensors)
    while stack:
        t = stack.pop()
        if t.ref() in seen:
            continue
        seen.add(t.ref())
        for consumer in t.consumers():
            stack.extend(consumer.outputs)
    return seen


def plain_arithmetic(preset, spec, info):
    """``(F, A, W)`` MACs per image of the plain supernet (see the module docstring)."""
    net = SuperNet(info.num_classes, spec["init_channels"], spec["num_cells"], spec["nodes"], preset, fused=False,
                   partial_channels=spec.get("partial_channels", 1))
    x = tf.zeros((1,) + tuple(info.image_shape))
    net(x)
    graph = tf.function(lambda t: net(t, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    internal = {id(external): inner for external, inner in graph.captures}
    alphas = [internal[id(v.handle)] for v in net.arch_variables if id(v.handle) in internal]
    weights = [internal[id(v.handle)] for v in net.variables if id(v.handle) in internal]
    from_alphas, from_weights = _reachable(graph, alphas), _reachable(graph, weights)
    f = a = w = 0
    for op in graph.get_operations():
        if op.type not in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
            continue
        macs = _macs(op)
        f += macs
        a += macs if op.inputs[0].ref() in from_alphas else 0
        w += macs if op.inputs[0].ref() in from_weights else 0
    return f, a, w


def step_flops(arith, strategy, batch):
    f, a, w = arith
    darts = (f + a) + (2 * f + w)  # architecture tape + weight tape
    return 2 * batch * darts * (2 if strategy == "dcp" else 1)


@contextlib.contextmanager
def plain_supernets(plain):
    """Make ``build_search`` build plain supernets (``fused=False``) inside the block."""
    if not plain:
        yield
        return
    original = run_search.SuperNet
    run_search.SuperNet = lambda *args, **kwargs: original(*args, fused=False, **kwargs)
    try:
        yield
    finally:
        run_search.SuperNet = original


def prepare(config_name, preset, strategy, plain=False, partial_channels=None):
    """A compiled search step of one config: its function, batch, tracing and first-call times, graph size."""
    spec = config_spec(config_name, partial_channels)
    spec.pop("preset", None)  # every preset is timed on every config's space
    info = data.KNOWN_DATASETS[spec.pop("dataset")]
    spec.setdefault("dcp_ggn_samples", 4)
    config = SearchConfig(preset=preset, strategy=strategy, search_epochs=1, **spec)
    tf.keras.utils.set_random_seed(0)
    with plain_supernets(plain):
        engine = build_search(config, info, steps_per_epoch=100)
    b = config.batch_size
    rng = np.random.RandomState(0)
    batch = tuple((tf.constant(rng.randn(b, *info.image_shape).astype(np.float32)),
                   tf.constant(rng.randint(0, info.num_classes, b).astype(np.int64))) for _ in range(2))
    step = tf.function(engine.train_step)
    start = time.perf_counter()
    concrete = step.get_concrete_function(batch)
    trace = time.perf_counter() - start
    start = time.perf_counter()
    step(batch)
    first = time.perf_counter() - start
    return dict(run=lambda: step(batch), trace=trace, first=first, images=2 * b,
                graph_ops=len(concrete.graph.get_operations()))


def round_robin(runs, steps):
    """Median seconds of each callable, timed in turns (the machine's load hits all alike)."""
    for run in runs.values():
        run()  # warm-up
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def config_spec(config_name, partial_channels=None):
    """The fields of a config, with ``--partial_channels`` applied when given."""
    spec = dict(CONFIGS[config_name])
    if partial_channels is not None:
        spec["partial_channels"] = partial_channels
    return spec


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


HEADER = (f"{'preset':6} {'config':13} {'strategy':8} {'form':6} {'GFLOP/step':>10} {'step s':>8} {'img/s':>7} "
          f"{'GFLOP/s':>8} {'of (a)':>7} {'trace s':>8} {'first s':>8} {'graph ops':>9} {'speed-up':>8}")
RESULT = "RESULT "  # a case's process ends with this prefix and its results as JSON


def run_case(preset, config_name, args):
    """One preset and config in this process: prints its table and returns its results by (strategy, form)."""
    if args.no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(0)
    ref_step, ref_flops = reference_conv()
    forms = ("plain", "fused") if args.plain else ("fused",)
    spec = config_spec(config_name, args.partial_channels)
    arith = plain_arithmetic(preset, spec, data.KNOWN_DATASETS[spec["dataset"]])
    prepared = {(strategy, form): prepare(config_name, preset, strategy, form == "plain", args.partial_channels)
                for strategy in ("darts", "dcp") for form in forms}
    runs = {key: p["run"] for key, p in prepared.items()}
    runs["reference"] = ref_step
    seconds = round_robin(runs, args.steps)
    peak = ref_flops / seconds.pop("reference") / 1e9
    k = spec.get("partial_channels", 1)
    print(f"\n(a) {preset}/{config_name} (batch {spec['batch_size']}, partial channels K={k}): reference dense 3x3 "
          f"conv {PEAK['channels']}->{PEAK['channels']}, {PEAK['size']}x{PEAK['size']}, batch {PEAK['batch']}, "
          f"fwd+bwd: {peak:.1f} GFLOP/s")
    print(HEADER)
    print("-" * len(HEADER))
    results = {}
    for (strategy, form), p in prepared.items():
        r = {k: v for k, v in p.items() if k != "run"}
        r.update(seconds=seconds[(strategy, form)], flops=step_flops(arith, strategy, spec["batch_size"]), peak=peak)
        r["rate"] = r["flops"] / r["seconds"] / 1e9
        r["images"] = p["images"] / r["seconds"]
        results[(strategy, form)] = r
        plain_r = results.get((strategy, "plain"))
        speedup = f"{plain_r['seconds'] / r['seconds']:7.2f}x" if plain_r and form == "fused" else ""
        print(f"{preset:6} {config_name:13} {strategy:8} {form:6} {r['flops'] / 1e9:10.2f} "
              f"{r['seconds']:8.3f} {r['images']:7.1f} {r['rate']:8.1f} {r['rate'] / peak:7.1%} "
              f"{r['trace']:8.1f} {r['first']:8.1f} {r['graph_ops']:9d} {speedup:>8}", flush=True)
    for form in forms:
        ratio = results[("dcp", form)]["seconds"] / results[("darts", form)]["seconds"]
        print(f"{'':6} {config_name:13} {form}: dcp/darts step-time ratio {ratio:.2f}")
    print(f"{'':6} {config_name:13} peak RSS {rss_mib():.0f} MiB", flush=True)
    return results


def memory_available_gib():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def process_rss_gib(pid):
    """Resident memory of a process, or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_in_process(preset, config_name, argv, limit_gib):
    """Runs one case as ``search_step.py --case=preset/config``, passing its output through; its results,
    or ``None`` after stopping it at ``limit_gib`` of RSS (and the highest RSS seen)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--case={preset}/{config_name}"] + argv,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    highest, stopped, lines = 0.0, threading.Event(), []

    def watch():
        nonlocal highest
        while proc.poll() is None:
            highest = max(highest, process_rss_gib(proc.pid))
            if highest > limit_gib:
                stopped.set()
                proc.kill()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in proc.stdout:
        if line.startswith(RESULT):
            lines.append(line[len(RESULT):])
        else:
            print(line, end="", flush=True)
    proc.wait()
    watcher.join()
    if stopped.is_set():
        return None, highest
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"search_step.py: {preset}/{config_name} failed (exit {proc.returncode}); see its output above")
    results = {tuple(key.split("/")): value for key, value in json.loads(lines[-1]).items()}
    return results, highest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="smoke,fashion_mnist,cifar")
    parser.add_argument("--presets", default="dcp,bats,bireal")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--plain", action="store_true", help="also time the plain supernet (fused=False)")
    parser.add_argument("--no_grappler", action="store_true",
                        help="disable grappler's meta optimizer (as --graph_optimizations=false does)")
    parser.add_argument("--deterministic", action="store_true",
                        help="enable op determinism (as --deterministic, the search's default, does)")
    parser.add_argument("--partial_channels", type=int, default=None,
                        help="K of the partial-channel connections for every config (default: each config's own)")
    parser.add_argument("--max_rss_gb", type=float, default=None,
                        help="stop a configuration whose process passes this RSS (default: 90%% of the memory "
                             "available at the start)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one preset/config
    args, argv = parser.parse_args(), [a for a in sys.argv[1:] if not a.startswith("--case")]
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"--configs: unknown config {name!r}; use some of {','.join(CONFIGS)}")
    if args.case:
        preset, config_name = args.case.split("/")
        results = run_case(preset, config_name, args)
        print(RESULT + json.dumps({"/".join(key): r for key, r in results.items()}), flush=True)
        return 0

    limit = args.max_rss_gb or 0.9 * memory_available_gib()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, grappler "
          f"{'off' if args.no_grappler else 'on'}, op determinism {'on' if args.deterministic else 'off'}; "
          f"steps timed in turns with the reference conv, medians of {args.steps}; one process per preset and "
          f"config, stopped above {limit:.1f} GB RSS", flush=True)
    results, memory, stopped = {}, {}, []
    for preset in args.presets.split(","):
        for config_name in args.configs.split(","):
            case, highest = run_in_process(preset, config_name, argv, limit)
            if case is None:
                stopped.append(f"{preset}/{config_name}")
                print(f"\nstopped {preset}/{config_name}: its RSS passed {limit:.1f} GB (--max_rss_gb); it needs "
                      "more memory than this machine gives it: try --partial_channels=4 or a smaller batch",
                      flush=True)
                continue
            memory[(preset, config_name)] = highest
            results.update({(preset, config_name) + key: r for key, r in case.items()})
    print("\npeak RSS (GB) per preset and config: " + ", ".join(
        [f"{p}/{c} {gib:.1f}" for (p, c), gib in memory.items()] + [f"{s} stopped" for s in stopped]))
    preset, config_name = DEFAULT
    if (preset, config_name, "dcp", "fused") not in results:
        if not results:
            return 3
        preset, config_name = next(iter(results))[:2]
    d, r = results[(preset, config_name, "darts", "fused")], results[(preset, config_name, "dcp", "fused")]
    print(f"\nSUMMARY {preset}/{config_name}: dcp step {r['rate'] / r['peak']:.1%} of dense-conv throughput "
          f"({r['peak']:.0f} GFLOP/s), darts step {d['rate'] / d['peak']:.1%}; dcp/darts step-time ratio "
          f"{r['seconds'] / d['seconds']:.2f}; dcp {r['images']:.0f} img/s, darts {d['images']:.0f} img/s; "
          f"first dcp step {r['trace'] + r['first']:.0f} s (trace {r['trace']:.0f} s); "
          f"peak RSS {memory[(preset, config_name)] * 1024:.0f} MiB")
    return 3 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
