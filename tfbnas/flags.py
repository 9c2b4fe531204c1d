"""absl flags shared by every tfbnas entry point, and the parser that reports flag errors in one line.

Each entry point calls the ``define_*`` groups it needs, then runs through :func:`run`, which parses
``argv`` (flagfiles included) and turns absl's multi-line usage dumps into one line naming the bad
flag and the fix, with exit code 2; errors a run raises print one line with their own exit code
(:mod:`tfbnas.errors`).
"""

import json
import os
import sys

from absl import app, flags

from tfbnas.errors import EXIT_USAGE, ConfigError, RunDirError, TfbnasError  # noqa: F401  (ConfigError: re-exported)
from tfbnas.runs import write_json

FLAGS = flags.FLAGS


def _define_once(define, name, *args, **kwargs):
    if name not in FLAGS:
        define(name, *args, **kwargs)


def define_data_flags():
    """--dataset, --data_dir, --download, --train_examples, --test_examples, --batch_size, --seed."""
    _define_once(flags.DEFINE_string, "dataset", "fashion_mnist",
                 "Dataset: fashion_mnist (offline default), cifar10, cifar100, imagenet2012 or any tfds name.")
    _define_once(flags.DEFINE_string, "data_dir", None,
                 "Where the data lives: a folder of Fashion-MNIST IDX files or a tfds data dir.")
    _define_once(flags.DEFINE_bool, "download", False, "Allow tfds to download a missing dataset (needs internet).")
    _define_once(flags.DEFINE_integer, "train_examples", None,
                 "Use a fixed random subset of this many training examples (quick runs).", lower_bound=2)
    _define_once(flags.DEFINE_integer, "test_examples", None,
                 "Use a fixed random subset of this many test examples.", lower_bound=1)
    _define_once(flags.DEFINE_integer, "batch_size", 64, "Global training batch size.", lower_bound=1)
    _define_once(flags.DEFINE_integer, "seed", 0, "Seed of data order, augmentation and initialisation.")


def define_run_flags():
    """--output_dir, --resume."""
    _define_once(flags.DEFINE_string, "output_dir", None,
                 "Run folder (created). Default: runs/<entry point>-<dataset>-<time>.")
    _define_once(flags.DEFINE_string, "resume", None,
                 "Continue the run in this folder from its last checkpoint (flags are read from its flags.txt).")


def define_space_flags():
    """--preset, --init_channels, --num_cells, --nodes."""
    _define_once(flags.DEFINE_enum, "preset", "dcp", ["dcp", "bats", "bireal"], "Op table preset of the search space.")
    _define_once(flags.DEFINE_integer, "init_channels", 16, "Channels of the first cell (C).", lower_bound=1)
    _define_once(flags.DEFINE_integer, "num_cells", 8, "Number of cells (reductions at 1/3 and 2/3).", lower_bound=1)
    _define_once(flags.DEFINE_integer, "nodes", 4, "Intermediate nodes per cell.", lower_bound=1)


def define_deploy_flags():
    """Flags of the main job's deploy stages: parity check and host benchmark."""
    _define_once(flags.DEFINE_integer, "parity_examples", 256,
                 "Real test images compared between Keras and the LCE interpreter (0: skip).", lower_bound=0)
    _define_once(flags.DEFINE_float, "min_agreement", 0.99, "Minimum Keras/TFLite top-1 agreement.",
                 lower_bound=0.0, upper_bound=1.0)
    _define_once(flags.DEFINE_integer, "benchmark_runs", 30, "Timed runs per kernel path of the host benchmark.",
                 lower_bound=1)
    _define_once(flags.DEFINE_integer, "benchmark_threads", 1, "Interpreter threads of the host benchmark.",
                 lower_bound=1)


def define_width_stage_flags():
    """--width and its settings: the main job's optional width stage (:mod:`tfbnas.width.stage`)."""
    _define_once(flags.DEFINE_enum, "width", "none", ["none", "dnal"],
                 "Width stage after Child training: none, or dnal (channel gates on the trained Child choose "
                 "per-cell widths within --width_budget; the narrowed Child is trained under its Parent).")
    if "width_budget" not in FLAGS:
        flags.DEFINE_float("width_budget", 0.5, "Width stage: the narrowed Child's OPs as a fraction of the trained "
                           "Child's, in (0, 1], filled with the channels of the highest gate scores (1: the whole "
                           "Child).")
        flags.register_validator("width_budget", lambda v: 0.0 < v <= 1.0,
                                 message="--width_budget must be in (0, 1]: a fraction of the trained Child's OPs")
    _define_once(flags.DEFINE_integer, "width_gate_epochs", 1, "Width stage: epochs of DNAL gate training.",
                 lower_bound=1)
    _define_once(flags.DEFINE_float, "width_lambda", 5e-3, "Width stage: weight of DNAL's gate penalty.",
                 lower_bound=0.0)
    _define_once(flags.DEFINE_float, "width_gate_lr", 0.1, "Width stage: SGD learning rate of the gate scores.",
                 lower_bound=0.0)
    _define_once(flags.DEFINE_integer, "width_epochs", None,
                 "Width stage: epochs of training the narrowed Child under its Parent (default: --epochs).",
                 lower_bound=1)


def define_all():
    """Every flag group, so that one flagfile (``configs/*.flags``) serves every entry point: search,
    training and the main job each read the flags they use and ignore the others."""
    from tfbnas.train.recipe import define_train_flags

    define_data_flags()
    define_run_flags()
    define_space_flags()
    define_search_flags()
    define_deploy_flags()
    define_train_flags()
    define_width_stage_flags()


def _one_line_parser(argv):
    """absl ``flags_parser``: parse or exit 2 with one line."""
    prog = os.path.basename(argv[0]) if argv else "tfbnas"
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = str(e).strip().splitlines()[0]
        print(f"{prog}: flag error: {message} (see --helpfull for the list of flags)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run(main, prog=None):
    """``absl.app.run(main)`` for every entry point: flag errors as one line with exit code 2, and any
    :class:`~tfbnas.errors.TfbnasError` as ``<prog>: error: <message>`` with the error's exit code
    (the table in :mod:`tfbnas.errors`). ``prog`` names the program (default: the script's file name)."""

    def guarded(argv):
        try:
            return main(argv)
        except TfbnasError as e:
            print(f"{prog or os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    app.run(guarded, flags_parser=_one_line_parser)


def flag_values(module_names=None) -> dict:
    """The flags an entry point defined and their current values (for ``flags.json`` in the run folder)."""
    values = {}
    for name in FLAGS:
        flag = FLAGS[name]
        module = FLAGS.find_module_defining_flag(name) or ""
        if module.startswith(("absl", "tensorflow", "tf_keras", "keras")):
            continue
        if module_names and not any(module.startswith(m) for m in module_names):
            continue
        values[name] = flag.value
    return values


def saved_flag_values(resume_dir: str, values: dict, kind: str) -> dict:
    """``values`` updated with the flags a run folder was started with (for ``--resume``).

    Raises:
        RunDirError: the folder has no ``flags.json`` (it is not a ``kind`` run folder).
    """
    saved = os.path.join(resume_dir, "flags.json")
    if not os.path.exists(saved):
        raise RunDirError(f"--resume={resume_dir} has no flags.json: it is not a {kind} run folder")
    with open(saved) as f:
        return {**values, **{k: v for k, v in json.load(f).items() if k not in ("resume", "output_dir")}}


def write_flags(run_dir: str, values: dict):
    """Writes ``flags.txt`` (a reusable flagfile) and ``flags.json`` into the run folder."""
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "flags.json"), values, sort_keys=True)
    with open(os.path.join(run_dir, "flags.txt"), "w") as f:
        for name, value in sorted(values.items()):
            if value is None:
                continue
            if isinstance(value, bool):
                f.write(f"--{name}\n" if value else f"--no{name}\n")
            elif isinstance(value, (list, tuple)):
                f.write(f"--{name}={','.join(str(v) for v in value)}\n")
            else:
                f.write(f"--{name}={value}\n")


def define_search_flags():
    """Flags of ``python -m tfbnas.search``: strategy, epochs, optimisers, distribution, DCP/BATS switches."""
    d = _define_once
    d(flags.DEFINE_enum, "strategy", "dcp", ["dcp", "bats", "darts"], "Search strategy.")
    d(flags.DEFINE_integer, "search_epochs", 10, "Search epochs.", lower_bound=1)
    d(flags.DEFINE_integer, "search_examples", None,
      "Training examples the search uses (a fixed subset; default: --train_examples).", lower_bound=2)
    d(flags.DEFINE_integer, "search_steps_per_epoch", None,
      "Search steps per epoch (default: one pass over search-train).", lower_bound=1)
    d(flags.DEFINE_integer, "arch_frozen_epochs", 0,
      "Leading epochs that train weights only: no architecture variable (Child or Parent) moves; every strategy.",
      lower_bound=0)
    d(flags.DEFINE_float, "arch_t_start", 1.0,
      "darts/dcp: softmax temperature T of softmax(alpha/T) during the warm-up and at the first searching epoch "
      "(bats uses --bats_t_start).", lower_bound=1e-3)
    d(flags.DEFINE_float, "arch_t_end", 1.0,
      "darts/dcp: temperature at the last epoch; geometric in between (bats uses --bats_t_end).", lower_bound=1e-3)
    d(flags.DEFINE_float, "arch_lr", 3e-4, "Adam learning rate of the architecture parameters.", lower_bound=0.0)
    d(flags.DEFINE_float, "arch_beta1", 0.5, "Adam beta1 of the architecture optimiser.", lower_bound=0.0)
    d(flags.DEFINE_float, "arch_weight_decay", 1e-3, "L2 decay of the architecture parameters.", lower_bound=0.0)
    d(flags.DEFINE_float, "weight_lr", 0.025, "Initial SGD learning rate of the weights (cosine decay).",
      lower_bound=0.0)
    d(flags.DEFINE_float, "weight_lr_min", 0.001, "Final SGD learning rate of the weights.", lower_bound=0.0)
    d(flags.DEFINE_float, "weight_momentum", 0.9, "SGD momentum.", lower_bound=0.0)
    d(flags.DEFINE_float, "search_weight_decay", 3e-4, "L2 decay of real-valued supernet weights.", lower_bound=0.0)
    d(flags.DEFINE_float, "grad_clip", 5.0, "Global-norm clip of weight gradients (0: off).", lower_bound=0.0)
    d(flags.DEFINE_enum, "distribute", "default", ["default", "mirrored", "multiworker"],
      "Search and Child training on: default (one device), mirrored (every local GPU, or the --cpu_devices "
      "logical CPUs) or multiworker (MultiWorkerMirroredStrategy; TF_CONFIG names the cluster and this worker; "
      "only the chief writes the run folder). --batch_size is the global batch. See docs/distributed.md.")
    d(flags.DEFINE_bool, "deterministic", True, "Deterministic ops (exact resume; slightly slower).")
    d(flags.DEFINE_bool, "graph_optimizations", True,
      "Grappler graph optimisations of the traced step (off: about half the start-up time on CPU).")
    d(flags.DEFINE_integer, "cpu_devices", None,
      "Split the CPU into this many logical devices (to run --distribute=mirrored without GPUs).", lower_bound=1)
    # DCP-NAS
    d(flags.DEFINE_bool, "dcp_kl", True, "DCP: Parent-Child KL term in the Child's weight objective.")
    d(flags.DEFINE_float, "dcp_kl_weight", 1.0, "DCP: weight of the KL term.", lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_kl_arch", False, "DCP: the KL term in the architecture objective too (it rewards "
                                               "ops binarisation does not change: pooling, skip).")
    d(flags.DEFINE_bool, "dcp_tangent", True, "DCP: tangent propagation towards the Parent's direction.")
    d(flags.DEFINE_float, "dcp_tangent_weight", 0.5,
      "DCP: lambda of the tangent term (scale-aware: its norm relative to the architecture gradient).",
      lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_tangent_normalize", True,
      "DCP: scale-aware tangent term g + lambda*||g||*h/||h||; off: the literal g + 2*lambda*h.")
    d(flags.DEFINE_bool, "dcp_ggn", False, "DCP: Gauss-Newton (outer products of micro-batch gradients) for H "
                                           "in the tangent term; off: H = I.")
    d(flags.DEFINE_integer, "dcp_ggn_samples", 4, "DCP: micro-batches for the GGN outer products.", lower_bound=1)
    d(flags.DEFINE_bool, "dcp_decoupled", True, "DCP: decoupled-optimisation backtracking of alphas.")
    d(flags.DEFINE_float, "dcp_decoupled_weight", 0.5,
      "DCP: rho, the correction's norm relative to the architecture step (times psi; scale-aware mode).",
      lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_decoupled_normalize", True,
      "DCP: scale-aware correction and RMS-normalised psi steps; off: the literal eta1*eta2*psi*alpha.")
    d(flags.DEFINE_float, "dcp_tau", 0.5, "DCP: weight-norm rank threshold (0-1) of the backtracking.",
      lower_bound=0.0, upper_bound=0.999)
    d(flags.DEFINE_float, "dcp_psi_lr", 0.01, "DCP: learning rate of the learnable psi.", lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_inherit", True, "DCP: Parent/Child inheritance at epoch boundaries (Algorithm 10).")
    d(flags.DEFINE_bool, "dcp_arch_from_parent", True,
      "DCP: each epoch begin the Child takes the Parent's architecture (plus its own epoch of updates) and the "
      "Parent the result; off: only the Parent takes the Child's architecture at each epoch end.")
    d(flags.DEFINE_bool, "dcp_inherit_weights", False,
      "DCP: each epoch begin the Child also takes the Parent's weights and BatchNorm statistics (the book); off: "
      "the binary Child keeps its own (real-valued statistics make its binary convs restart weak).")
    # BATS
    d(flags.DEFINE_float, "bats_t_start", 1.0, "BATS: softmax temperature at the first epoch.", lower_bound=1e-3)
    d(flags.DEFINE_float, "bats_t_end", 0.2, "BATS: softmax temperature at the last epoch.", lower_bound=1e-3)
    d(flags.DEFINE_integer, "bats_real_epochs", 0, "BATS: leading real-valued epochs before the 1-bit search.",
      lower_bound=0)
    d(flags.DEFINE_bool, "bats_teacher", True, "BATS: real-valued teacher (KL) during the search.")
    d(flags.DEFINE_float, "bats_kl_weight", 1.0, "BATS: weight of the teacher KL.", lower_bound=0.0)
