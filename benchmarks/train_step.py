"""Training-step speed: the Parent, the distilled Child and the hand-designed baseline against the machine's
convolution throughput.

    python benchmarks/train_step.py [--configs=smoke,fashion_mnist] [--genotype=PATH] [--steps=10]
                                    [--no_grappler] [--no_pipeline] [--convs] [--TFBNAS_FLAG=VALUE ...]

For each config (``configs/<name>.flags``, read as the main job reads it: the recipe's ``TrainConfig`` of
its flags, then any tfbnas flags given after the options, e.g. ``--child_init_channels=16``; default
``fashion_mnist``) it builds, in one run, the training steps of the recipe
(``tfbnas.train.recipe``: ``make_optimizer``, the phase's loss and metrics, ``Distiller`` with a frozen
teacher) and times them side by side with the reference conv of ``benchmarks/search_step.py``:

* ``parent``: the real-valued Parent twin (``build_parent``) on labels (phase ``parent``);
* ``child``: the 1-bit Child (``build_child``) on labels only (``--distill_alpha=0``), to show the teacher's share;
* ``child-distilled``: the Child under its Parent as frozen teacher (phase ``child``: ``Distiller`` =
  teacher forward in inference mode + Child forward and backward);
* ``baseline``: the hand-designed ``binary_resnet`` distilled from its ``real_twin``, as
  ``benchmarks/search_quality.py`` trains it, with its stage widths matched to the Child's OPs
  (``search_quality.matched_resnet_widths``).

The genotype is ``--genotype`` (preset and nodes from its search run's ``flags.json`` or the genotype
itself; channels and cells from the config) or, by default, a fixed mixed genotype of the config's
preset and nodes (:func:`fixed_genotype`: the preset's four kxk conv ops, skip_connect and max_pool_3x3
cycled over the edges). Each step is the compiled Keras ``train_function`` (what ``fit`` runs per step)
fed from an iterator over one fixed synthetic batch of the dataset's image shape and the config's batch
size (``tf.data.Dataset.from_tensors(batch).repeat()``): the input pipeline (decoding, augmentation) is
excluded. ``--pipeline`` (on by default) measures it separately, after the steps: the augmenting training
stream of the recipe (``TrainData(config).train(0)``) pulled alone, in ms per batch and as a share of the
distilled step (not in turns: its prefetching would run during the other steps' timings).

Arithmetic is counted as in ``search_step.py``: only the multiply-accumulates of every ``Conv2D``,
``DepthwiseConv2dNative`` and ``MatMul`` of the model's traced forward pass (x 2 FLOPs; BatchNorm, sign,
pooling and adds are memory traffic, not counted), and of the backward pass what the tape needs
(TensorFlow computes a gradient only where a trainable variable lies upstream):

* forward ``F``: every conv/matmul;
* kernel gradients ``K``: the ``F`` of every conv/matmul whose kernel depends on a trainable variable
  (all of them in a trained model; a binary kernel is ``sign`` of its latent weights);
* input gradients ``I``: the ``F`` of every conv/matmul whose input depends on a trainable variable (all
  but the stem conv, whose input is the image).

A labels-only step is ``F + K + I`` of its model; a distilled step adds the teacher's ``F`` (its forward
pass in inference mode; no gradient). So a single conv on the image costs ``2 * H * W * Cin * Cout * k * k``
FLOPs per image forward and twice that per step (forward + kernel gradient); the Parent and labels-only
Child steps count the same (same conv shapes), and the distilled step counts the Child's plus one forward.

Steps and the reference conv (fwd+bwd 3x3 conv 64->64, 28x28, batch 64, ``search_step.reference_conv``)
are timed in turns (one of each, repeated ``--steps`` times, medians; ``search_step.round_robin``), so
load from other processes hits all of them alike and the fractions of the reference stay meaningful on
a shared machine. Per step it prints the counted GFLOP per step, median step time, images/s, achieved
GFLOP/s, the fraction of the reference (with the reference's GFLOP/s beside it), the time of the first
call (tracing + graph optimisation + first run) and the peak RSS of the process once that step was built
and run once (cumulative: steps are built in table order). Ops run with determinism on when the config's
``--deterministic`` is (the recipe's default); grappler is on as in ``python -m tfbnas.train``
(``--no_grappler`` turns it off, as the main job's in-process training inherits from a search flagfile's
``--nograph_optimizations``).

``--convs`` then takes the labels-only Child apart: each distinct conv op of its traced step (input shape,
kernel, stride, dilation, and which gradients the step computes) runs alone on a random +-1 batch, in turns
with the reference and with an empty ``tf.function`` call whose time is subtracted, and the table gives
each one's GFLOP/s, fraction of the reference and count in the model. Their count-weighted sum is the
step's time in convs, and total conv FLOPs over that time is the *ceiling*: the fraction of the reference
the step would reach if sign, BatchNorm, shortcuts, pooling and the optimizer took no time, i.e. what
fusing every other op could give at most.

The last line summarises the default config (``fashion_mnist``, else the last one run)::

    SUMMARY train-step: reference X GFLOP/s; parent A% (B img/s); child-distilled C% (D img/s); \
baseline E% (F img/s); peak RSS G MiB
"""

import argparse
import dataclasses
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_quality  # noqa: E402  (defines the tfbnas flags, read from the config flagfiles)
import search_step  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from tfbnas import data  # noqa: E402
from tfbnas import flags as tflags  # noqa: E402
from tfbnas.baselines import binary_resnet  # noqa: E402
from tfbnas.cost import model_cost  # noqa: E402
from tfbnas.models import build_child, build_parent  # noqa: E402
from tfbnas.space.genotype import Genotype  # noqa: E402
from tfbnas.space.ops import PARAM_FREE_OPS, PRESETS  # noqa: E402
from tfbnas.train import recipe  # noqa: E402
from tfbnas.train.distiller import Distiller  # noqa: E402

DEFAULT_CONFIG = "fashion_mnist"
MAC_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
CONV_OPS = MAC_OPS[:2]
SCHEDULE_STEPS = 10000  # length of the learning-rate schedule: it changes no step's work


def train_config(name, genotype=None, overrides=()):
    """The recipe of ``configs/<name>.flags`` with the tfbnas flags ``overrides`` after it (its ``TrainConfig``;
    space settled by ``resolve_space`` when ``genotype`` is a file) and the genotype of the Child."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        search_step.CONFIG_FILES[name])
    flags.FLAGS.unparse_flags()
    flags.FLAGS([sys.argv[0], f"--flagfile={path}", *overrides])
    config = recipe.TrainConfig.from_flags(tflags.flag_values(["tfbnas"]))
    if genotype is None:  # (the space flags as resolve_space settles them, with the Child's own sizes)
        return dataclasses.replace(config, **config.child_sizes()), fixed_genotype(config.preset, config.nodes)
    config, loaded, _ = recipe.resolve_space(dataclasses.replace(config, genotype=os.path.abspath(genotype),
                                                                 preset=None, nodes=None))
    return config, loaded


def fixed_genotype(preset, nodes):
    """The default Child: the preset's kxk conv ops in table order, then skip_connect and max_pool_3x3, cycled
    over the edges of the normal cell (the reduction cell starts two ops further on); node ``n`` reads states
    ``n`` and ``n + 1`` (node 0 both cell inputs, later ones the node before and the state before it)."""
    ops = [op for op in PRESETS[preset] if op not in PARAM_FREE_OPS] + ["skip_connect", "max_pool_3x3"]

    def cell(shift):
        return [(ops[(2 * node + side + shift) % len(ops)], node + side) for node in range(nodes) for side in (0, 1)]

    return Genotype(preset, nodes, cell(0), cell(2))


def traced_forward(model, training=True):
    """``(graph, moved)``: the graph of ``model``'s forward pass on one image and the tensors that depend on a
    trainable variable (where the step computes gradients)."""
    spec = tf.TensorSpec((1,) + tuple(model.input_shape[1:]), tf.float32)
    graph = tf.function(lambda t: model(t, training=training)).get_concrete_function(spec).graph
    handles = {id(v.handle) for v in model.trainable_variables}
    return graph, search_step._reachable(graph, [inner for outer, inner in graph.captures if id(outer) in handles])


def arithmetic(model, training=True):
    """``(F, K, I)``: forward, kernel-gradient and input-gradient multiply-accumulates per image of one step of
    ``model`` (module docstring); ``K = I = 0`` for a frozen model (a teacher)."""
    graph, moved = traced_forward(model, training)
    convs = [(search_step._macs(op), op.inputs) for op in graph.get_operations() if op.type in MAC_OPS]
    return (sum(macs for macs, _ in convs), sum(macs for macs, (_, kernel) in convs if kernel.ref() in moved),
            sum(macs for macs, (x, _) in convs if x.ref() in moved))


def conv_shapes(model):
    """``{shape: (count, MACs per image)}`` of the conv ops of ``model``'s training forward pass, ``shape`` =
    ``(op type, input H, W, C, kernel shape, strides, dilations, padding, kernel gradient?, input gradient?)``
    (the gradients as :func:`arithmetic` counts them)."""
    graph, moved = traced_forward(model)
    shapes = {}
    for op in graph.get_operations():
        if op.type not in CONV_OPS:
            continue
        x, kernel = op.inputs[0], op.inputs[1]
        padding = op.get_attr("padding").decode()
        if padding == "EXPLICIT":
            pads = op.get_attr("explicit_paddings")
            padding = tuple(zip(pads[::2], pads[1::2]))
        key = (op.type, tuple(x.shape.as_list()[1:]), tuple(kernel.shape.as_list()), tuple(op.get_attr("strides")),
               tuple(op.get_attr("dilations")), padding, kernel.ref() in moved, x.ref() in moved)
        count, _ = shapes.get(key, (0, 0))
        shapes[key] = (count + 1, search_step._macs(op))
    return shapes


def conv_step(shape, macs, batch):
    """The step of one conv ``shape`` (:func:`conv_shapes`) alone on a random +-1 batch: its forward and the
    kernel and input gradients its model computes; returns the callable and its FLOPs (the step's counting
    rule: ``2 * macs`` per image for each of the three that runs)."""
    kind, (h, w, c), kernel, strides, dilations, padding, kernel_grad, input_grad = shape
    rng = np.random.RandomState(0)
    x = tf.constant(rng.choice([-1.0, 1.0], (batch, h, w, c)).astype(np.float32))
    k = tf.Variable(rng.choice([-1.0, 1.0], kernel).astype(np.float32))
    padding = [[0, 0], *padding[1:3], [0, 0]] if isinstance(padding, tuple) else padding
    if kind == "Conv2D":
        def conv(t):
            return tf.nn.conv2d(t, k, strides, padding, dilations=dilations)
    else:
        def conv(t):
            return tf.nn.depthwise_conv2d(t, k, strides, padding, dilations=dilations[1:3])
    sources = [t for t, grad in ((x, input_grad), (k, kernel_grad)) if grad]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(y * y)
        return [tf.reduce_sum(g) for g in tape.gradient(loss, sources)]

    return (lambda: [float(g) for g in step()]), 2 * macs * batch * (1 + kernel_grad + input_grad)


def conv_ceiling(name, config, genotype, steps, step_seconds):
    """``--convs``: every distinct conv of the labels-only Child's step timed alone, in turns with the reference;
    prints them and the fraction of the reference the step would reach if its convs were its only work."""
    recipe.configure_runtime(config)
    shapes = conv_shapes(build_child(genotype, **child_kwargs(config, data.KNOWN_DATASETS[config.dataset])))
    runs, flops = {}, {}
    for i, (shape, (_, macs)) in enumerate(shapes.items()):
        runs[i], flops[i] = conv_step(shape, macs, config.batch_size)
    runs["reference"], ref_flops = search_step.reference_conv()
    empty = tf.function(lambda: tf.reduce_sum(tf.ones([2])))
    runs["call"] = lambda: float(empty())
    seconds = search_step.round_robin(runs, steps)
    peak = ref_flops / seconds.pop("reference") / 1e9
    call = seconds.pop("call")
    seconds = {i: max(t - call, 1e-6) for i, t in seconds.items()}
    print(f"\n{name}: each conv of the labels-only Child step alone (forward + the gradients the step computes, "
          f"batch {config.batch_size}), timed in turns with (a) = {peak:.1f} GFLOP/s, less the {call * 1e3:.2f} ms "
          f"of an empty call")
    header = (f"{'op':8} {'input':>10} {'kernel':>11} {'stride':>6} {'dil':>3} {'grads':>5} {'count':>5} "
              f"{'GFLOP':>6} {'ms':>6} {'GFLOP/s':>7} {'of (a)':>6}")
    print(header)
    print("-" * len(header))
    total_flops = total_seconds = 0.0
    for i, (shape, (count, _)) in enumerate(shapes.items()):
        kind, hwc, kernel, strides, dilations, _, kernel_grad, input_grad = shape
        rate = flops[i] / seconds[i] / 1e9
        total_flops += count * flops[i]
        total_seconds += count * seconds[i]
        grads = ("K" if kernel_grad else "") + ("I" if input_grad else "")
        print(f"{kind[:8]:8} {'x'.join(map(str, hwc)):>10} {'x'.join(map(str, kernel)):>11} {strides[1]:>6} "
              f"{dilations[1]:>3} {grads:>5} {count:>5} {flops[i] / 1e9:6.3f} {seconds[i] * 1e3:6.2f} {rate:7.1f} "
              f"{rate / peak:6.1%}")
    ceiling = total_flops / total_seconds / 1e9 / peak
    print(f"{name:13} convs alone: {total_seconds * 1e3:.1f} ms = {total_seconds / step_seconds:.0%} of the "
          f"labels-only Child step; ceiling {ceiling:.1%} of (a): the step's fraction if its other ops took no time")
    return ceiling


def step_flops(model, teacher=None):
    """FLOPs per image of a training step of ``model`` (labels only, or distilled from ``teacher``)."""
    total = sum(arithmetic(model))
    if teacher is not None:
        total += arithmetic(teacher, training=False)[0]
    return 2 * total


def compiled(model, teacher, config):
    """``model`` (or its Distiller) compiled as ``recipe.run_phase`` compiles a phase."""
    optimizer = recipe.make_optimizer(config, SCHEDULE_STEPS, model)
    if teacher is None:
        model.compile(optimizer, loss=recipe._ce(), metrics=recipe._metrics())
        return model
    distiller = Distiller(model, teacher, alpha=config.distill_alpha, temperature=config.distill_temperature)
    distiller.compile(optimizer, metrics=recipe._metrics())
    return distiller


def child_kwargs(config, info):
    """The ``build_child`` / ``build_parent`` arguments of the config's Child on the dataset ``info``."""
    return dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=config.init_channels,
                num_cells=config.num_cells, widths=config.widths)


def models(config, genotype, info):
    """``{step: (model, teacher or None)}`` of the four steps (module docstring) and the baseline's widths."""
    kwargs = child_kwargs(config, info)
    child = build_child(genotype, **kwargs)
    widths = search_quality.matched_resnet_widths(model_cost(child).ops, info)
    baseline = binary_resnet(info.image_shape, info.num_classes, widths=widths)
    return {"parent": (build_parent(genotype, **kwargs), None), "child": (child, None),
            "child-distilled": (build_child(genotype, **kwargs), build_parent(genotype, **kwargs)),
            "baseline": (baseline, recipe.real_twin(baseline))}, widths


def prepare(model, teacher, config, batch):
    """The compiled ``train_function`` of one step on a fixed batch, its FLOPs and its first call's time."""
    fit_model = compiled(model, teacher, config)
    function = fit_model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def run():
        return float(function(iterator)["loss"])  # the loss as a number: the step has finished

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    return dict(run=run, first=first, flops=step_flops(model, teacher) * config.batch_size,
                rss=search_step.rss_mib())


def pipeline_seconds(name, config, batches):
    """Seconds per batch of the recipe's training stream pulled alone (after its first batch), or None when
    the dataset is not on this machine."""
    try:
        stream = iter(recipe.TrainData(config).train(0))
    except data.DatasetNotFoundError as e:
        print(f"{name:13} input pipeline: skipped ({str(e).splitlines()[0]})")
        return None
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return (time.perf_counter() - start) / batches


def measure(name, config, genotype, steps, pipeline):
    """Prints the table of one config and returns its rows and the reference's GFLOP/s."""
    info = data.KNOWN_DATASETS[config.dataset]
    recipe.configure_runtime(config)
    built, widths = models(config, genotype, info)
    rng = np.random.RandomState(config.seed)
    b = config.batch_size
    batch = (tf.constant(rng.randn(b, *info.image_shape).astype(np.float32)),
             tf.constant(rng.randint(0, info.num_classes, b).astype(np.int64)))
    prepared = {step: prepare(model, teacher, config, batch) for step, (model, teacher) in built.items()}
    ref_step, ref_flops = search_step.reference_conv()
    runs = {step: p.pop("run") for step, p in prepared.items()}
    runs["reference"] = ref_step
    seconds = search_step.round_robin(runs, steps)
    peak = ref_flops / seconds.pop("reference") / 1e9
    ref = search_step.PEAK
    print(f"\n{name}: {genotype.preset} Child, C={config.init_channels}, {config.num_cells} cells, nodes "
          f"{config.nodes}, batch {b}, {config.optimizer}, distill_alpha {config.distill_alpha:g}, op determinism "
          f"{'on' if config.deterministic else 'off'}; baseline "
          f"binary_resnet widths {widths}; genotype {','.join(op for op, _ in genotype.normal)} | "
          f"{','.join(op for op, _ in genotype.reduce)}")
    print(f"(a) reference dense 3x3 conv {ref['channels']}->{ref['channels']}, {ref['size']}x{ref['size']}, batch "
          f"{ref['batch']}, fwd+bwd: {peak:.1f} GFLOP/s")
    header = (f"{'config':13} {'step':15} {'GFLOP/step':>10} {'step ms':>8} {'img/s':>7} {'GFLOP/s':>8} "
              f"{'of (a)':>7} {'(a) GFLOP/s':>11} {'first s':>8} {'RSS MiB':>8}")
    print(header)
    print("-" * len(header))
    rows = {}
    for step, p in prepared.items():
        r = dict(p, seconds=seconds[step], images=b / seconds[step], rate=p["flops"] / seconds[step] / 1e9)
        r["fraction"] = r["rate"] / peak
        rows[step] = r
        print(f"{name:13} {step:15} {r['flops'] / 1e9:10.3f} {r['seconds'] * 1e3:8.1f} {r['images']:7.1f} "
              f"{r['rate']:8.1f} {r['fraction']:7.1%} {peak:11.1f} {r['first']:8.1f} {r['rss']:8.0f}", flush=True)
    teacher = rows["child-distilled"]["seconds"] - rows["child"]["seconds"]
    print(f"{name:13} teacher forward: distilled - labels-only Child step = {teacher * 1e3:.1f} ms "
          f"({teacher / rows['child-distilled']['seconds']:.0%} of the distilled step) for "
          f"{1 - rows['child']['flops'] / rows['child-distilled']['flops']:.0%} of its FLOPs")
    if pipeline:
        per_batch = pipeline_seconds(name, config, max(2 * steps, 8))
        if per_batch is not None:
            step = rows["child-distilled"]["seconds"]
            print(f"{name:13} input pipeline alone (TrainData(config).train(0)): {per_batch * 1e3:.1f} ms/batch, "
                  f"{b / per_batch:.0f} img/s = {per_batch / step:.0%} of the distilled step's time")
    del built, prepared, runs
    tf.keras.backend.clear_session()
    gc.collect()
    return rows, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIG, help="comma-separated: " +
                        ",".join(search_step.CONFIG_FILES))
    parser.add_argument("--genotype", help="a genotype.json (default: fixed_genotype of each config's preset)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each (medians)")
    parser.add_argument("--no_grappler", action="store_true", help="disable grappler's meta optimizer")
    parser.add_argument("--no_pipeline", dest="pipeline", action="store_false",
                        help="skip the input-pipeline measurement")
    parser.add_argument("--convs", action="store_true", help="also time each conv of the labels-only Child alone "
                        "and print the step's ceiling if the convs were its only work")
    args, overrides = parser.parse_known_args()
    if any(not arg.startswith("--") for arg in overrides):
        parser.error(f"unexpected argument(s) {' '.join(overrides)}: tfbnas flags after the options are written "
                     "--name=value, e.g. --child_init_channels=16")
    names = args.configs.split(",")
    unknown = [n for n in names if n not in search_step.CONFIG_FILES]
    if unknown or args.steps < 1:
        parser.error(f"--configs must name {', '.join(search_step.CONFIG_FILES)} and --steps must be >= 1")
    if args.no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, grappler {'off' if args.no_grappler else 'on'}; "
          f"fixed synthetic batch (no input pipeline); steps timed in turns with the reference conv, medians of "
          f"{args.steps}")
    results = {}
    for name in names:
        try:
            config, genotype = train_config(name, args.genotype, overrides)
        except flags.Error as e:
            parser.error(f"{e} (the tfbnas flags after the options go after configs/{name}.flags)")
        results[name] = measure(name, config, genotype, args.steps, args.pipeline)
        if args.convs:
            conv_ceiling(name, config, genotype, args.steps, results[name][0]["child"]["seconds"])
    rows, peak = results.get(DEFAULT_CONFIG) or results[names[-1]]
    parts = "; ".join(f"{step} {rows[step]['fraction']:.1%} ({rows[step]['images']:.0f} img/s)"
                      for step in ("parent", "child-distilled", "baseline"))
    print(f"\nSUMMARY train-step: reference {peak:.0f} GFLOP/s; {parts}; peak RSS {search_step.rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
