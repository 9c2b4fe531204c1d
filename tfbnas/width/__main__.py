"""Width search from the command line.

    # DNAL on a trained (or untrained) Keras model, a genotype's Child, or an example CNN
    python -m tfbnas.width --method=dnal --model=child.keras --output_dir=runs/dnal
    python -m tfbnas.width --method=dnal --genotype=runs/search/genotype.json --init_channels=16 --num_cells=8
    python -m tfbnas.width --method=dnal --model=example:binary_resnet --train_examples=4000

    # BCNet supernet + width search (default: the model-based surrogate) under a FLOPs (or OPs) budget,
    # each width scored with BatchNorm statistics recalibrated for it; then finetune the winner
    python -m tfbnas.width --method=bcnet --width_scale=0.125 --binary --cost=ops --budget_fraction=0.5
    # evolution with the supernet's width prior; train the found widths from scratch (the paper's protocol)
    python -m tfbnas.width --method=bcnet --search=evolution --final_training=scratch --finetune_epochs=5

    # the search algorithm alone against the Channel-Bench-Macro ground truth (no training, no supernet)
    python -m tfbnas.width --method=bcnet --benchmark=channel_bench_macro_mobilenet --max_trials=100

Every run folder gets ``widths.json`` (widths before/after per layer and the run's numbers),
``widths.md`` (the same as a Markdown table), ``pruned.keras`` (the smaller model), ``flags.txt`` and,
for BCNet, the keras-tuner project (``search/``) that a rerun with the same ``--output_dir`` resumes.
"""

import os

from absl import flags

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas import data, flags as tflags, runs
from tfbnas.runs import write_json

FLAGS = flags.FLAGS
tflags.define_data_flags()
tflags.define_run_flags()
tflags.define_space_flags()

tflags.define_width_flags()

_EVOLUTION_FLAGS = ("population_size", "initial_population")


def _arrays():
    (x, y), (xt, yt) = data.load_arrays(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
    info = data.KNOWN_DATASETS.get(FLAGS.dataset) or data.dataset_info(FLAGS.dataset, FLAGS.data_dir)
    x, y = data.subset(x, y, FLAGS.train_examples, FLAGS.seed)  # the same subsets as make_splits draws
    xt, yt = data.subset(xt, yt, FLAGS.test_examples, FLAGS.seed + 1)
    return (data.normalize_numpy(x, info), y), (data.normalize_numpy(xt, info), yt), info


def _write(run_dir, summary, rows, model, title):
    summary["widths"] = rows
    write_json(os.path.join(run_dir, "widths.json"), summary)
    lines = [f"# {title}", "", "| layer | type | before | after |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['layer']} | {r['type']} | {r['before']} | {r['after']} |" for r in rows]
    total_b, total_a = sum(r["before"] for r in rows), sum(r["after"] for r in rows)
    lines += [f"| **total** | | **{total_b}** | **{total_a}** |", ""]
    for key, value in summary.items():
        if key not in ("widths", "history") and not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {value}")
    with open(os.path.join(run_dir, "widths.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if model is not None:
        model.save(os.path.join(run_dir, "pruned.keras"))
    print("\n".join(lines))


def _load_model(info):
    import tensorflow as tf

    from tfbnas.width import dnal

    if FLAGS.genotype:
        from tfbnas import models

        return models.build_child(FLAGS.genotype, num_classes=info.num_classes, input_shape=info.image_shape,
                                  init_channels=FLAGS.init_channels, num_cells=FLAGS.num_cells)
    if FLAGS.model.startswith("example:"):
        kind = FLAGS.model.split(":", 1)[1]
        binary = kind.startswith("binary_")
        return dnal.example_cnn(kind.replace("binary_", ""), info.image_shape, info.num_classes, binary=binary)
    if not os.path.exists(FLAGS.model):
        raise tflags.ConfigError(f"--model={FLAGS.model} does not exist; pass a .keras file or example:vgg")
    try:
        from tfbnas import models  # noqa: F401  (registers the Child's layers for loading)
    except ImportError:
        pass
    return tf.keras.models.load_model(FLAGS.model, compile=False)


def run_dnal(run_dir):
    import tensorflow as tf

    from tfbnas.width import dnal

    (x, y), (xt, yt), info = _arrays()
    tf.keras.utils.set_random_seed(FLAGS.seed)
    model = _load_model(info)
    gated = dnal.insert_gates(model)
    bs = FLAGS.batch_size
    if FLAGS.weight_epochs:
        dnal.train_weights(gated, (x, y), FLAGS.weight_epochs, optimizer=tf.keras.optimizers.Adam(FLAGS.lr),
                           batch_size=bs, verbose=2)
    gated.compile(loss=dnal.default_loss(gated), metrics=["accuracy"])
    dnal.set_gate_mode(gated, "off")
    before = float(gated.evaluate(xt, yt, batch_size=256, verbose=0)[1])
    print(f"test accuracy before pruning: {before:.4f}")
    dnal.train_gates(gated, (x, y), FLAGS.gate_epochs, lambda_a=FLAGS.lambda_a, penalty=FLAGS.penalty,
                     delta_start=FLAGS.delta_start, delta_end=FLAGS.delta_end, batch_norm=FLAGS.gate_batch_norm,
                     optimizer=tf.keras.optimizers.SGD(FLAGS.gate_lr), batch_size=bs, verbose=2)
    pruned = dnal.prune(gated)
    rows = dnal.width_table(gated)
    pruned.compile(loss=dnal.default_loss(pruned), metrics=["accuracy"])
    at_prune = float(pruned.evaluate(xt, yt, batch_size=256, verbose=0)[1])
    print(f"test accuracy of the pruned model before finetuning: {at_prune:.4f}")
    if FLAGS.finetune_epochs:
        dnal.finetune(pruned, (x, y), FLAGS.finetune_epochs, optimizer=tf.keras.optimizers.Adam(FLAGS.lr / 2),
                      batch_size=bs, verbose=2)
    after = float(pruned.evaluate(xt, yt, batch_size=256, verbose=0)[1])
    summary = {"method": "dnal", "model": FLAGS.model or FLAGS.genotype, "params_before": int(model.count_params()),
               "params_after": int(pruned.count_params()), "test_accuracy_before": before,
               "test_accuracy_pruned": at_prune, "test_accuracy_finetuned": after}
    _write(run_dir, summary, rows, pruned, f"DNAL widths of {model.name}")


def _budget(full_cost, median=None):
    if FLAGS.budget is not None:
        return FLAGS.budget
    if FLAGS.budget_fraction is not None:
        return FLAGS.budget_fraction * full_cost
    return median if median is not None else 0.5 * full_cost


def _macro_rows(widths, max_widths):
    from tfbnas.width.channel_bench import LAYER_NAMES, macro_channels

    after = macro_channels(widths, max_widths)
    return [{"layer": n, "type": "macro width", "before": int(c), "after": int(a), "multiplier": float(w)}
            for n, c, a, w in zip(LAYER_NAMES, max_widths, after, widths)]


def _check_bcnet_flags():
    given = [f"--{name}" for name in _EVOLUTION_FLAGS if FLAGS[name].present]
    if given and FLAGS.search != "evolution":
        raise tflags.ConfigError(f"{' and '.join(given)} apply to --search=evolution only; drop them or pass "
                                 "--search=evolution")
    if FLAGS.final_training == "scratch" and not FLAGS.benchmark and FLAGS.finetune_epochs < 1:
        raise tflags.ConfigError("--final_training=scratch trains the found widths for --finetune_epochs; set it "
                                 "to at least 1")


def _search_kwargs(layer_prior=None):
    """Oracle arguments of --search: evolution takes its population flags and the layer prior; the surrogate
    and random oracles take neither (SurrogateWidthOracle has no prior argument)."""
    if FLAGS.search == "evolution":
        return {"population_size": FLAGS.population_size, "initial_population": FLAGS.initial_population,
                "layer_prior": layer_prior}
    return {}


def run_bcnet(run_dir):
    import numpy as np
    import tensorflow as tf

    from tfbnas.width import bcnet, channel_bench, evolution

    search_dir = os.path.join(run_dir, "search")
    if FLAGS.benchmark:
        bench = channel_bench.ChannelBenchMacro(FLAGS.benchmark_path)
        budget = _budget(channel_bench.macro_flops((1.0,) * 7), bench.median_flops())
        space = evolution.WidthSpace(channel_bench.LAYER_NAMES, channel_bench.GRID, cost=bench.flops, budget=budget)
        # No supernet here, so no learned width prior: evolution's "prior" initial population is the
        # budget-filling ranking of uniform draws.
        tuner = evolution.run_width_search(space, bench.accuracy, FLAGS.search, FLAGS.max_trials, search_dir,
                                           f"{FLAGS.search}_seed{FLAGS.seed}", FLAGS.seed, **_search_kwargs())
        widths = tuner.best_widths()
        summary = {"method": "bcnet", "benchmark": FLAGS.benchmark, "search": FLAGS.search,
                   "layer_prior": "none (no supernet here; evolution's prior population only fills the budget)"
                   if FLAGS.search == "evolution" else "none",
                   "budget_flops": budget,
                   "found": channel_bench.ChannelBenchMacro.key(widths), "true_accuracy": bench.accuracy(widths),
                   "flops": bench.flops(widths), "rank_under_budget": bench.rank(widths, budget),
                   "entries_under_budget": bench.count(budget), "rank_overall": bench.rank(widths),
                   "best_under_budget": bench.accuracy(bench.best(budget)), "queries": tuner.queries()}
        model = bcnet.build_macro_model(widths)
        _write(run_dir, summary, _macro_rows(widths, channel_bench.MAX_WIDTHS), model,
               "Channel-Bench-Macro (MobileNet) width search")
        return

    (x, y), (xt, yt), info = _arrays()
    if len(x) <= FLAGS.eval_examples:
        raise tflags.ConfigError(f"--eval_examples={FLAGS.eval_examples} leaves no training data; lower it or raise "
                                 "--train_examples")
    x_val, y_val = x[-FLAGS.eval_examples:], y[-FLAGS.eval_examples:]
    x_tr, y_tr = x[:-FLAGS.eval_examples], y[:-FLAGS.eval_examples]
    tf.keras.utils.set_random_seed(FLAGS.seed)
    net = bcnet.BCNetSupernet(info.image_shape, info.num_classes, width_scale=FLAGS.width_scale, binary=FLAGS.binary)
    net.compile(optimizer=tf.keras.optimizers.Adam(FLAGS.lr))
    if FLAGS.supernet_epochs:
        net.fit(x_tr, y_tr, batch_size=FLAGS.batch_size, epochs=FLAGS.supernet_epochs, verbose=2)
    val_batches = [(x_val[i:i + 256], y_val[i:i + 256]) for i in range(0, len(x_val), 256)]
    full_cost = net.cost((1.0,) * 7)[FLAGS.cost]
    budget = _budget(full_cost)
    space = evolution.WidthSpace(channel_bench.LAYER_NAMES, net.grid, cost=lambda w: net.cost(w)[FLAGS.cost],
                                 budget=budget)
    prior = net.width_prior() if FLAGS.supernet_epochs else None
    kwargs = _search_kwargs(prior)
    x_cal = x_tr[:FLAGS.recalibrate_examples] if FLAGS.recalibrate_examples else None
    tuner = evolution.run_width_search(space, lambda w: net.score_widths(w, val_batches, calibration_x=x_cal),
                                       FLAGS.search, FLAGS.max_trials, search_dir, f"{FLAGS.search}_seed{FLAGS.seed}",
                                       FLAGS.seed, **kwargs)
    widths = tuner.best_widths()
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sides = {side: net.extract(widths, side, calibration_x=x_tr[:1024]) for side in ("left", "right")}
    for model in sides.values():
        model.compile(loss=loss, metrics=["accuracy"])
    side_acc = {s: float(m.evaluate(x_val, y_val, batch_size=256, verbose=0)[1]) for s, m in sides.items()}
    side = max(side_acc, key=side_acc.get)
    model = sides[side]
    inherited = float(model.evaluate(xt, yt, batch_size=256, verbose=0)[1])
    if FLAGS.final_training == "scratch":
        # BCNet's protocol: the search only chooses the widths; the network is trained anew.
        tf.keras.utils.set_random_seed(FLAGS.seed + 1)
        model = net.build_model(widths)
        optimizer = tf.keras.optimizers.Adam(FLAGS.lr)
    else:
        optimizer = tf.keras.optimizers.Adam(FLAGS.lr / 2)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    if FLAGS.finetune_epochs:
        model.fit(x_tr, y_tr, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs, verbose=2)
        # A few epochs leave the moving BatchNorm statistics (momentum 0.99) far from the trained network's
        # (a fresh model starts them at 0 / 1): recompute them, as for the extracted model.
        bcnet.calibrate_batchnorm(model, x_tr[:1024])
    after = float(model.evaluate(xt, yt, batch_size=256, verbose=0)[1])
    if FLAGS.search == "evolution":
        prior_use = ("supernet width_prior (initial population and mutations)" if prior is not None
                     else "uniform (untrained supernet)")
    else:
        prior_use = f"none ({FLAGS.search} takes no prior)"
    summary = {"method": "bcnet", "binary": FLAGS.binary, "search": FLAGS.search, "layer_prior": prior_use,
               "cost": FLAGS.cost, "budget": budget, "full_width_cost": full_cost, "found_cost": space.cost(widths),
               "recalibrate_examples": FLAGS.recalibrate_examples if x_cal is not None else 0,
               "supernet_score": net.score_widths(widths, val_batches, calibration_x=x_cal)["score"],
               "queries": tuner.queries(),
               "side": side, "test_accuracy_inherited": inherited, "final_training": FLAGS.final_training,
               "final_epochs": FLAGS.finetune_epochs,
               "test_accuracy_scratch" if FLAGS.final_training == "scratch" else "test_accuracy_finetuned": after,
               "width_prior": np.round(net.width_prior(), 4).tolist()}
    title = "BCNet width search" + (" (trained from scratch)" if FLAGS.final_training == "scratch" else "")
    _write(run_dir, summary, _macro_rows(widths, net.max_widths), model, title)


def main(argv):
    del argv
    if FLAGS.method is None:
        raise tflags.ConfigError("pass --method=dnal or --method=bcnet")
    if FLAGS.method == "dnal" and not (FLAGS.model or FLAGS.genotype):
        raise tflags.ConfigError("DNAL needs --model=<file.keras|example:vgg> or --genotype=<genotype.json>")
    if FLAGS.method == "dnal" and FLAGS.benchmark:
        raise tflags.ConfigError("--benchmark works with --method=bcnet (the search algorithm), not with DNAL")
    if FLAGS.method == "bcnet":
        _check_bcnet_flags()
    run_dir = runs.make_run_dir(FLAGS.output_dir, f"width-{FLAGS.method}",
                                "channel_bench" if FLAGS.benchmark else FLAGS.dataset)
    tflags.write_flags(run_dir, tflags.flag_values(["tfbnas"]))
    run_dnal(run_dir) if FLAGS.method == "dnal" else run_bcnet(run_dir)
    print(f"\nrun folder: {run_dir}")


if __name__ == "__main__":
    tflags.run(main, prog="tfbnas.width")
