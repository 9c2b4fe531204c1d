"""``python -m tfbnas.train``: train the 1-bit Child of a searched genotype with the Parent as teacher.

    python -m tfbnas.train --genotype=runs/s1/genotype.json --flagfile=configs/fashion_mnist.flags \\
        --epochs=20 --output_dir=runs/t1
    python -m tfbnas.train --genotype=runs/s1/genotype.json --two_stage --widths=0.5,1,1,1,1,1,1,1
    python -m tfbnas.train --resume=runs/t1          # continue a killed run from its last checkpoint

The space flags (--preset, --init_channels, --num_cells, --nodes) default to the search run's
flags.json beside the genotype. Run folder: ``flags.txt``/``flags.json``, ``genotype.json``,
``space.json``, ``checkpoints/``, ``history.csv``, ``curves.png``, ``parent.keras``, ``child.keras``,
``metrics.json`` (test top-1/top-5), ``larq_summary.txt`` and ``cost.md``. See docs/training.md.
"""

from absl import flags, logging

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
from tfbnas import flags as tflags
from tfbnas.train import recipe

FLAGS = flags.FLAGS
tflags.define_all()  # one flagfile serves search, training and the main job


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    # Evaluating several models re-traces test functions; TensorFlow's retracing notes are noise here.
    tf.get_logger().setLevel("ERROR")
    recipe.main_from_flags(FLAGS)


if __name__ == "__main__":
    tflags.run(main, prog="tfbnas.train")
