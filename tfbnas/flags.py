"""absl flags shared by every tfbnas entry point, and the parser that reports flag errors in one line.

Each entry point calls the ``define_*`` groups it needs, then runs through :func:`run`, which parses
``argv`` (flagfiles included) and turns absl's multi-line usage dumps into one line naming the bad
flag and the fix, with exit code 2; errors a run raises print one line with their own exit code
(:mod:`tfbnas.errors`).

Every flag group lives here (data, run, space, runtime, search, train, deploy, the main job's width
stage, and ``python -m tfbnas.width``); a flag that is a field of a run's configuration takes its
default from that dataclass in :mod:`tfbnas.config`, so each default is written once.
"""

import json
import os
import sys

from absl import app, flags

from tfbnas.config import (AUGMENTATIONS, DISTRIBUTE, OPTIMIZERS, SCHEDULES, STAGE1_MODES, STRATEGIES, DataConfig,
                           RuntimeConfig, SearchConfig, SpaceConfig, TrainConfig)
from tfbnas.errors import EXIT_USAGE, ConfigError, RunDirError, TfbnasError  # noqa: F401  (ConfigError: re-exported)
from tfbnas.runs import write_json

FLAGS = flags.FLAGS
_DATA, _SPACE, _RUNTIME = DataConfig(), SpaceConfig(), RuntimeConfig()
_SEARCH, _TRAIN = SearchConfig(), TrainConfig()


def _define_once(define, name, *args, **kwargs):
    if name not in FLAGS:
        define(name, *args, **kwargs)


def define_data_flags():
    """--dataset, --data_dir, --download, --train_examples, --test_examples, --batch_size, --seed."""
    _define_once(flags.DEFINE_string, "dataset", _DATA.dataset,
                 "Dataset: fashion_mnist (offline default), cifar10, cifar100, imagenet2012 or any tfds name.")
    _define_once(flags.DEFINE_string, "data_dir", _DATA.data_dir,
                 "Where the data lives: a folder of Fashion-MNIST IDX files or a tfds data dir.")
    _define_once(flags.DEFINE_bool, "download", _DATA.download,
                 "Allow tfds to download a missing dataset (needs internet).")
    _define_once(flags.DEFINE_integer, "train_examples", _DATA.train_examples,
                 "Use a fixed random subset of this many training examples (quick runs).", lower_bound=2)
    _define_once(flags.DEFINE_integer, "test_examples", _DATA.test_examples,
                 "Use a fixed random subset of this many test examples.", lower_bound=1)
    _define_once(flags.DEFINE_integer, "batch_size", _DATA.batch_size, "Global training batch size.", lower_bound=1)
    _define_once(flags.DEFINE_integer, "seed", _DATA.seed, "Seed of data order, augmentation and initialisation.")


def define_run_flags():
    """--output_dir, --resume."""
    _define_once(flags.DEFINE_string, "output_dir", None,
                 "Run folder (created). Default: runs/<entry point>-<dataset>-<time>.")
    _define_once(flags.DEFINE_string, "resume", None,
                 "Continue the run in this folder from its last checkpoint (flags are read from its flags.txt).")


def define_space_flags():
    """--preset, --init_channels, --num_cells, --nodes."""
    _define_once(flags.DEFINE_enum, "preset", _SPACE.preset, ["dcp", "bats", "bireal"],
                 "Op table preset of the search space.")
    _define_once(flags.DEFINE_integer, "init_channels", _SPACE.init_channels,
                 "Channels of the first cell (C).", lower_bound=1)
    _define_once(flags.DEFINE_integer, "num_cells", _SPACE.num_cells,
                 "Number of cells (reductions at 1/3 and 2/3).", lower_bound=1)
    _define_once(flags.DEFINE_integer, "nodes", _SPACE.nodes, "Intermediate nodes per cell.", lower_bound=1)


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


def define_train_flags():
    """Flags of ``python -m tfbnas.train`` (besides the data, run, space and runtime groups)."""
    d, t = _define_once, _TRAIN
    d(flags.DEFINE_string, "genotype", t.genotype, "genotype.json of a search run (python -m tfbnas.search writes "
      "RUN/genotype.json); the space flags default to RUN/flags.json.")
    d(flags.DEFINE_integer, "child_init_channels", t.child_init_channels, "Channels C of the trained Child's first "
      "cells (default: --init_channels). In the main job --init_channels sizes the searched supernet and this the "
      "Child trained from its genotype; its Parent twin follows.", lower_bound=1)
    d(flags.DEFINE_integer, "child_num_cells", t.child_num_cells, "Cells of the trained Child (default: "
      "--num_cells; reductions at 1/3 and 2/3), as --child_init_channels.", lower_bound=1)
    d(flags.DEFINE_list, "widths", t.widths, "Per-cell channel multipliers of the Child, one per cell (e.g. 0.5,1,1).")
    d(flags.DEFINE_integer, "epochs", t.epochs, "Epochs of the Child (of each stage with --two_stage).", lower_bound=1)
    d(flags.DEFINE_integer, "parent_epochs", t.parent_epochs, "Epochs of the real-valued Parent teacher (default: "
      "--epochs; 0: no teacher).", lower_bound=0)
    d(flags.DEFINE_string, "parent", t.parent, "A trained Parent (.keras) to use as teacher instead of training one.")
    d(flags.DEFINE_bool, "init_from_parent", t.init_from_parent, "Start the Child from the Parent's weights (same "
      "shapes).")
    d(flags.DEFINE_bool, "init_from_search", t.init_from_search, "Start the Child (and a Parent that trains here) "
      "from the searched supernets' weights of the ops the genotype keeps (DCP-NAS's weight inheritance): the "
      "search run's inherited_child.keras / inherited_parent.keras beside --genotype.")
    d(flags.DEFINE_float, "distill_alpha", t.distill_alpha, "Weight of the distillation term (1 - alpha weights the "
      "cross-entropy); 0: labels only.", lower_bound=0.0, upper_bound=1.0)
    d(flags.DEFINE_float, "distill_temperature", t.distill_temperature, "Softmax temperature T of the distillation "
      "term.", lower_bound=1e-3)
    d(flags.DEFINE_bool, "two_stage", t.two_stage, "Two-stage training (Real-to-Binary/ReActNet): one side binary "
      "first, then fully binary from the stage-1 weights.")
    d(flags.DEFINE_integer, "stage1_epochs", t.stage1_epochs, "Epochs of stage 1 (default: --epochs).", lower_bound=1)
    d(flags.DEFINE_enum, "stage1_binary", t.stage1_binary, list(STAGE1_MODES),
      "What is binary in stage 1: 'activations' (binary activations, real weights: the papers' order) or "
      "'weights' (binary weights, real activations).")
    d(flags.DEFINE_enum, "optimizer", t.optimizer, list(OPTIMIZERS), "Optimizer of every phase.")
    d(flags.DEFINE_float, "lr", t.lr, "Peak learning rate (default: 2e-3 for adam, 0.05 for sgd).", lower_bound=0.0)
    d(flags.DEFINE_enum, "lr_schedule", t.lr_schedule, list(SCHEDULES), "Learning-rate schedule of each phase.")
    d(flags.DEFINE_integer, "warmup_epochs", t.warmup_epochs, "Linear warm-up epochs of the cosine schedule.",
      lower_bound=0)
    d(flags.DEFINE_float, "weight_decay", t.weight_decay, "Decoupled weight decay of real-valued kernels (never latent "
      "binary kernels, BatchNorm or biases).", lower_bound=0.0)
    d(flags.DEFINE_float, "momentum", t.momentum, "SGD momentum.", lower_bound=0.0)
    d(flags.DEFINE_float, "val_fraction", t.val_fraction, "Share of the training set held out to pick the best epoch "
      "(0: keep the last epoch).", lower_bound=0.0, upper_bound=0.5)
    d(flags.DEFINE_integer, "steps_per_epoch", t.steps_per_epoch, "Steps per epoch (default: one pass over the "
      "training part).", lower_bound=1)
    d(flags.DEFINE_enum, "augment", t.augment, list(AUGMENTATIONS), "Augmentation of the training phases' stream "
      "(default: the dataset's own, e.g. crop_flip for Fashion-MNIST and CIFAR; a search keeps the dataset's own).")
    define_runtime_flags()


def define_runtime_flags():
    """--distribute, --cpu_devices, --deterministic: devices and determinism of searches and trainings."""
    d, r = _define_once, _RUNTIME
    d(flags.DEFINE_enum, "distribute", r.distribute, list(DISTRIBUTE),
      "Search and Child training on: default (one device), mirrored (every local GPU, or the --cpu_devices "
      "logical CPUs) or multiworker (MultiWorkerMirroredStrategy; TF_CONFIG names the cluster and this worker; "
      "only the chief writes the run folder). --batch_size is the global batch. See docs/distributed.md.")
    d(flags.DEFINE_bool, "deterministic", r.deterministic, "Deterministic ops (exact resume; slightly slower).")
    d(flags.DEFINE_integer, "cpu_devices", r.cpu_devices,
      "Split the CPU into this many logical devices (to run --distribute=mirrored without GPUs).", lower_bound=1)


def define_width_flags():
    """Flags of ``python -m tfbnas.width`` (besides the data, run and space groups): DNAL and BCNet."""
    d = _define_once
    d(flags.DEFINE_enum, "method", None, ["dnal", "bcnet"], "Width-search method.")
    d(flags.DEFINE_string, "model", None, "DNAL: a .keras model, or example:vgg|resnet|binary_vgg|binary_resnet.")
    d(flags.DEFINE_string, "genotype", None, "DNAL: a genotype.json whose Child (tfbnas.models.build_child) is pruned.")
    d(flags.DEFINE_enum, "benchmark", None, ["channel_bench_macro_mobilenet"],
      "BCNet: search against this ground-truth table instead of a trained supernet.")
    d(flags.DEFINE_string, "benchmark_path", None, "Results_MobileNet.json (default: <repo>/../shared/... or "
      "$TFBNAS_CHANNEL_BENCH).")
    # DNAL
    d(flags.DEFINE_integer, "weight_epochs", 2, "DNAL stage 1: epochs of weight training (gates off).", lower_bound=0)
    d(flags.DEFINE_integer, "gate_epochs", 1, "DNAL stage 2: epochs of gate training (delta 1 -> 1e4).", lower_bound=1)
    d(flags.DEFINE_integer, "finetune_epochs", 1, "Epochs of finetuning the pruned / extracted model (BCNet: also of "
      "training the found widths with --final_training=scratch).", lower_bound=0)
    d(flags.DEFINE_float, "lambda_a", 5e-3, "DNAL: weight of the gate penalty (more: fewer channels).", lower_bound=0.0)
    d(flags.DEFINE_enum, "penalty", "sum", ["sum", "mean"], "DNAL: sum (paper) or mean of the gates in the penalty.")
    d(flags.DEFINE_float, "delta_start", 1.0, "DNAL: delta at the start of stage 2.", lower_bound=1e-6)
    d(flags.DEFINE_float, "delta_end", 1e4, "DNAL: delta at the end of stage 2.", lower_bound=1e-6)
    d(flags.DEFINE_enum, "gate_batch_norm", "batch", ["batch", "frozen"], "DNAL stage 2: BatchNorm statistics.")
    d(flags.DEFINE_float, "gate_lr", 0.1, "DNAL: SGD learning rate of the gates.", lower_bound=0.0)
    d(flags.DEFINE_float, "lr", 1e-3, "Adam learning rate of weight training, supernet training and finetuning.",
      lower_bound=0.0)
    # BCNet
    d(flags.DEFINE_float, "width_scale", 0.125,
      "BCNet: scale of the macro space's full widths (1.0 = the benchmark's).", lower_bound=1e-3)
    d(flags.DEFINE_bool, "binary", False, "BCNet: 1-bit variant (binary 1x1 convs).")
    d(flags.DEFINE_integer, "supernet_epochs", 1, "BCNet: epochs of supernet training.", lower_bound=0)
    d(flags.DEFINE_enum, "cost", "flops", ["flops", "ops"], "BCNet: budgeted cost (ops = BOPs/64 + FLOPs).")
    d(flags.DEFINE_float, "budget", None, "BCNet: budget in units of --cost (absolute).", lower_bound=0.0)
    d(flags.DEFINE_float, "budget_fraction", None, "BCNet: budget as a fraction of the full-width cost "
      "(default 0.5; with --benchmark the default is the table's median FLOPs).", lower_bound=0.0)
    d(flags.DEFINE_enum, "search", "surrogate", ["surrogate", "evolution", "random"],
      "BCNet: search algorithm (surrogate: tfbnas.width.surrogate.SurrogateWidthOracle; evolution uses "
      "the supernet's width prior).")
    d(flags.DEFINE_integer, "max_trials", 100, "BCNet: width vectors evaluated.", lower_bound=1)
    d(flags.DEFINE_integer, "population_size", 16, "BCNet, --search=evolution: population.", lower_bound=2)
    d(flags.DEFINE_enum, "initial_population", "prior", ["prior", "uniform"],
      "BCNet, --search=evolution: initial population.")
    d(flags.DEFINE_integer, "eval_examples", 512, "BCNet: held-out training examples that score a width vector.",
      lower_bound=16)
    d(flags.DEFINE_integer, "recalibrate_examples", 512, "BCNet: training examples on which the BatchNorm "
      "statistics of every scored width are recalibrated before scoring (0: score with each batch's own "
      "statistics).", lower_bound=0)
    d(flags.DEFINE_enum, "final_training", "finetune", ["finetune", "scratch"],
      "BCNet: the final model: finetune the extracted supernet path, or train the found widths from "
      "scratch (the paper's protocol); both for --finetune_epochs.")


def define_all():
    """Every flag group, so that one flagfile (``configs/*.flags``) serves every entry point: search,
    training and the main job each read the flags they use and ignore the others."""
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
    d, s = _define_once, _SEARCH
    d(flags.DEFINE_enum, "strategy", s.strategy, list(STRATEGIES), "Search strategy.")
    d(flags.DEFINE_integer, "search_epochs", s.search_epochs, "Search epochs.", lower_bound=1)
    d(flags.DEFINE_integer, "search_examples", s.search_examples,
      "Training examples the search uses (a fixed subset; default: --train_examples).", lower_bound=2)
    d(flags.DEFINE_integer, "search_steps_per_epoch", s.search_steps_per_epoch,
      "Search steps per epoch (default: one pass over search-train).", lower_bound=1)
    d(flags.DEFINE_integer, "arch_frozen_epochs", s.arch_frozen_epochs,
      "Leading epochs that train weights only: no architecture variable (Child or Parent) moves; every strategy.",
      lower_bound=0)
    d(flags.DEFINE_float, "arch_t_start", s.arch_t_start,
      "darts/dcp: softmax temperature T of softmax(alpha/T) during the warm-up and at the first searching epoch "
      "(bats uses --bats_t_start).", lower_bound=1e-3)
    d(flags.DEFINE_float, "arch_t_end", s.arch_t_end,
      "darts/dcp: temperature at the last epoch; geometric in between (bats uses --bats_t_end).", lower_bound=1e-3)
    d(flags.DEFINE_float, "arch_lr", s.arch_lr, "Adam learning rate of the architecture parameters.", lower_bound=0.0)
    d(flags.DEFINE_float, "arch_beta1", s.arch_beta1, "Adam beta1 of the architecture optimiser.", lower_bound=0.0)
    d(flags.DEFINE_float, "arch_weight_decay", s.arch_weight_decay,
      "L2 decay of the architecture parameters.", lower_bound=0.0)
    d(flags.DEFINE_float, "weight_lr", s.weight_lr, "Initial SGD learning rate of the weights (cosine decay).",
      lower_bound=0.0)
    d(flags.DEFINE_float, "weight_lr_min", s.weight_lr_min, "Final SGD learning rate of the weights.", lower_bound=0.0)
    d(flags.DEFINE_float, "weight_momentum", s.weight_momentum, "SGD momentum.", lower_bound=0.0)
    d(flags.DEFINE_float, "search_weight_decay", s.search_weight_decay,
      "L2 decay of real-valued supernet weights.", lower_bound=0.0)
    d(flags.DEFINE_float, "grad_clip", s.grad_clip, "Global-norm clip of weight gradients (0: off).", lower_bound=0.0)
    d(flags.DEFINE_integer, "partial_channels", s.partial_channels,
      "PC-DARTS partial-channel connections: each supernet edge sends 1/K of its input's channels through its "
      "candidate ops (K times less mixed-op arithmetic and memory); --init_channels must divide by 2K. "
      "1: all channels. The derived Child has every channel.", lower_bound=1)
    define_runtime_flags()
    d(flags.DEFINE_bool, "graph_optimizations", s.graph_optimizations,
      "Grappler graph optimisations of the traced step (off: about half the start-up time on CPU).")
    # DCP-NAS
    d(flags.DEFINE_bool, "dcp_kl", s.dcp_kl, "DCP: Parent-Child KL term in the Child's weight objective.")
    d(flags.DEFINE_float, "dcp_kl_weight", s.dcp_kl_weight, "DCP: weight of the KL term.", lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_kl_arch", s.dcp_kl_arch, "DCP: the KL term in the architecture objective too (it rewards "
                                               "ops binarisation does not change: pooling, skip).")
    d(flags.DEFINE_bool, "dcp_tangent", s.dcp_tangent, "DCP: tangent propagation towards the Parent's direction.")
    d(flags.DEFINE_float, "dcp_tangent_weight", s.dcp_tangent_weight,
      "DCP: lambda of the tangent term (scale-aware: its norm relative to the architecture gradient).",
      lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_tangent_normalize", s.dcp_tangent_normalize,
      "DCP: scale-aware tangent term g + lambda*||g||*h/||h||; off: the literal g + 2*lambda*h.")
    d(flags.DEFINE_bool, "dcp_ggn", s.dcp_ggn, "DCP: Gauss-Newton (outer products of micro-batch gradients) for H "
                                           "in the tangent term; off: H = I.")
    d(flags.DEFINE_integer, "dcp_ggn_samples", s.dcp_ggn_samples,
      "DCP: micro-batches for the GGN outer products.", lower_bound=1)
    d(flags.DEFINE_bool, "dcp_decoupled", s.dcp_decoupled, "DCP: decoupled-optimisation backtracking of alphas.")
    d(flags.DEFINE_float, "dcp_decoupled_weight", s.dcp_decoupled_weight,
      "DCP: rho, the correction's norm relative to the architecture step (times psi; scale-aware mode).",
      lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_decoupled_normalize", s.dcp_decoupled_normalize,
      "DCP: scale-aware correction and RMS-normalised psi steps; off: the literal eta1*eta2*psi*alpha.")
    d(flags.DEFINE_float, "dcp_tau", s.dcp_tau, "DCP: weight-norm rank threshold (0-1) of the backtracking.",
      lower_bound=0.0, upper_bound=0.999)
    d(flags.DEFINE_float, "dcp_psi_lr", s.dcp_psi_lr, "DCP: learning rate of the learnable psi.", lower_bound=0.0)
    d(flags.DEFINE_bool, "dcp_inherit", s.dcp_inherit,
      "DCP: Parent/Child inheritance at epoch boundaries (Algorithm 10).")
    d(flags.DEFINE_bool, "dcp_arch_from_parent", s.dcp_arch_from_parent,
      "DCP: each epoch begin the Child takes the Parent's architecture (plus its own epoch of updates) and the "
      "Parent the result; off: only the Parent takes the Child's architecture at each epoch end.")
    d(flags.DEFINE_bool, "dcp_inherit_weights", s.dcp_inherit_weights,
      "DCP: each epoch begin the Child also takes the Parent's weights and BatchNorm statistics (the book); off: "
      "the binary Child keeps its own (real-valued statistics make its binary convs restart weak).")
    # BATS
    d(flags.DEFINE_float, "bats_t_start", s.bats_t_start,
      "BATS: softmax temperature at the first epoch.", lower_bound=1e-3)
    d(flags.DEFINE_float, "bats_t_end", s.bats_t_end, "BATS: softmax temperature at the last epoch.", lower_bound=1e-3)
    d(flags.DEFINE_integer, "bats_real_epochs", s.bats_real_epochs,
      "BATS: leading real-valued epochs before the 1-bit search.",
      lower_bound=0)
    d(flags.DEFINE_bool, "bats_teacher", s.bats_teacher, "BATS: real-valued teacher (KL) during the search.")
    d(flags.DEFINE_float, "bats_kl_weight", s.bats_kl_weight, "BATS: weight of the teacher KL.", lower_bound=0.0)
