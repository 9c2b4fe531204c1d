"""The Child-training recipe: Parent first, then the 1-bit Child distilled from it, all with ``model.fit``.

:func:`train_child` is one training run (the library entry that ``python -m tfbnas.train`` and the
main job call); :func:`train_model` is the same recipe for any binary Keras model and a real-valued
twin (the benchmark trains the hand-designed baseline with it).

A run has up to three phases, each an ordinary ``fit`` with its own optimizer, learning-rate schedule
and checkpoints (``checkpoints/<phase>/``):

1. ``parent``: the real-valued Parent twin on labels (cross-entropy), unless ``--parent`` gives a
   trained one.
2. ``stage1`` (``--two_stage``): the Child with one side binary, as in Real-to-Binary / ReActNet.
3. ``child``: the fully binary Child, initialised from stage 1 when there is one.

Phases 2 and 3 train through a :class:`~tfbnas.train.distiller.Distiller` with the Parent as a frozen
teacher (``--distill_alpha`` > 0). Each phase keeps the weights of its best epoch by the accuracy on
a held-out part of the training set (``--val_fraction``; the test split is never used for choices),
so the test numbers in ``metrics.json`` are honest. With ``--val_fraction=0`` the last epoch is kept.

Every epoch ends with a checkpoint of the weights, the optimizer state and the epoch counter; a run
killed at any point continues with ``--resume=RUN`` and, because the data streams are functions of
``(seed, epoch, step)`` and ops are deterministic, ends with the same weights as an uninterrupted run.
"""

import dataclasses
import json
import os
import sys
import time
from typing import List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfbnas import data, runs
from tfbnas.config import PHASES, SPACE_FIELDS, SpaceConfig, TrainConfig  # noqa: F401  (importable from here)
from tfbnas.errors import ConfigError, RunDirError
from tfbnas.search.distribute import (check_tf_config, configure_runtime, is_chief, lost_worker_errors,
                                     make_distribution, synchronized_batch_norm, worker_dir)
from tfbnas.space.genotype import Genotype
from tfbnas.space.table import stem_stride_for
from tfbnas.train.distiller import Distiller
from tfbnas.train.records import PhaseRecorder, plot_history, truncate_history, write_model_reports  # noqa: F401
from tfbnas.train.twins import (check_same_shapes, copy_weights, inherit_from_search, load_parent,  # noqa: F401
                                real_twin, stage1_model)
from tfbnas.train.schedules import make_schedule
from tfbnas.runs import write_json


class TrainResult(NamedTuple):
    """What a training run produced: the trained models, ``metrics.json`` as a dict and the folder."""

    model: tf.keras.Model
    parent: Optional[tf.keras.Model]
    metrics: dict
    run_dir: str


# -------------------------------------------------------------------------------- genotype + space


def _read_search_flags(genotype_path: str):
    path = os.path.join(os.path.dirname(os.path.abspath(genotype_path)), "flags.json")
    if not os.path.exists(path):
        return {}, None
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read the search flags {path} ({e}); fix or delete it, or pass the space flags "
                          "(--preset, --init_channels, --num_cells, --nodes) explicitly") from None
    return (values if isinstance(values, dict) else {}), path


def resolve_space(config: TrainConfig):
    """Load the genotype and settle the space fields of ``config``.

    Returns:
        ``(config, genotype, sources)``: a copy of ``config`` with concrete ``preset``,
        ``init_channels``, ``num_cells`` and ``nodes``, the :class:`Genotype`, and where each field
        came from.

    Raises:
        ConfigError: no genotype, a genotype of another preset or node count than the space flags,
            or ``widths`` with a wrong number of cells (the message names the field).
        GenotypeError: unreadable or invalid genotype file.
    """
    if not config.genotype:
        raise ConfigError("--genotype is required: pass the genotype.json of a search run "
                          "(`python -m tfbnas.search --flagfile=configs/smoke.flags` writes RUN/genotype.json)")
    genotype = Genotype.load(config.genotype)
    search_flags, flags_path = _read_search_flags(config.genotype)
    values, sources = {}, {}
    for name in SPACE_FIELDS:
        value, source = getattr(config, name), f"--{name}"
        if value is None and search_flags.get(name) is not None:
            value, source = search_flags[name], f"--{name} in {flags_path}"
        if value is None and name in ("preset", "nodes"):
            value, source = getattr(genotype, name), "the genotype"
        if value is None:
            value, source = getattr(SpaceConfig, name), f"the default --{name}"
        values[name], sources[name] = value, source
    for name, value in config.child_sizes().items():  # the trained Child sized apart from the searched supernet
        values[name], sources[name] = value, f"--child_{name}"
    for name in ("preset", "nodes"):
        if getattr(genotype, name) != values[name]:
            raise ConfigError(
                f"genotype field '{name}' is {getattr(genotype, name)!r} in {config.genotype} but {sources[name]} "
                f"says {values[name]!r}: pass the genotype of a {name}={values[name]!r} search or set "
                f"--{name}={getattr(genotype, name)}")
    widths = config.widths
    if widths is not None:
        try:
            widths = [float(w) for w in widths]
        except (TypeError, ValueError):
            raise ConfigError(f"--widths={','.join(map(str, config.widths))} must be numbers, e.g. 0.5,1,1") from None
        if len(widths) != values["num_cells"]:
            raise ConfigError(f"--widths has {len(widths)} values but the Child has num_cells={values['num_cells']} "
                              f"(from {sources['num_cells']}): give one multiplier per cell")
        if not all(np.isfinite(w) and w > 0 for w in widths):
            raise ConfigError(f"--widths={','.join(map(str, widths))} must be positive multipliers")
    return dataclasses.replace(config, widths=widths, **values), genotype, sources


def decayed_variables(model: tf.keras.Model) -> List[tf.Variable]:
    """The trainable variables that get weight decay: real-valued kernels only.

    A kernel behind a kernel quantizer (a latent binary kernel of ``QuantConv2D``) never decays
    (decay would pull latent weights to zero and flip signs at random); BatchNorm parameters and
    biases never decay either.
    """
    decayed, seen = [], set()
    for layer in model.submodules:
        if not isinstance(layer, tf.keras.layers.Layer):
            continue
        for attr, quantizer_attr in (("kernel", "kernel_quantizer"), ("depthwise_kernel", "depthwise_quantizer"),
                                     ("pointwise_kernel", "pointwise_quantizer")):
            var = getattr(layer, attr, None)
            if not isinstance(var, tf.Variable) or not var.trainable or id(var) in seen:
                continue
            if getattr(layer, quantizer_attr, None) is not None:
                continue
            seen.add(id(var))
            decayed.append(var)
    return decayed


def make_optimizer(config: TrainConfig, total_steps: int, model: tf.keras.Model,
                   warmup_steps: int = 0) -> tf.keras.optimizers.Optimizer:
    """The optimizer of one phase, built for ``model``'s trainable variables.

    Weight decay is decoupled (``w -= lr * weight_decay * w``: AdamW for Adam, L2 for SGD) and
    applies to :func:`decayed_variables` only.
    """
    schedule = make_schedule(config.lr_schedule, config.peak_lr, total_steps, warmup_steps)
    decay = config.weight_decay or None
    if config.optimizer == "adam":
        optimizer = tf.keras.optimizers.Adam(schedule, weight_decay=decay)
    else:
        optimizer = tf.keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True, weight_decay=decay)
    variables = model.trainable_variables
    if decay:
        keep = {id(v) for v in decayed_variables(model)}
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if id(v) not in keep])
    optimizer.build(variables)
    return optimizer


# -------------------------------------------------------------------------------------------- data


class TrainData:
    """The pipelines of a training run: a train stream that can start at any epoch, a held-out
    validation part (or None), the test split, the dataset info and the split sizes."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.eval_batch_size = max(config.batch_size, 256)
        self._splits = data.make_splits(config.dataset, config.batch_size, config.data_dir, config.train_examples,
                                        config.test_examples, config.seed, config.download,
                                        eval_batch_size=self.eval_batch_size, augment=config.augment)
        self.info = self._splits.info  # the dataset's info with config.augment applied
        self.test = self._splits.test
        self.val = None
        self._arrays = None
        n_train = self._splits.sizes["train"]
        if config.val_fraction > 0:
            if config.dataset == "imagenet2012" or config.dataset not in data.KNOWN_DATASETS:
                raise ConfigError(f"--val_fraction={config.val_fraction} needs an in-memory dataset; for "
                                  f"{config.dataset} pass --val_fraction=0 (the last epoch is kept)")
            (x, y), _ = data.load_arrays(config.dataset, config.data_dir, config.download)
            x, y = data.subset(x, y, config.train_examples, config.seed)
            order = np.random.RandomState(config.seed + 3).permutation(len(x))
            n_val = int(round(config.val_fraction * len(x)))
            if n_val < 1 or len(x) - n_val < config.batch_size:
                raise ConfigError(f"--val_fraction={config.val_fraction} of {len(x)} training examples leaves "
                                  f"{n_val} for validation and {len(x) - n_val} for training (batch "
                                  f"{config.batch_size}); change --val_fraction or --train_examples")
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            self._arrays = (x[train_idx], y[train_idx])
            self.val = data.epoch_stream(x[val_idx], y[val_idx], self.info, self.eval_batch_size, config.seed,
                                         train=False)
            n_train = len(train_idx)
        self.sizes = {"train": n_train, "val": self._splits.sizes["train"] - n_train,
                      "test": self._splits.sizes["test"]}
        self.epoch_steps = n_train // config.batch_size
        if self.epoch_steps < 1:
            raise ConfigError(f"{n_train} training examples are fewer than one batch of {config.batch_size}; "
                              "lower --batch_size or raise --train_examples")
        self.steps_per_epoch = config.steps_per_epoch or self.epoch_steps

    def train(self, initial_epoch: int) -> tf.data.Dataset:
        """The training stream positioned at the start of epoch ``initial_epoch`` (0-based)."""
        start_epoch, skip = initial_epoch, 0
        if self.steps_per_epoch != self.epoch_steps:
            start_epoch, skip = divmod(initial_epoch * self.steps_per_epoch, self.epoch_steps)
        c = self.config
        if self._arrays is not None:
            return data.epoch_stream(*self._arrays, self.info, c.batch_size, c.seed, train=True,
                                     start_epoch=start_epoch, skip_batches=skip)
        return data.make_splits(c.dataset, c.batch_size, c.data_dir, c.train_examples, c.test_examples, c.seed,
                                c.download, start_epoch=start_epoch, skip_batches=skip, augment=c.augment).train


def _metrics():
    return ["accuracy", tf.keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")]


def _ce():
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit_verbose(verbose):
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


def run_phase(phase: str, model: tf.keras.Model, teacher: Optional[tf.keras.Model], config: TrainConfig,
              train_data: TrainData, run_dir: str, resume: bool = False, log=print, verbose=None) -> dict:
    """Train ``model`` for one phase with ``fit`` (through a :class:`Distiller` when ``teacher``).

    Resumes from the phase's last checkpoint when ``resume``; a finished phase only restores. Ends
    with the weights of the best epoch by validation accuracy (or of the last epoch without a
    validation part).

    Returns:
        ``{"epochs", "best_val_top1", "best_epoch", "seconds"}``.
    """
    start = time.time()
    epochs = config.phase_epochs(phase)
    steps = train_data.steps_per_epoch
    warmup = config.warmup_epochs * steps if config.lr_schedule == "cosine" else 0
    optimizer = make_optimizer(config, epochs * steps, model, warmup)
    if teacher is not None and config.distill_alpha > 0:
        fit_model = Distiller(model, teacher, alpha=config.distill_alpha, temperature=config.distill_temperature,
                              name=f"{phase}_distiller")
        fit_model.compile(optimizer, metrics=_metrics())
    else:
        fit_model = model
        fit_model.compile(optimizer, loss=_ce(), metrics=_metrics())
    state = {"epoch": tf.Variable(0, dtype=tf.int64), "best": tf.Variable(-1.0, dtype=tf.float32),
             "best_epoch": tf.Variable(0, dtype=tf.int64)}
    ckpt_dir = os.path.join(run_dir, "checkpoints", phase)
    os.makedirs(ckpt_dir, exist_ok=True)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer, **state), ckpt_dir,
                                         max_to_keep=1)
    best_path = os.path.join(ckpt_dir, "best")
    history_path = os.path.join(run_dir, "history.csv")
    initial_epoch = 0
    if resume and manager.latest_checkpoint:
        try:
            manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise RunDirError(f"cannot restore {manager.latest_checkpoint} ({type(e).__name__}): the checkpoint is "
                              "corrupt or from another configuration; start a new --output_dir") from None
        initial_epoch = int(state["epoch"].numpy())
        log(f"[{phase}] resumed from {manager.latest_checkpoint} after epoch {initial_epoch}")
    truncate_history(history_path, phase, initial_epoch, drop_later=initial_epoch < epochs)
    if initial_epoch < epochs:
        log(f"[{phase}] {epochs} epochs x {steps} steps, {config.optimizer} lr {config.peak_lr:g} "
            f"({config.lr_schedule}), {'distilled from the Parent' if fit_model is not model else 'labels only'}")
        recorder = PhaseRecorder(phase, model, manager, state, best_path, history_path, epochs, log)
        with synchronized_batch_norm(model):  # several replicas: global batch statistics, as on one device
            fit_model.fit(train_data.train(initial_epoch), epochs=epochs, initial_epoch=initial_epoch,
                          steps_per_epoch=steps, validation_data=train_data.val, callbacks=[recorder],
                          verbose=_fit_verbose(verbose))
    best_epoch = int(state["best_epoch"].numpy())
    if train_data.val is not None and best_epoch and os.path.exists(best_path + ".index"):
        tf.train.Checkpoint(model=model).read(best_path).expect_partial()
        log(f"[{phase}] kept epoch {best_epoch} (val top-1 {float(state['best'].numpy()):.4f})")
    return {"epochs": epochs, "best_val_top1": float(state["best"].numpy()) if best_epoch else None,
            "best_epoch": best_epoch or epochs, "seconds": round(time.time() - start, 1)}


def evaluate(model: tf.keras.Model, dataset) -> dict:
    """Top-1, top-5 and cross-entropy of ``model`` (logits) on ``dataset``."""
    model.compile(loss=_ce(), metrics=_metrics())
    loss, top1, top5 = model.evaluate(dataset, verbose=0)
    return {"top1": float(top1), "top5": float(top5), "loss": float(loss)}


# --------------------------------------------------------------------------------------- the recipe


def train_model(model: tf.keras.Model, parent: Optional[tf.keras.Model] = None, config: TrainConfig = None,
                run_dir: str = ".", resume: bool = False, parent_trained: bool = False,
                train_data: Optional[TrainData] = None, name: str = "child", log=print, verbose=None) -> TrainResult:
    """Train a 1-bit ``model`` with the recipe (Parent teacher, optional two stages) into ``run_dir``.

    Args:
        model: the 1-bit network (e.g. :func:`tfbnas.models.build_child` or
            :func:`tfbnas.baselines.binary_resnet`), logits out; its current weights are the start.
        parent: its real-valued twin (:func:`tfbnas.models.build_parent` or :func:`real_twin`), or
            None for labels-only training.
        config: the recipe; its data fields pick the data when ``train_data`` is None.
        run_dir: folder of checkpoints and outputs.
        resume: continue from the checkpoints in ``run_dir``.
        parent_trained: ``parent`` is already trained (skip the ``parent`` phase).
        train_data: pipelines to reuse (built from ``config`` when None).
        name: file stem of the trained model (``<name>.keras``).
        log: where progress lines go.
        verbose: ``fit`` verbosity (default: progress bar on a terminal, one line per epoch otherwise).

    Returns:
        A :class:`TrainResult`. ``run_dir`` gets ``<name>.keras``, ``parent.keras``, ``history.csv``,
        ``curves.png``, ``metrics.json``, ``larq_summary.txt`` and ``cost.md``.
    """
    config = config or TrainConfig()
    config.check()
    start = time.time()
    os.makedirs(run_dir, exist_ok=True)
    train_data = train_data or TrainData(config)
    seconds = {}
    metrics = {"sizes": train_data.sizes, "selection": _selection(train_data), "phases": {}}

    if parent is not None and not parent_trained:
        if not config.learns_from_parent() or not config.phase_epochs("parent"):
            log("no Parent phase (--parent_epochs=0 or --distill_alpha=0): training on labels only")
            parent = None
        else:
            phase = run_phase("parent", parent, None, config, train_data, run_dir, resume, log, verbose)
            metrics["phases"]["parent"] = phase
            seconds["parent"] = phase["seconds"]
    if parent is not None:
        parent.trainable = False
        metrics["parent_test"] = evaluate(parent, train_data.test)
        parent.save(os.path.join(run_dir, "parent.keras"))
        log(f"Parent test top-1 {metrics['parent_test']['top1']:.4f}")
        if config.init_from_parent:
            copy_weights(parent, model)
    teacher = parent if parent is not None and config.distill_alpha > 0 else None

    if config.two_stage:
        first = stage1_model(model, config.stage1_binary)
        phase = run_phase("stage1", first, teacher, config, train_data, run_dir, resume, log, verbose)
        metrics["phases"]["stage1"] = {**phase, "binary": config.stage1_binary}
        metrics["stage1_test"] = evaluate(first, train_data.test)
        seconds["stage1"] = phase["seconds"]
        model.set_weights(first.get_weights())
    phase = run_phase("child", model, teacher, config, train_data, run_dir, resume, log, verbose)
    metrics["phases"]["child"] = phase
    seconds["child"] = phase["seconds"]

    test = evaluate(model, train_data.test)
    model.save(os.path.join(run_dir, f"{name}.keras"))  # compiled by evaluate(): loads ready to evaluate
    metrics.update({"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                    "val_top1": phase["best_val_top1"], "best_epoch": phase["best_epoch"]})
    metrics["cost"] = write_model_reports(model, run_dir)
    plot_history(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
    metrics["seconds"] = {**seconds, "total": round(time.time() - start, 1)}
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    log(f"{name} test top-1 {test['top1']:.4f}, top-5 {test['top5']:.4f} ({metrics['selection']})")
    return TrainResult(model, parent, metrics, run_dir)


def _selection(train_data: TrainData) -> str:
    if train_data.val is None:
        return "last epoch of each phase (no validation part)"
    return f"best epoch by top-1 on {train_data.sizes['val']} held-out training examples"


def train_child(config: TrainConfig, run_dir: str, resume: bool = False, log=print, verbose=None) -> TrainResult:
    """One Child-training run: the genotype's 1-bit Child trained with the recipe into ``run_dir``.

    Args:
        config: the run's configuration (``genotype`` required; space fields may be None, see
            :func:`resolve_space`).
        run_dir: the run folder (created).
        resume: continue from the run folder's checkpoints.
        log: where progress lines go.
        verbose: ``fit`` verbosity.

    Returns:
        A :class:`TrainResult`; ``run_dir`` also gets ``genotype.json`` and ``space.json`` (the
        settled space fields and the stem's stride). Under ``config.distribute`` every phase runs on all replicas with
        ``--batch_size`` as the global batch; with ``multiworker`` every worker calls this with the same
        arguments and only the chief writes ``run_dir`` (:func:`~tfbnas.search.distribute.worker_dir`).

    Raises:
        ConfigError, GenotypeError, SpaceError: bad genotype, space flags or recipe values.

    Example:
        >>> result = train_child(TrainConfig(genotype="runs/s1/genotype.json", epochs=5), "runs/t1")
        >>> result.metrics["test_top1"]
    """
    config, genotype, sources = resolve_space(config)
    config.check()
    configure_runtime(config)
    distribution = make_distribution(config.distribute)  # before any op: MultiWorkerMirroredStrategy comes first
    replicas = distribution.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} must divide by the {replicas} replicas of "
                          f"--distribute={config.distribute}: each replica takes an equal share of the global batch")
    # Every worker trains and saves (saving may run collectives); only the chief's folder is kept.
    with distribution.scope(), worker_dir(run_dir, distribution, resume) as out, \
            lost_worker_errors(distribution, run_dir):
        result = _train_genotype(config, genotype, sources, out, resume, log, verbose)
    return result._replace(run_dir=run_dir)


def _train_genotype(config, genotype, sources, run_dir, resume, log, verbose) -> TrainResult:
    """:func:`train_child` after its checks, in the distribution's scope, writing ``run_dir``."""
    from tfbnas.models import build_child, build_parent

    os.makedirs(run_dir, exist_ok=True)
    train_data = TrainData(config)
    info = train_data.info
    stem_stride = stem_stride_for(info.image_shape)  # the stem the genotype was searched with (same rule)
    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=config.init_channels,
                  num_cells=config.num_cells, widths=config.widths, stem_stride=stem_stride)
    child = build_child(genotype, **kwargs)
    parent, trained = None, False
    if config.parent:
        parent, trained = load_parent(config.parent, info), True
        if config.init_from_parent:
            check_same_shapes(parent, child)
    elif config.learns_from_parent():
        parent = build_parent(genotype, **kwargs)
    genotype.save(os.path.join(run_dir, "genotype.json"))
    if config.init_from_search:
        _inherit(config, child, parent if not trained else None, run_dir, log)
    if not (resume and os.path.exists(os.path.join(run_dir, "space.json"))):
        height, width = info.image_shape[:2]
        write_json(os.path.join(run_dir, "space.json"),
                   {**{k: {"value": getattr(config, k), "from": sources[k]} for k in SPACE_FIELDS},
                    "stem_stride": {"value": stem_stride, "from": f"image size {height}x{width}"}})
    widths = f", widths {','.join(f'{w:g}' for w in config.widths)}" if config.widths else ""
    log(f"Child: {genotype.preset} genotype, {config.num_cells} cells, C={config.init_channels}, nodes "
        f"{config.nodes}, stem stride {stem_stride}{widths}; "
        f"{train_data.sizes['train']} train / {train_data.sizes['val']} val / {train_data.sizes['test']} test")
    return train_model(child, parent, config, run_dir, resume, parent_trained=trained, train_data=train_data,
                       name="child", log=log, verbose=verbose)


def _inherit(config: TrainConfig, child, parent, run_dir: str, log):
    """``--init_from_search``: the Child (and a Parent that trains here) start from the search's inherited weights.
    The files are copied into ``run_dir`` beside its own genotype.json, where a resumed run finds them."""
    import shutil

    from tfbnas.search.run_search import INHERITED_FILES

    source = os.path.dirname(os.path.abspath(config.genotype))
    for name in INHERITED_FILES.values():
        path = os.path.join(source, name)
        if os.path.exists(path) and os.path.abspath(run_dir) != source:
            shutil.copyfile(path, os.path.join(run_dir, name))
    inherit_from_search(child, "child", source)
    who = "the Child and the Parent start" if parent is not None and inherit_from_search(parent, "parent", source) \
        else "the Child starts"
    log(f"--init_from_search: {who} from the search's supernet weights of the kept ops ({source})")


def main_from_flags(FLAGS) -> TrainResult:
    """``python -m tfbnas.train``: flags → :class:`TrainConfig` → :func:`train_child` (with ``--resume``)."""
    from tfbnas.flags import flag_values, saved_flag_values, write_flags

    values = flag_values(["tfbnas"])
    for name in SPACE_FIELDS:
        # Space flags not given on the command line (or a flagfile) come from the search run.
        if name in FLAGS and not FLAGS[name].present:
            values[name] = None
    resume = bool(FLAGS.resume)
    if resume:
        run_dir = os.path.abspath(FLAGS.resume)
        # The saved flags (settled space included) define the run; the genotype is the run's own copy.
        values = saved_flag_values(run_dir, values, "training")
        if os.path.exists(os.path.join(run_dir, "genotype.json")):
            values["genotype"] = os.path.join(run_dir, "genotype.json")
        config = TrainConfig.from_flags(values)
    # TF_CONFIG is checked before any TensorFlow work; workers other than the chief write no run folder.
    chief = is_chief(check_tf_config() if values.get("distribute") == "multiworker" else None)
    if not resume:
        for name in ("genotype", "parent"):
            if values.get(name):
                values[name] = os.path.abspath(values[name])
        config = TrainConfig.from_flags(values)
        resolved, _, _ = resolve_space(config)  # bad genotype or space flags fail before any folder is made
        resolved.check()
        if not chief:
            run_dir = os.path.abspath(FLAGS.output_dir) if FLAGS.output_dir else None
        else:
            run_dir = runs.make_run_dir(FLAGS.output_dir, "train", FLAGS.dataset)
            if os.path.isdir(os.path.join(run_dir, "checkpoints")):
                raise RunDirError(f"{run_dir} already holds a training run; continue it with --resume={run_dir} or "
                                  "choose another --output_dir")
            write_flags(run_dir, {**values, **{k: getattr(resolved, k) for k in SPACE_FIELDS + ("widths",)}})
    result = train_child(config, run_dir, resume=resume)
    print(f"\ntest top-1 {result.metrics['test_top1']:.4f}, top-5 {result.metrics['test_top5']:.4f}")
    print(f"run folder: {run_dir}" if chief else "run folder: written by the chief (this worker keeps no files)")
    return result


__all__ = ["TrainConfig", "TrainResult", "TrainData", "PhaseRecorder", "resolve_space", "configure_runtime",
           "stage1_model", "real_twin", "decayed_variables", "make_optimizer", "run_phase", "evaluate",
           "train_model", "train_child", "load_parent", "plot_history", "write_model_reports", "main_from_flags",
           "PHASES"]
