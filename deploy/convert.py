"""Convert a trained Keras (Larq) model to an LCE TFLite flatbuffer, parity-check it and report.

    python deploy/convert.py --model=RUN/child.keras --output=RUN/child.tflite
        [--int8_io] [--target=arm64|armv7|x86|xcore] [--parity_examples=256] [--dataset=fashion_mnist]
        [--normalize=auto|mean_std|unit|raw] [--min_agreement=0.99] [--float_model=parent.keras]
        [--allow_float_fallback]

Writes child.tflite, child.json and child.md (and child_float.tflite, the float reference) and prints a
short summary. Any problem ends the run with one line on stderr and exit code 1 (a bad flag: 2; the
table is in :mod:`tfbnas.errors`).
"""

import os
import sys

try:
    import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tfbnas  # noqa: F401

from absl import flags

from tfbnas import flags as tflags
from tfbnas.deploy import convert as deploy_convert

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The trained Keras model (.keras).", required=True)
flags.DEFINE_string("output", None, "Where to write the .tflite flatbuffer.", required=True)
flags.DEFINE_enum("target", "arm", sorted(deploy_convert.TARGETS),
                  "Target hardware; all but xcore give LCE's 'arm' flatbuffer, which also runs on x86.")
flags.DEFINE_bool("int8_io", False, "int8 input/output tensors (needs an int8-quantised model).")
flags.DEFINE_list("int8_default_range", None,
                  "min,max assumed for tensors without int8 statistics (latency tests only).")
flags.DEFINE_integer("parity_examples", 256, "Test images for the parity check (0 skips it).", lower_bound=0)
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset whose test images the parity check uses.")
flags.DEFINE_string("data_dir", None, "Where the data lives (IDX files or a tfds data dir).")
flags.DEFINE_enum("normalize", "auto", ["auto", "mean_std", "unit", "raw"],
                  "How images become model inputs: auto (mean_std unless the model rescales itself), "
                  "mean_std ((x/255-mean)/std, as tfbnas trains), unit (x/255), raw (0..255).")
flags.DEFINE_float("min_agreement", 0.99, "Minimum Keras-vs-TFLite top-1 agreement.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("threads", 1, "Interpreter threads for the parity check.", lower_bound=1)
flags.DEFINE_bool("allow_float_fallback", False,
                  "Deploy layers LCE cannot binarise as float ops (warning instead of error).")
flags.DEFINE_string("float_model", None, "Float reference (Parent) as .keras or .tflite for the size ratio.")
flags.DEFINE_bool("float_twin", True, "Without --float_model, convert the model with quantizers removed.")
flags.DEFINE_bool("strip_names", True, "Drop tensor names and signature defs from the flatbuffer (smaller file, "
                  "same graph); --nostrip_names keeps them for per-tensor debugging.")
flags.DEFINE_list("custom_modules", list(deploy_convert.CUSTOM_LAYER_MODULES),
                  "Modules imported before loading so custom layers deserialise.")


def main(argv):
    if len(argv) > 1:
        raise tflags.ConfigError(f"unexpected arguments {argv[1:]}; pass the model with --model=")
    int8_range = None
    if FLAGS.int8_default_range:
        try:
            int8_range = tuple(float(v) for v in FLAGS.int8_default_range)
            assert len(int8_range) == 2 and int8_range[0] < int8_range[1]
        except (ValueError, AssertionError):
            raise tflags.ConfigError("--int8_default_range takes min,max with min < max, e.g. -3,3") from None
    report = deploy_convert.convert_model_file(
        FLAGS.model, FLAGS.output, target=FLAGS.target, int8_io=FLAGS.int8_io, int8_default_range=int8_range,
        parity_examples=FLAGS.parity_examples, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        preprocess=FLAGS.normalize, min_agreement=FLAGS.min_agreement, num_threads=FLAGS.threads,
        allow_float_fallback=FLAGS.allow_float_fallback, float_model=FLAGS.float_model,
        use_float_twin=FLAGS.float_twin, custom_modules=FLAGS.custom_modules, strip_names=FLAGS.strip_names)
    print("\n".join(deploy_convert.summary_lines(report)))
    stem = os.path.splitext(FLAGS.output)[0]
    print(f"wrote {FLAGS.output}, {stem}.json, {stem}.md")


if __name__ == "__main__":
    tflags.run(main)
