"""``python -m tfbnas.search``: search a 1-bit cell architecture and write the run folder.

    python -m tfbnas.search --flagfile=configs/fashion_mnist.flags --strategy=dcp --output_dir=runs/s1
    python -m tfbnas.search --resume=runs/s1          # continue a killed run from its last checkpoint

Run folder: ``flags.txt``/``flags.json``, ``checkpoints/``, ``tensorboard/``, ``alphas.csv`` and
``alphas.png`` (architecture-parameter history), ``search_history.csv``, ``genotype.json``,
``cell_normal.png``/``cell_reduce.png`` and ``search_summary.json``.
"""

from absl import flags

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas import flags as tflags
from tfbnas.search import run_search

FLAGS = flags.FLAGS
tflags.define_all()


def main(argv):
    del argv
    run_search.main_from_flags(FLAGS)


if __name__ == "__main__":
    tflags.run(main, prog="tfbnas.search")
