"""Search-step speed: how close one supernet step runs to the machine's convolution throughput.

    python benchmarks/search_step.py [--configs=smoke,fashion_mnist,cifar] [--presets=dcp,bats,bireal] [--steps=10]
                                     [--plain] [--no_grappler]

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
plus peak memory (RSS). ``--plain`` also times the plain supernet side by side (speed-up column).

The machine is shared and noisy, so all steps of one preset and config and the reference conv (a)
are timed in turns (one step of each, repeated ``--steps`` times): load from other processes hits
all of them alike and the ratios (fraction of (a), dcp/darts, speed-up) stay meaningful.
It ends with one summary line for the default Fashion-MNIST search config.
"""

import argparse
import contextlib
import gc
import os
import resource
import statistics
import sys
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
                 "dcp_ggn_samples": int}


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
    net = SuperNet(info.num_classes, spec["init_channels"], spec["num_cells"], spec["nodes"], preset, fused=False)
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


def prepare(config_name, preset, strategy, plain=False):
    """A compiled search step of one config: its function, batch, tracing and first-call times, graph size."""
    spec = dict(CONFIGS[config_name])
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


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    args = parser.parse_args()
    if args.no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(0)

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, grappler "
          f"{'off' if args.no_grappler else 'on'}, op determinism {'on' if args.deterministic else 'off'}; "
          f"steps timed in turns with the reference conv, medians of {args.steps}")
    ref_step, ref_flops = reference_conv()
    header = (f"{'preset':6} {'config':13} {'strategy':8} {'form':6} {'GFLOP/step':>10} {'step s':>8} {'img/s':>7} "
              f"{'GFLOP/s':>8} {'of (a)':>7} {'trace s':>8} {'first s':>8} {'graph ops':>9} {'speed-up':>8}")
    results = {}
    forms = ("plain", "fused") if args.plain else ("fused",)
    for preset in args.presets.split(","):
        for config_name in args.configs.split(","):
            spec = CONFIGS[config_name]
            arith = plain_arithmetic(preset, spec, data.KNOWN_DATASETS[spec["dataset"]])
            prepared = {(strategy, form): prepare(config_name, preset, strategy, plain=form == "plain")
                        for strategy in ("darts", "dcp") for form in forms}
            runs = {key: p["run"] for key, p in prepared.items()}
            runs["reference"] = ref_step
            seconds = round_robin(runs, args.steps)
            peak = ref_flops / seconds.pop("reference") / 1e9
            print(f"\n(a) {preset}/{config_name}: reference dense 3x3 conv {PEAK['channels']}->{PEAK['channels']}, "
                  f"{PEAK['size']}x{PEAK['size']}, batch {PEAK['batch']}, fwd+bwd: {peak:.1f} GFLOP/s")
            print(header)
            print("-" * len(header))
            for (strategy, form), p in prepared.items():
                r = {k: v for k, v in p.items() if k != "run"}  # keep no engine alive past its config
                r.update(seconds=seconds[(strategy, form)], flops=step_flops(arith, strategy, spec["batch_size"]),
                         peak=peak)
                r["rate"] = r["flops"] / r["seconds"] / 1e9
                r["images"] = p["images"] / r["seconds"]
                results[(preset, config_name, strategy, form)] = r
                plain_r = results.get((preset, config_name, strategy, "plain"))
                speedup = f"{plain_r['seconds'] / r['seconds']:7.2f}x" if plain_r and form == "fused" else ""
                print(f"{preset:6} {config_name:13} {strategy:8} {form:6} {r['flops'] / 1e9:10.2f} "
                      f"{r['seconds']:8.3f} {r['images']:7.1f} {r['rate']:8.1f} {r['rate'] / peak:7.1%} "
                      f"{r['trace']:8.1f} {r['first']:8.1f} {r['graph_ops']:9d} {speedup:>8}", flush=True)
            for form in forms:
                ratio = (results[(preset, config_name, "dcp", form)]["seconds"]
                         / results[(preset, config_name, "darts", form)]["seconds"])
                print(f"{'':6} {config_name:13} {form}: dcp/darts step-time ratio {ratio:.2f}")
            print(f"peak RSS so far: {rss_mib():.0f} MiB", flush=True)
            del prepared, runs
            tf.keras.backend.clear_session()
            gc.collect()
    rss = rss_mib()
    preset, config_name = DEFAULT
    if (preset, config_name, "dcp", "fused") not in results:
        preset, config_name = next(iter(results))[:2]
    d, r = results[(preset, config_name, "darts", "fused")], results[(preset, config_name, "dcp", "fused")]
    print(f"\nSUMMARY {preset}/{config_name}: dcp step {r['rate'] / r['peak']:.1%} of dense-conv throughput "
          f"({r['peak']:.0f} GFLOP/s), darts step {d['rate'] / d['peak']:.1%}; dcp/darts step-time ratio "
          f"{r['seconds'] / d['seconds']:.2f}; dcp {r['images']:.0f} img/s, darts {d['images']:.0f} img/s; "
          f"first dcp step {r['trace'] + r['first']:.0f} s (trace {r['trace']:.0f} s); peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
