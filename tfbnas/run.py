"""The main job: data → 1-bit model → test accuracy, stage by stage, into one run folder.

    python -m tfbnas.run --flagfile=configs/fashion_mnist.flags
"""

import json
import os
import sys

from absl import flags, logging

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas import data, flags as tflags, runs

FLAGS = flags.FLAGS
tflags.define_data_flags()
tflags.define_run_flags()
flags.DEFINE_integer("baseline_epochs", 1, "Epochs of the hand-designed 1-bit baseline.", lower_bound=0)
flags.DEFINE_float("baseline_lr", 2e-3, "Adam learning rate of the baseline.", lower_bound=0.0)


def train_baseline(splits, epochs: int, lr: float, run_dir: str):
    """Trains the hand-designed binary ResNet with plain ``model.fit``; returns (model, test metrics)."""
    import tensorflow as tf

    from tfbnas.baselines import binary_resnet

    tf.keras.utils.set_random_seed(FLAGS.seed)
    model = binary_resnet(splits.info.image_shape, splits.info.num_classes)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(lr),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = splits.sizes["train"] // FLAGS.batch_size
    model.fit(splits.train, epochs=epochs, steps_per_epoch=steps, verbose=2 if not sys.stdout.isatty() else 1,
              callbacks=[tf.keras.callbacks.CSVLogger(os.path.join(run_dir, "baseline_history.csv"))])
    loss, accuracy = model.evaluate(splits.test, verbose=0)
    return model, {"test_loss": float(loss), "test_accuracy": float(accuracy)}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    run_dir = runs.make_run_dir(FLAGS.output_dir, "run", FLAGS.dataset)
    tflags.write_flags(run_dir, tflags.flag_values(["tfbnas"]))
    timer = runs.StageTimer()
    summary = {"run_dir": run_dir}
    try:
        with timer.stage("data"):
            splits = data.make_splits(FLAGS.dataset, FLAGS.batch_size, FLAGS.data_dir, FLAGS.train_examples,
                                      FLAGS.test_examples, FLAGS.seed, FLAGS.download)
            s = splits.sizes
            print(f"{FLAGS.dataset}: {s['train']} train = {s['search_train']} search-train + "
                  f"{s['search_val']} search-val, {s['test']} test; images {splits.info.image_shape}, "
                  f"{splits.info.num_classes} classes")
            summary["sizes"] = s
        if FLAGS.baseline_epochs:
            with timer.stage("1-bit baseline (model.fit)"):
                _, metrics = train_baseline(splits, FLAGS.baseline_epochs, FLAGS.baseline_lr, run_dir)
                print(f"1-bit baseline test accuracy: {metrics['test_accuracy']:.4f}")
                summary["baseline"] = metrics
    except (data.DatasetNotFoundError, data.IdxFormatError, runs.RunDirError) as e:
        print(f"tfbnas.run: error: {e}", file=sys.stderr)
        sys.exit(1)
    summary["stage_seconds"] = timer.times
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nrun folder: {run_dir}")


def cli():
    tflags.run(main)


if __name__ == "__main__":
    cli()
