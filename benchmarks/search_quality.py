"""The honest NAS comparison: the searched Child vs random genotypes of the same space at matched OPs,
and vs a hand-designed 1-bit CNN, all trained with one recipe in one run.

    python benchmarks/search_quality.py --genotype=RUN/search/genotype.json --flagfile=configs/fashion_mnist.flags \
        [--random=5] [--epochs=...] [--ops_tolerance=0.25]

Random genotypes are drawn uniformly (two distinct inputs per node, a non-zero op per edge, both from
the preset); from many draws the ``--random`` ones whose Child OPs lie closest to the searched Child's
(within ``--ops_tolerance``) are kept. The hand-designed baseline is ``tfbnas.baselines.binary_resnet``
with its widths scaled to the Child's OPs. Every model is trained with ``tfbnas.train.recipe.train_model``
(same data, epochs, Parent teacher for the cell models — the baseline distils from its real twin),
converted with LCE and timed on the host. The table gives test top-1, OPs, TFLite size and latency, and
the rank of the searched Child among the random genotypes.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfbnas  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from tfbnas import flags as tflags  # noqa: E402

FLAGS = flags.FLAGS
tflags.define_all()
flags.DEFINE_integer("random", 5, "Random genotypes to train.", lower_bound=1)
flags.DEFINE_integer("draws", 400, "Random genotypes drawn to find OPs-matched ones.", lower_bound=1)
flags.DEFINE_float("ops_tolerance", 0.25, "Relative OPs window around the searched Child.", lower_bound=0.0)
flags.DEFINE_string("results_dir", None, "Where models and the table go (default: a temp folder).")


def random_genotype(preset, nodes, rng):
    from tfbnas.space.genotype import Genotype
    from tfbnas.space.ops import preset_ops

    ops = [op for op in preset_ops(preset) if op != "none"]

    def cell():
        edges = []
        for node in range(nodes):
            for source in rng.choice(2 + node, size=2, replace=False):
                edges.append((str(rng.choice(ops)), int(source)))
        return edges

    return Genotype(preset, nodes, cell(), cell())


def child_ops(genotype, kwargs):
    from tfbnas.cost import model_cost
    from tfbnas.models import build_child

    return model_cost(build_child(genotype, **kwargs)).totals()["ops"]


def deploy_figures(model_path, work_dir):
    from tfbnas.deploy.benchmark import host_latency
    from tfbnas.deploy.convert import convert_model_file

    output = os.path.join(work_dir, "model.tflite")
    convert_model_file(model_path, output, parity_examples=0, use_float_twin=False)
    latency = host_latency(output, "indirect_bgemm", runs=20, warmup=3)
    return os.path.getsize(output), latency.median_ms


def train_one(name, model, parent, config, train_data, root):
    from tfbnas.train.recipe import train_model

    run_dir = os.path.join(root, name)
    start = time.time()
    result = train_model(model, parent, config, run_dir, train_data=train_data, name="model", log=lambda *_: None,
                         verbose=0)
    size, latency = deploy_figures(os.path.join(run_dir, "model.keras"), run_dir)
    row = {"name": name, "top1": result.metrics["test_top1"], "ops": result.metrics["cost"]["ops"],
           "size_kib": size / 1024, "latency_ms": latency, "seconds": time.time() - start}
    print(f"  {name:12} top-1 {row['top1']:.4f}  OPs {row['ops'] / 1e6:7.2f}M  {row['size_kib']:7.1f} KiB  "
          f"{row['latency_ms']:7.3f} ms  ({row['seconds']:.0f} s)", flush=True)
    return row


def main(argv):
    del argv
    from tfbnas.baselines import binary_resnet
    from tfbnas.cost import model_cost
    from tfbnas.models import build_child, build_parent
    from tfbnas.space.genotype import Genotype
    from tfbnas.train.recipe import TrainConfig, TrainData, real_twin, resolve_space

    if not FLAGS.genotype:
        raise SystemExit("search_quality.py: error: --genotype=RUN/search/genotype.json is required "
                         "(python -m tfbnas.search writes it)")
    values = tflags.flag_values(["tfbnas", "__main__"])
    config, searched, _ = resolve_space(TrainConfig.from_flags({**values, "genotype": FLAGS.genotype}))
    train_data = TrainData(config)
    info = train_data.info
    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=config.init_channels,
                  num_cells=config.num_cells)
    target = child_ops(searched, kwargs)
    rng = np.random.RandomState(config.seed)
    candidates = []
    for _ in range(FLAGS.draws):
        g = random_genotype(searched.preset, searched.nodes, rng)
        ops = child_ops(g, kwargs)
        if abs(ops - target) <= FLAGS.ops_tolerance * target:
            candidates.append((abs(ops - target), g))
        if len(candidates) >= 4 * FLAGS.random:
            break
    candidates.sort(key=lambda c: c[0])
    randoms = [g for _, g in candidates[:FLAGS.random]]
    print(f"searched Child: {target / 1e6:.2f} M OPs; {len(randoms)} random genotypes within "
          f"±{FLAGS.ops_tolerance:.0%} kept of {FLAGS.draws} draws")

    # hand-designed baseline: scale binary_resnet's widths until its OPs match the Child's
    scale, base = 1.0, None
    for _ in range(12):
        widths = tuple(max(8, int(round(w * scale / 8)) * 8) for w in (32, 64, 128))
        base = binary_resnet(info.image_shape, info.num_classes, widths=widths)
        ops = model_cost(base).totals()["ops"]
        if abs(ops - target) <= 0.1 * target:
            break
        scale *= (target / ops) ** 0.5

    root = FLAGS.results_dir or tempfile.mkdtemp(prefix="search_quality-")
    os.makedirs(root, exist_ok=True)
    rows = [train_one("searched", build_child(searched, **kwargs), build_parent(searched, **kwargs), config,
                      train_data, root)]
    for i, g in enumerate(randoms):
        g.save(os.path.join(root, f"random{i}.json"))
        rows.append(train_one(f"random{i}", build_child(g, **kwargs), build_parent(g, **kwargs), config,
                              train_data, root))
    rows.append(train_one("hand-designed", base, real_twin(base), config, train_data, root))

    random_top1 = [r["top1"] for r in rows if r["name"].startswith("random")]
    rank = 1 + sum(t > rows[0]["top1"] for t in random_top1)
    print("\n| model | test top-1 | OPs (M) | TFLite KiB | latency ms (host, indirect bgemm) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['top1']:.4f} | {r['ops'] / 1e6:.2f} | {r['size_kib']:.1f} | {r['latency_ms']:.3f} |")
    print(f"| random best / mean | {max(random_top1):.4f} / {np.mean(random_top1):.4f} | | | |")
    with open(os.path.join(root, "search_quality.json"), "w") as f:
        json.dump({"rows": rows, "rank": rank, "random": len(random_top1)}, f, indent=2)
    print(f"\nSUMMARY searched Child top-1 {rows[0]['top1']:.4f} ranks {rank} of {len(random_top1) + 1} against "
          f"{len(random_top1)} OPs-matched random genotypes (best {max(random_top1):.4f}, mean "
          f"{np.mean(random_top1):.4f}); hand-designed 1-bit CNN {rows[-1]['top1']:.4f} at "
          f"{rows[-1]['ops'] / 1e6:.2f} M OPs; results in {root}")


if __name__ == "__main__":
    tflags.run(main)
