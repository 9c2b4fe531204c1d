"""Latency of a converted model on the host (LCE's interpreter) and on an ARM board (lce_benchmark_model).

    python deploy/benchmark.py child.tflite [--threads=N] [--runs=N] [--warmup=N]
        [--float_model=child_float.tflite] [--paths=default,indirect_bgemm,reference]
        [--lce_benchmark_model=PATH] [--ssh=user@host [--ssh_port=22] [--ssh_key=KEY] [--remote_dir=DIR]]

Prints a Markdown table (median and p90 latency per kernel path) and writes it, with the raw figures as
JSON, next to the model (child_benchmark.md / child_benchmark.json). Errors: one line, exit code 1
(a bad flag: 2; the table is in :mod:`tfbnas.errors`).
"""

import json
import os
import sys

try:
    import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tfbnas  # noqa: F401

from absl import flags

from tfbnas import flags as tflags
from tfbnas.deploy import DeployError
from tfbnas.deploy import benchmark as bench

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 1, "CPU threads.", lower_bound=1)
flags.DEFINE_integer("runs", 50, "Timed inferences per kernel path.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed inferences before timing.", lower_bound=1)
flags.DEFINE_string("float_model", None, "Float reference .tflite (e.g. child_float.tflite) for the float row.")
flags.DEFINE_list("paths", list(bench.PATHS), "LCE kernel paths: default, indirect_bgemm, reference.")
flags.DEFINE_bool("host", True, "Time on this machine through lce.testing.Interpreter.")
flags.DEFINE_string("lce_benchmark_model", None,
                    "LCE's benchmark tool (default: lce_benchmark_model on PATH). With --ssh: a local file is "
                    "copied to the board, anything else is the command on the board.")
flags.DEFINE_string("ssh", None, "Run lce_benchmark_model on this board (user@host) over ssh.")
flags.DEFINE_integer("ssh_port", None, "ssh port of the board.")
flags.DEFINE_string("ssh_key", None, "Private key for the board.")
flags.DEFINE_list("ssh_options", [], "Extra ssh -o options, e.g. StrictHostKeyChecking=accept-new.")
flags.DEFINE_string("remote_dir", "/tmp/tfbnas-deploy", "Folder on the board for the copied files.")
flags.DEFINE_integer("timeout", 600, "Seconds allowed per benchmark-tool run.", lower_bound=1)
flags.DEFINE_string("json_out", None, "JSON output (default: <model>_benchmark.json).")
flags.DEFINE_string("markdown_out", None, "Markdown output (default: <model>_benchmark.md).")


def main(argv):
    if len(argv) != 2:
        raise tflags.ConfigError("pass exactly one model: python deploy/benchmark.py child.tflite [flags]")
    model = argv[1]
    rows = []
    if FLAGS.host:
        rows += bench.benchmark_host(model, threads=FLAGS.threads, runs=FLAGS.runs, warmup=FLAGS.warmup,
                                     paths=FLAGS.paths, float_model=FLAGS.float_model)
    # Over ssh the tool must be the board's: never pick up a host build from the local PATH.
    binary = FLAGS.lce_benchmark_model if FLAGS.ssh else bench.find_benchmark_binary(FLAGS.lce_benchmark_model)
    if FLAGS.ssh or binary:
        ssh = None
        if FLAGS.ssh:
            ssh = bench.SshTarget(FLAGS.ssh, FLAGS.ssh_port, FLAGS.ssh_key, tuple(FLAGS.ssh_options))
        rows += bench.benchmark_board(model, binary=binary, threads=FLAGS.threads, runs=FLAGS.runs,
                                      warmup=FLAGS.warmup, paths=FLAGS.paths, float_model=FLAGS.float_model,
                                      ssh=ssh, remote_dir=FLAGS.remote_dir, timeout=FLAGS.timeout)
    if not rows:
        raise DeployError("nothing to time: --nohost and no lce_benchmark_model; drop --nohost or pass "
                          "--lce_benchmark_model / --ssh")
    table = bench.markdown_table(rows)
    stem = os.path.splitext(model)[0]
    json_out = FLAGS.json_out or stem + "_benchmark.json"
    markdown_out = FLAGS.markdown_out or stem + "_benchmark.md"
    with open(json_out, "w") as f:
        json.dump({"model": model, "threads": FLAGS.threads, "runs": FLAGS.runs, "warmup": FLAGS.warmup,
                   "results": [r.to_dict() for r in rows]}, f, indent=2)
    with open(markdown_out, "w") as f:
        f.write(f"# Latency: {os.path.basename(model)}\n\n{table}\n")
    print(table)
    print(f"wrote {markdown_out}, {json_out}")


if __name__ == "__main__":
    tflags.run(main)
