"""Search-step speed: how close one supernet step runs to the machine's convolution throughput.

    python benchmarks/search_step.py [--configs=smoke,fashion_mnist,cifar] [--presets=dcp,bats] [--steps=10]

For each preset and config it measures, in one run:

(a) the machine's dense-conv throughput: fwd+bwd GFLOP/s of a reference 3x3 conv (64->64 channels,
    28x28, batch 64) as ``tf.nn.conv2d`` in a ``tf.function``;
(b) the supernet's arithmetic per step: forward FLOPs of the traced Child supernet (TensorFlow's graph
    profiler, 2 FLOPs per multiply-accumulate), times 3 for forward + backward, times the number of
    supernet passes of the step (darts: Child arch + Child weight = 2; dcp: + Parent arch + Parent weight = 4);
(c) the median wall time of darts and dcp steps (after warm-up), images/s (training + validation
    images per step) and the achieved fraction of (a);
plus peak memory (RSS). It ends with one summary line for the default Fashion-MNIST search config.
"""

import argparse
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
from tfbnas.search.run_search import SearchConfig, build_search  # noqa: E402

# The search configs of configs/*.flags (space and batch); images are synthetic of the right shape.
CONFIGS = {
    "smoke": dict(dataset="fashion_mnist", init_channels=8, num_cells=3, nodes=2, batch_size=32),
    "fashion_mnist": dict(dataset="fashion_mnist", init_channels=8, num_cells=5, nodes=4, batch_size=64),
    "cifar": dict(dataset="cifar10", init_channels=16, num_cells=8, nodes=4, batch_size=64),
}


def median_time(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_conv_gflops(steps):
    """fwd+bwd GFLOP/s of the reference conv (2 FLOPs per MAC; backward = 2x forward)."""
    x = tf.random.normal([64, 28, 28, 64])
    k = tf.Variable(tf.random.normal([3, 3, 64, 64]) * 0.05)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, k, 1, "SAME")
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, k])

    seconds = median_time(step, steps)
    flops = 3 * 2 * 3 * 3 * 64 * 64 * 28 * 28 * 64
    return flops / seconds / 1e9


def forward_flops(net, input_shape, batch):
    """Forward FLOPs of one supernet call from the traced graph (TensorFlow's profiler)."""
    fn = tf.function(lambda x: net(x, training=True))
    graph = fn.get_concrete_function(tf.TensorSpec((batch,) + tuple(input_shape), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    stats = tf.compat.v1.profiler.profile(graph, options=opts)
    return stats.total_float_ops


def measure(config_name, preset, strategy, steps):
    spec = dict(CONFIGS[config_name])
    info = data.KNOWN_DATASETS[spec.pop("dataset")]
    config = SearchConfig(preset=preset, strategy=strategy, search_epochs=1, dcp_ggn_samples=4, **spec)
    engine = build_search(config, info, steps_per_epoch=100)
    b = config.batch_size
    rng = np.random.RandomState(0)
    batch = tuple((tf.constant(rng.randn(b, *info.image_shape).astype(np.float32)),
                   tf.constant(rng.randint(0, info.num_classes, b).astype(np.int64))) for _ in range(2))
    step = tf.function(engine.train_step)
    start = time.perf_counter()
    step(batch)
    first = time.perf_counter() - start
    seconds = median_time(lambda: step(batch), steps, warmup=1)
    passes = 4 if strategy == "dcp" else 2
    flops = 3 * passes * forward_flops(engine.child, info.image_shape, b)
    return dict(seconds=seconds, first=first, flops=flops, images=2 * b / seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="smoke,fashion_mnist,cifar")
    parser.add_argument("--presets", default="dcp,bats")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    peak = dense_conv_gflops(args.steps * 3)
    print(f"reference dense 3x3 conv 64->64, 28x28, batch 64, fwd+bwd: {peak:.1f} GFLOP/s\n")
    header = (f"{'preset':6} {'config':13} {'strategy':8} {'GFLOP/step':>10} {'step s':>8} {'first s':>8} "
              f"{'img/s':>8} {'GFLOP/s':>8} {'of peak':>8}")
    print(header)
    print("-" * len(header))
    results = {}
    for preset in args.presets.split(","):
        for config_name in args.configs.split(","):
            for strategy in ("darts", "dcp"):
                r = measure(config_name, preset, strategy, args.steps)
                results[(preset, config_name, strategy)] = r
                rate = r["flops"] / r["seconds"] / 1e9
                print(f"{preset:6} {config_name:13} {strategy:8} {r['flops'] / 1e9:10.2f} {r['seconds']:8.3f} "
                      f"{r['first']:8.1f} {r['images']:8.1f} {rate:8.1f} {rate / peak:8.1%}", flush=True)
            ratio = results[(preset, config_name, "dcp")]["seconds"] / results[(preset, config_name, "darts")]["seconds"]
            print(f"{'':6} {config_name:13} dcp/darts step-time ratio: {ratio:.2f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS: {rss:.0f} MiB")
    key = ("dcp", "fashion_mnist", "dcp") if ("dcp", "fashion_mnist", "dcp") in results else next(iter(results))
    darts_key = key[:2] + ("darts",)
    r, d = results[key], results.get(darts_key, results[key])
    print(f"SUMMARY {key[0]}/{key[1]}: dcp step {r['flops'] / r['seconds'] / 1e9 / peak:.1%} of dense-conv "
          f"throughput ({peak:.0f} GFLOP/s), darts step {d['flops'] / d['seconds'] / 1e9 / peak:.1%}; "
          f"dcp/darts step-time ratio {r['seconds'] / d['seconds']:.2f}; dcp {r['images']:.0f} img/s, "
          f"darts {d['images']:.0f} img/s; peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
