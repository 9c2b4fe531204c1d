"""A searched 1-bit Child against the hand-designed 1-bit ResNet of the same OPs, same training recipe.

In one run: (a) the Child of a genotype and (b) ``tfbnas.baselines.binary_resnet`` with stage widths
``(w, 2w, 4w)``, ``w`` chosen so its OPs (``tfbnas.cost``: BOPs/64 + FLOPs) are closest to the
Child's, are trained with the same :mod:`tfbnas.train` recipe (same flags: Parent/real twin as
teacher, schedule, epochs, held-out selection) on the full training set, and a table of test top-1,
OPs, BOPs, FLOPs, parameters and wall time is printed, followed by a summary line.

Get a genotype from a search run first, e.g. the smoke search (a few minutes on 2 cores)::

    python -m tfbnas.search --flagfile=configs/smoke.flags --output_dir=runs/smoke
    python benchmarks/child_vs_baseline.py runs/smoke/genotype.json --dataset=fashion_mnist \\
        --epochs=3 --parent_epochs=1 --init_channels=16 --num_cells=5 --output_dir=runs/bench
    # the default's Child recipe (the search flags in the flagfile are read and ignored):
    python benchmarks/child_vs_baseline.py runs/s0/genotype.json --flagfile=configs/fashion_mnist.flags

Space flags not given default to the search run's flags.json (as in ``python -m tfbnas.train``).
Outputs (``--output_dir``): ``child/`` and ``baseline/`` run folders (models, curves, metrics),
``results.json`` and ``results.md``.
"""

import json
import os
import sys
import time

from absl import flags, logging

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
from tfbnas import flags as tflags
from tfbnas import runs
from tfbnas.baselines import binary_resnet
from tfbnas.cost import model_cost
from tfbnas.models import build_child, build_parent
from tfbnas.train import recipe

FLAGS = flags.FLAGS
tflags.define_all()  # one flagfile serves every entry point: configs/*.flags work here too
flags.DEFINE_integer("baseline_blocks", 2, "Binary conv blocks per stage of the baseline ResNet.", lower_bound=1)


def matched_baseline_width(target_ops: float, input_shape, num_classes: int, blocks: int, low=1, high=512):
    """The stage-0 width ``w`` of ``binary_resnet(widths=(w, 2w, 4w))`` whose OPs are closest to ``target_ops``."""

    def ops(w):
        return model_cost(binary_resnet(input_shape, num_classes, (w, 2 * w, 4 * w), blocks)).ops

    while high - low > 1:  # OPs grow with w: bisect for the first width at or above the target
        mid = (low + high) // 2
        if ops(mid) < target_ops:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda w: abs(ops(w) - target_ops))


def row(name, metrics, cost, seconds):
    return {"model": name, "test_top1": metrics["test_top1"], "test_top5": metrics["test_top5"],
            "ops": cost.ops, "bops": cost.bops, "flops": cost.flops, "binary_params": cost.binary_params,
            "real_params": cost.real_params, "seconds": seconds}


def table(rows):
    lines = ["| model | test top-1 | test top-5 | OPs | BOPs | FLOPs | params (binary + real) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['test_top1']:.4f} | {r['test_top5']:.4f} | {r['ops'] / 1e6:.3f}M | "
                     f"{r['bops'] / 1e6:.2f}M | {r['flops'] / 1e6:.3f}M | {r['binary_params']:,} + "
                     f"{r['real_params']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    values = tflags.flag_values(["tfbnas", "__main__"])
    for name in recipe.SPACE_FIELDS:
        if not FLAGS[name].present:
            values[name] = None
    if len(argv) > 1:
        values["genotype"] = argv[1]
    config, genotype, sources = recipe.resolve_space(recipe.TrainConfig.from_flags(values))
    config.check()
    out = runs.make_run_dir(FLAGS.output_dir, "bench", config.dataset)
    recipe.configure_runtime(config)
    train_data = recipe.TrainData(config)
    info = train_data.info
    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=config.init_channels,
                  num_cells=config.num_cells, widths=config.widths)
    teacher = config.distill_alpha > 0 or config.init_from_parent

    child = build_child(genotype, **kwargs)
    child_cost = model_cost(child)
    width = matched_baseline_width(child_cost.ops, info.image_shape, info.num_classes, FLAGS.baseline_blocks)
    print(f"Child ({genotype.preset}, {config.num_cells} cells, C={config.init_channels}): {child_cost.summary_line()}")
    print(f"baseline binary_resnet widths ({width}, {2 * width}, {4 * width}) x {FLAGS.baseline_blocks} blocks "
          "matches its OPs")

    start = time.time()
    child_result = recipe.train_model(child, build_parent(genotype, **kwargs) if teacher else None, config,
                                      os.path.join(out, "child"), train_data=train_data, name="child")
    child_seconds = time.time() - start

    tf.keras.utils.set_random_seed(config.seed)
    baseline = binary_resnet(info.image_shape, info.num_classes, (width, 2 * width, 4 * width), FLAGS.baseline_blocks)
    baseline_cost = model_cost(baseline)
    start = time.time()
    baseline_result = recipe.train_model(baseline, recipe.real_twin(baseline) if teacher else None, config,
                                         os.path.join(out, "baseline"), train_data=train_data, name="baseline")
    baseline_seconds = time.time() - start

    rows = [row("searched Child", child_result.metrics, child_cost, child_seconds),
            row(f"binary_resnet ({width},{2 * width},{4 * width})", baseline_result.metrics, baseline_cost,
                baseline_seconds)]
    gap = 100 * (rows[0]["test_top1"] - rows[1]["test_top1"])
    recipe_line = (f"{config.epochs} epochs{' x 2 stages' if config.two_stage else ''}, parent "
                   f"{config.phase_epochs('parent') if teacher else 0} epochs, alpha {config.distill_alpha}, "
                   f"T {config.distill_temperature}, {config.optimizer} {config.peak_lr:g} {config.lr_schedule}, "
                   f"{train_data.sizes['train']} train / {train_data.sizes['val']} val / "
                   f"{train_data.sizes['test']} test")
    summary = (f"Child {'beats' if gap > 0 else 'trails'} the matched-OPs baseline by {abs(gap):.2f} top-1 points "
               f"({rows[0]['test_top1']:.4f} vs {rows[1]['test_top1']:.4f}) at {rows[0]['ops'] / rows[1]['ops']:.2f}x "
               f"its OPs; recipe: {recipe_line}")
    text = table(rows)
    print("\n" + text + "\n\n" + summary)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n\n" + summary + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary, "space": {k: getattr(config, k) for k in recipe.SPACE_FIELDS},
                   "space_from": sources, "baseline_width": width, "command": " ".join(sys.argv)}, f, indent=2)
    print(f"results: {out}")


if __name__ == "__main__":
    tflags.run(main, prog="child_vs_baseline")
