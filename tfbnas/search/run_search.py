"""One search run: build the supernets and the strategy, run ``model.fit``, write the run folder.

:func:`search` is the library entry (the main job calls it); :func:`main_from_flags` adds flag
handling, ``--resume`` and the one-line errors of ``python -m tfbnas.search``.
"""

import dataclasses
import os
import sys
import time

import tensorflow as tf

from tfbnas import data, runs
from tfbnas.config import SearchConfig  # noqa: F401  (importable from here)
from tfbnas.errors import ConfigError, RunDirError, SearchDiverged, SpaceError
from tfbnas.flags import flag_values, saved_flag_values, write_flags
from tfbnas.search.callbacks import NanGuard, SearchRecorder, StrategySchedule, truncate_records
from tfbnas.search.distribute import (check_tf_config, configure_runtime, is_chief, lost_worker_errors,
                                     make_distribution, synchronize_batch_norm, worker_dir)
from tfbnas.search.engine import SearchModel
from tfbnas.search.strategies import make_strategy
from tfbnas.space.genotype import count_param_free, edge_margins, plot_cell
from tfbnas.space.supernet import SuperNet
from tfbnas.space.table import check_partial_channels, stem_stride_for
from tfbnas.runs import write_json


@dataclasses.dataclass
class SearchResult:
    genotype: object
    run_dir: str
    epochs: int
    seconds: float
    history: dict


def _optimizers(config: SearchConfig, steps_total: int):
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        config.weight_lr, decay_steps=max(steps_total, 1), alpha=config.weight_lr_min / max(config.weight_lr, 1e-12))
    arch = tf.keras.optimizers.Adam(config.arch_lr, beta_1=config.arch_beta1, beta_2=0.999, name="arch_adam")
    weight = tf.keras.optimizers.SGD(schedule, momentum=config.weight_momentum, name="weight_sgd")
    return arch, weight


def build_search(config: SearchConfig, info: data.DatasetInfo, steps_per_epoch: int):
    """The :class:`SearchModel` (compiled, variables created) for a configuration."""
    strategy = make_strategy(config.strategy, config.search_epochs, **config.strategy_kwargs())
    net_args = dict(num_classes=info.num_classes, init_channels=config.init_channels, num_cells=config.num_cells,
                    nodes=config.nodes, preset=config.preset, stem_stride=stem_stride_for(info.image_shape),
                    partial_channels=config.partial_channels)
    child = SuperNet(binary=True, name="child", **net_args)
    parent = SuperNet(binary=False, name="parent", **net_args) if strategy.uses_parent else None
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        for net in (child, parent):
            if net is not None:
                synchronize_batch_norm(net)
    engine = SearchModel(child, strategy, parent, weight_decay=config.search_weight_decay,
                         arch_weight_decay=config.arch_weight_decay, grad_clip=config.grad_clip)
    total = steps_per_epoch * config.search_epochs
    arch_opt, weight_opt = _optimizers(config, total)
    parent_opts = _optimizers(config, total) if parent is not None else (None, None)
    engine.compile(arch_opt, weight_opt, parent_opts[0] if strategy.parent_searches else None, parent_opts[1])
    engine.build_supernets(info.image_shape)
    return engine


def _checkpoint(engine):
    items = dict(child=engine.child, arch_optimizer=engine.arch_optimizer, weight_optimizer=engine.weight_optimizer,
                 strategy=engine.strategy, epoch=engine.epoch)
    if engine.parent is not None:
        items.update(parent=engine.parent, parent_weight_optimizer=engine.parent_weight_optimizer)
        if engine.parent_arch_optimizer is not None:
            items["parent_arch_optimizer"] = engine.parent_arch_optimizer
    return tf.train.Checkpoint(**items)


def search(config: SearchConfig, run_dir: str, resume: bool = False, log=print, verbose=None) -> SearchResult:
    """Runs a search into ``run_dir`` (resuming from its last checkpoint when ``resume``).

    Under ``--distribute=multiworker`` every worker calls it with the same arguments; only the chief
    writes ``run_dir`` (the others write a temporary folder, :func:`~tfbnas.search.distribute.worker_dir`).
    """
    start = time.time()
    configure_runtime(config)
    distribution = make_distribution(config.distribute)
    replicas = distribution.num_replicas_in_sync
    micro = config.dcp_ggn_samples if (config.strategy == "dcp" and config.dcp_tangent and config.dcp_ggn) else 1
    if config.batch_size % (replicas * micro):
        raise ConfigError(f"--batch_size={config.batch_size} must divide by replicas ({replicas}) x "
                          f"dcp GGN micro-batches ({micro}); change --batch_size or --dcp_ggn_samples")
    if config.init_channels % 2:
        raise ConfigError(f"--init_channels={config.init_channels} must be even (factorized reduce halves it)")
    try:
        check_partial_channels(config.init_channels, config.partial_channels)
    except SpaceError as e:
        raise ConfigError(str(e)) from None

    info = data.KNOWN_DATASETS.get(config.dataset) or data.dataset_info(config.dataset, config.data_dir)
    examples = config.search_examples or config.train_examples
    probe = data.make_splits(config.dataset, config.batch_size, config.data_dir, examples,
                             config.test_examples, config.seed, config.download)
    steps = config.search_steps_per_epoch or probe.sizes["search_train"] // config.batch_size
    if steps < 1:
        raise ConfigError(f"search-train has {probe.sizes['search_train']} examples, fewer than one batch of "
                          f"{config.batch_size}; raise --train_examples or lower --batch_size")

    with distribution.scope():
        engine = build_search(config, info, steps)
    # Every worker runs the same steps and saves (saving may run collectives); only the chief's folder is kept.
    with worker_dir(run_dir, distribution, resume) as out, lost_worker_errors(distribution, run_dir):
        genotype, summary = _fit_and_record(engine, config, probe, steps, out, run_dir, resume, start, log, verbose)
    return SearchResult(genotype, run_dir, config.search_epochs, time.time() - start, summary)


def _fit_and_record(engine, config, probe, steps, out, run_dir, resume, start, log, verbose):
    """Restores, fits and writes the search's records into ``out`` (the run folder, or a worker's
    temporary copy); returns the genotype and the summary."""
    examples = config.search_examples or config.train_examples
    ckpt_dir = os.path.join(out, "checkpoints")
    manager = tf.train.CheckpointManager(_checkpoint(engine), ckpt_dir, max_to_keep=3)
    initial_epoch = 0
    if resume:
        if not manager.latest_checkpoint:
            log(f"no checkpoint in {ckpt_dir}: starting the search from epoch 1")
        else:
            try:
                manager.checkpoint.restore(manager.latest_checkpoint).expect_partial()
            except Exception as e:  # noqa: BLE001  (truncated files raise IndexError, others OpError/ValueError)
                detail = (str(e).strip().splitlines() or ["-"])[0]
                raise RunDirError(f"cannot restore {manager.latest_checkpoint} ({type(e).__name__}: {detail}): the "
                                  "checkpoint is corrupt or from another configuration; delete it to resume from the "
                                  "one before or start a new --output_dir") from None
            initial_epoch = int(engine.epoch.numpy()) + 1
            truncate_records(out, initial_epoch)
            log(f"resumed from {manager.latest_checkpoint}: continuing at epoch {initial_epoch + 1}")
    if initial_epoch >= config.search_epochs:
        log("the search had already finished")
    else:
        # Batches never straddle epochs, so the resumed stream starts exactly where epoch `initial_epoch` starts;
        # a --search_steps_per_epoch shorter than an epoch skips to the matching step of the stream.
        per_epoch = probe.sizes["search_train"] // config.batch_size
        skip = 0
        start_epoch = initial_epoch
        if steps != per_epoch:
            start_epoch, skip = divmod(initial_epoch * steps, per_epoch)
        splits = data.make_splits(config.dataset, config.batch_size, config.data_dir, examples,
                                  config.test_examples, config.seed, config.download, start_epoch=start_epoch,
                                  skip_batches=skip)
        train = tf.data.Dataset.zip((splits.search_train, splits.search_val))
        guard = NanGuard()
        callbacks = [StrategySchedule(), guard, SearchRecorder(out, manager, guard, log)]
        if engine.distribute_strategy.extended.should_checkpoint:
            callbacks.append(tf.keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"), update_freq="epoch"))
        engine.fit(train, epochs=config.search_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                   callbacks=callbacks, verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))
        if guard.failure is not None:
            epoch, batch, keys = guard.failure
            last = tf.train.latest_checkpoint(os.path.join(run_dir or out, "checkpoints")) or "none (no epoch finished)"
            raise SearchDiverged(f"non-finite {', '.join(keys)} at epoch {epoch + 1}, step {batch + 1}; the last good "
                                 f"checkpoint is {last}: lower --arch_lr/--weight_lr and resume with --resume={run_dir}")
    genotype = engine.child.genotype()
    genotype.save(os.path.join(out, "genotype.json"))
    inherited = write_inherited_models(engine, genotype, probe.info.image_shape, out, log)
    for cell in ("normal", "reduce"):
        plot_cell(genotype, cell, os.path.join(out, f"cell_{cell}.png"), svg=True)
    child = engine.child
    margins = edge_margins(child.alphas_normal.numpy(), child.alphas_reduce.numpy(), child.preset, child.nodes,
                           float(child.temperature.numpy()))
    summary = {"genotype": genotype.to_dict(), "param_free_ops": count_param_free(genotype),
               "edge_margins": margins, "stem_stride": child.stem_stride,
               "strategy": config.strategy, "epochs": config.search_epochs, "steps_per_epoch": steps,
               "seconds": time.time() - start, "replicas": engine.distribute_strategy.num_replicas_in_sync,
               "inherited_models": inherited,
               "arch_probabilities": {k: v.tolist() for k, v in engine.child.arch_probabilities().items()}}
    write_json(os.path.join(out, "search_summary.json"), summary)
    return genotype, summary


INHERITED_FILES = {"child": "inherited_child.keras", "parent": "inherited_parent.keras"}


def write_inherited_models(engine: SearchModel, genotype, image_shape, out: str, log=print) -> list:
    """The derived Child (and its Parent twin, when the strategy has a Parent supernet) holding the supernets'
    weights of the ops ``genotype`` keeps (:func:`~tfbnas.models.inherit_supernet_weights`), saved as
    ``out/inherited_child.keras`` (and ``inherited_parent.keras``) for ``--init_from_search``.

    Returns:
        The file names written: none when the supernets' edges see part of the channels
        (``--partial_channels`` > 1: their ops' weights do not fit the Child).
    """
    from tfbnas.models import build_child, inherit_supernet_weights

    child = engine.child
    if child.partial_channels != 1:
        log(f"no inherited models: the supernets' edges see 1/{child.partial_channels} of the channels, so their "
            "ops' weights do not fit the Child")
        return []
    written = []
    for role, net in (("child", child), ("parent", engine.parent)):
        if net is None:
            continue
        model = build_child(genotype, num_classes=net.num_classes, input_shape=image_shape,
                            init_channels=net.init_channels, num_cells=net.num_cells, binary=net.binary,
                            stem_multiplier=net.stem_multiplier, group_policy=net.group_policy,
                            stem_stride=net.stem_stride)
        inherit_supernet_weights(model, net, genotype).save(os.path.join(out, INHERITED_FILES[role]))
        written.append(INHERITED_FILES[role])
    return written


def main_from_flags(FLAGS):
    values = flag_values(["tfbnas"])
    resume = bool(FLAGS.resume)
    if resume:
        run_dir = os.path.abspath(FLAGS.resume)
        values = saved_flag_values(run_dir, values, "search")
    # TF_CONFIG is checked before any TensorFlow work; workers other than the chief write no run folder.
    chief = is_chief(check_tf_config() if values.get("distribute") == "multiworker" else None)
    if not resume and not chief:
        run_dir = os.path.abspath(FLAGS.output_dir) if FLAGS.output_dir else None
    elif not resume:
        run_dir = runs.make_run_dir(FLAGS.output_dir, "search", FLAGS.dataset)
        if os.path.exists(os.path.join(run_dir, "checkpoints", "checkpoint")):
            raise RunDirError(f"{run_dir} already holds a search; continue it with --resume={run_dir} or choose "
                              "another --output_dir")
        write_flags(run_dir, values)
    config = SearchConfig.from_flags(values)
    result = search(config, run_dir, resume=resume)
    print(f"\ngenotype ({config.strategy}, {result.seconds:.0f} s):\n{result.genotype}")
    print(f"run folder: {run_dir}" if chief else "run folder: written by the chief (this worker keeps no files)")
