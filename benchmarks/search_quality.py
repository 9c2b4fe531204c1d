"""Does the search beat chance? The main job's search on several seeds vs OPs-matched random genotypes of
the same space vs a hand-designed 1-bit CNN, every model trained with one recipe, resumable.

    python benchmarks/search_quality.py --flagfile=configs/fashion_mnist.flags      # the full comparison
    python benchmarks/search_quality.py --flagfile=configs/fashion_mnist.flags \\
        --genotypes=a.json,b.json,c.json                                            # existing searches instead

Groups (defaults in brackets):

* searched: for each of ``--seeds`` [0,1,2] the search of the main job (``tfbnas.search.run_search.search``
  configured from the flagfile, ``seed`` replaced) into ``RESULTS/search_seed<s>``, and its Child; or the
  ``--genotypes`` files (then no search runs).
* random: ``--random`` [10] genotypes drawn uniformly from the same space (two distinct inputs per node, a
  non-zero op per edge) with ``--random_seed`` [1234]; a draw is kept when its Child's OPs lie within
  ``--ops_tolerance`` [±25%] of the mean OPs of the searched Childs (``--draws`` [400] at most), so the kept
  ones are uniform among the OPs-matched genotypes. Saved as ``RESULTS/random<i>.json``.
* hand-designed: ``tfbnas.baselines.binary_resnet`` with its widths scaled to the same mean OPs.

Every model is trained with ``tfbnas.train.recipe.train_model`` and one recipe: the flagfile's training
flags (the main job's Child recipe: Parent teacher, distillation, schedule, ...) with the proxy flags on
top: ``--proxy_train_examples`` [20000], ``--proxy_epochs`` [2] and ``--proxy_parent_epochs`` [1] replace
``--train_examples``, ``--epochs`` and ``--parent_epochs`` (0: keep the flagfile's value). Every model
starts from the same seed. Each one is then converted with LCE and timed on the host (indirect bgemm,
``--benchmark_runs``, ``--benchmark_threads``).

``RESULTS`` is ``--results_dir`` [runs/search_quality]; it holds ``config.json`` (the configuration; a
second call must match it), ``results.jsonl`` (one row per finished model: a second call skips those and
continues where the first stopped; searches and trainings killed half-way resume from their checkpoints),
``models/<name>/`` (training run folders), ``search_quality.md`` (the tables) and ``search_quality.json``
(rows, recipe, summary). The output ends with the table of mean ± std per group, the rank of each searched
Child among the random ones, its distance to the random genotypes' line of top-1 over log OPs (a comparison
at equal OPs, since the OPs window lets bigger Childs in), a one-line verdict and, as the last line::

    SUMMARY search-quality: searched mean 0.xxxx min 0.xxxx (n=3); random mean 0.xxxx best 0.xxxx (n=10); \
hand-designed 0.xxxx; searched beats random mean on k/3 seeds
"""

import dataclasses
import json
import os
import sys
import time
from typing import Callable, NamedTuple, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfbnas  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from tfbnas import flags as tflags  # noqa: E402
from tfbnas.flags import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
tflags.define_all()
flags.DEFINE_list("seeds", ["0", "1", "2"], "Search seeds: one search of the main job per seed.")
flags.DEFINE_list("genotypes", None, "Existing searched genotype.json files to use instead of searching.")
flags.DEFINE_integer("random", 10, "OPs-matched random genotypes to train.", lower_bound=1)
flags.DEFINE_integer("random_seed", 1234, "Seed of the random genotype draws.")
flags.DEFINE_integer("draws", 400, "Most random genotypes drawn to find --random OPs-matched ones.", lower_bound=1)
flags.DEFINE_float("ops_tolerance", 0.25, "Relative OPs window around the searched Childs' mean OPs.",
                   lower_bound=0.0)
flags.DEFINE_integer("proxy_train_examples", 20000, "--train_examples of the recipe (0: the flagfile's).",
                     lower_bound=0)
flags.DEFINE_integer("proxy_epochs", 2, "--epochs of the recipe (0: the flagfile's).", lower_bound=0)
flags.DEFINE_integer("proxy_parent_epochs", 1, "--parent_epochs of the recipe (0: the flagfile's).", lower_bound=0)
flags.DEFINE_string("results_dir", "runs/search_quality", "Results folder; a second call with it resumes.")

BENCH_FLAGS = ("seeds", "genotypes", "random", "random_seed", "draws", "ops_tolerance", "proxy_train_examples",
               "proxy_epochs", "proxy_parent_epochs")
PROXY_FLAGS = {"proxy_train_examples": "train_examples", "proxy_epochs": "epochs",
               "proxy_parent_epochs": "parent_epochs"}
NOT_CONFIG = ("results_dir", "output_dir", "resume")  # where things go, not what is measured
GROUPS = ("searched", "random", "hand-designed")
PROGRAM = "search_quality.py"


class Entry(NamedTuple):
    """One model of the comparison; ``build()`` returns ``(model, real-valued teacher twin)``."""

    name: str
    group: str
    seed: Optional[int]
    genotype: Optional[str]
    build: Callable[[], tuple]


class Searched(NamedTuple):
    """A searched genotype: its row name, search seed (None for a --genotypes file), file, genotype, and the
    recipe with the space settled by ``resolve_space``."""

    name: str
    seed: Optional[int]
    path: str
    genotype: object
    recipe: object


class Clock:
    def __init__(self):
        self.start = time.time()

    def __str__(self):
        return f"{time.time() - self.start:.0f} s elapsed"


def indented(*parts):
    print("    " + " ".join(str(p) for p in parts))


# ------------------------------------------------------------------------------------ configuration


def seeds() -> list:
    try:
        values = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise ConfigError(f"--seeds={','.join(FLAGS.seeds)} must be integers, e.g. --seeds=0,1,2") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--seeds={','.join(FLAGS.seeds)} must be distinct integers, e.g. --seeds=0,1,2")
    return values


def configuration() -> dict:
    """The flags that define the results (every tfbnas flag and this benchmark's), JSON-ready."""
    values = {**tflags.flag_values(["tfbnas"]), **{name: FLAGS[name].value for name in BENCH_FLAGS}}
    values["seeds"] = seeds()
    if values["genotypes"]:
        values["genotypes"] = [os.path.abspath(p) for p in values["genotypes"]]
    values = {k: v for k, v in values.items() if k not in NOT_CONFIG}
    return json.loads(json.dumps(values, default=str))


def _flag_text(name: str, value) -> str:
    if value is None:
        return f"no --{name}"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"--{name}={str(value).lower() if isinstance(value, bool) else value}"


def check_config(root: str, config: dict):
    """A resumed call: the configuration must equal the one saved by the first call (if any)."""
    path = os.path.join(root, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    for name in sorted(set(saved) & set(config)):  # (flags added to tfbnas since then are not compared)
        if saved[name] != config[name]:
            now, then = _flag_text(name, config[name]), _flag_text(name, saved[name])
            raise ConfigError(f"{now} differs from {then} that {root} was started with: pass {then} to resume it, "
                              "or choose another --results_dir")


def save_config(root: str, config: dict):
    """The first call's configuration, once it has been checked (``config.json``)."""
    path = os.path.join(root, "config.json")
    if not os.path.exists(path):
        os.makedirs(root, exist_ok=True)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def proxy_recipe(values: dict, proxy: dict):
    """The one training recipe: the flagfile's train flags with the proxy flags (``{flag: value}``) on top."""
    from tfbnas.train.recipe import TrainConfig

    overrides = {field: proxy[flag] for flag, field in PROXY_FLAGS.items() if proxy[flag]}
    config = TrainConfig.from_flags({**values, **overrides, "genotype": None})
    config.check()
    return config


def describe_recipe(config, sizes, proxy: dict) -> dict:
    teacher = config.distill_alpha > 0 or config.init_from_parent
    return {"train_examples": sizes["train"], "val_examples": sizes["val"], "test_examples": sizes["test"],
            "epochs": config.epochs, "two_stage": config.two_stage,
            "parent_epochs": config.phase_epochs("parent") if teacher else 0,
            "distill_alpha": config.distill_alpha, "distill_temperature": config.distill_temperature,
            "optimizer": config.optimizer, "lr": config.peak_lr, "lr_schedule": config.lr_schedule,
            "batch_size": config.batch_size, "seed": config.seed,
            "proxy": dict(proxy)}


def recipe_text(recipe: dict) -> str:
    proxy = " ".join(f"--{k}={v}" for k, v in recipe["proxy"].items())
    return ("recipe (all models): " + ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "proxy") +
            f" (flagfile train flags + {proxy}; 0: the flagfile's)")


# ------------------------------------------------------------------------------------------- models


def search_folder(root: str, seed: int) -> str:
    """Where the search of ``seed`` runs: ``root/search_seed<seed>``."""
    return os.path.join(root, f"search_seed{seed}")


def run_search(values: dict, seed: int, root: str, clock: Clock) -> str:
    """The main job's search with ``seed`` into :func:`search_folder` (resumed, or kept when done)."""
    from tfbnas.search.run_search import SearchConfig, search

    folder = search_folder(root, seed)
    genotype = os.path.join(folder, "genotype.json")
    if os.path.exists(os.path.join(folder, "search_summary.json")):
        print(f"search seed {seed}: finished earlier, kept {genotype}")
        return genotype
    resume = os.path.exists(os.path.join(folder, "checkpoints", "checkpoint"))
    print(f"search seed {seed}: {'resuming' if resume else 'searching'} in {folder} ({clock})")
    seeded = {**values, "seed": seed}
    tflags.write_flags(folder, seeded)
    result = search(SearchConfig.from_flags(seeded), folder, resume=resume, log=indented, verbose=0)
    print(f"search seed {seed}: done in {result.seconds:.0f} s ({clock})")
    return genotype


def random_genotype(preset, nodes, rng):
    """A uniform draw from the space: two distinct inputs per node, a non-zero op per edge."""
    from tfbnas.space.genotype import Genotype
    from tfbnas.space.ops import preset_ops

    ops = [op for op in preset_ops(preset) if op != "none"]

    def cell():
        edges = []
        for node in range(nodes):
            for source in rng.choice(2 + node, size=2, replace=False):
                edges.append((str(rng.choice(ops)), int(source)))
        return edges

    return Genotype(preset, nodes, cell(), cell())


def child_ops(genotype, kwargs) -> float:
    from tfbnas.cost import model_cost
    from tfbnas.models import build_child

    return model_cost(build_child(genotype, **kwargs)).ops


def random_genotypes(like, target_ops: float, kwargs: dict, root: str) -> list:
    """``--random`` OPs-matched random genotypes: the saved ones, or the first matching draws (saved)."""
    from tfbnas.space.genotype import Genotype

    paths = [os.path.join(root, f"random{i}.json") for i in range(FLAGS.random)]
    if all(os.path.exists(p) for p in paths):
        print(f"random genotypes: {FLAGS.random} kept from an earlier call ({root}/random*.json)")
        return [Genotype.load(p) for p in paths]
    print(f"random genotypes: drawing up to {FLAGS.draws} with --random_seed={FLAGS.random_seed} ...")
    rng = np.random.RandomState(FLAGS.random_seed)
    kept, draws = [], 0
    while len(kept) < FLAGS.random and draws < FLAGS.draws:
        draws += 1
        genotype = random_genotype(like.preset, like.nodes, rng)
        if abs(child_ops(genotype, kwargs) - target_ops) <= FLAGS.ops_tolerance * target_ops:
            kept.append(genotype)
    if len(kept) < FLAGS.random:
        raise ConfigError(f"only {len(kept)} of {draws} random genotypes lie within ±{FLAGS.ops_tolerance:.0%} of "
                          f"the searched Childs' {target_ops / 1e6:.2f} M OPs; raise --ops_tolerance or --draws")
    for genotype, path in zip(kept, paths):
        genotype.save(path)
    print(f"random genotypes: {len(kept)} within ±{FLAGS.ops_tolerance:.0%} of {target_ops / 1e6:.2f} M OPs "
          f"in {draws} draws")
    return kept


def matched_resnet_widths(target_ops: float, info) -> tuple:
    """Stage widths of ``binary_resnet`` (multiples of 8) scaled towards ``target_ops``: stops within 10%
    or when the rounding cycles, and returns the closest widths seen."""
    from tfbnas.baselines import binary_resnet
    from tfbnas.cost import model_cost

    scale, seen = 1.0, {}
    for _ in range(12):
        widths = tuple(max(8, int(round(w * scale / 8)) * 8) for w in (32, 64, 128))
        if widths in seen:
            break
        seen[widths] = ops = model_cost(binary_resnet(info.image_shape, info.num_classes, widths=widths)).ops
        if abs(ops - target_ops) <= 0.1 * target_ops:
            break
        scale *= (target_ops / ops) ** 0.5
    return min(seen, key=lambda w: abs(seen[w] - target_ops))


def cell_builder(genotype, kwargs: dict) -> Callable[[], tuple]:
    """``build()`` of a cell genotype's Entry: its Child and its real-valued Parent."""
    from tfbnas.models import build_child, build_parent

    return lambda: (build_child(genotype, **kwargs), build_parent(genotype, **kwargs))


def entries(searched: list, kwargs: dict, info, root: str) -> list:
    """Every model of the comparison, in training order."""
    from tfbnas.baselines import binary_resnet
    from tfbnas.train.recipe import real_twin

    target = float(np.mean([child_ops(s.genotype, kwargs) for s in searched]))
    print(f"searched Childs: mean {target / 1e6:.2f} M OPs")
    rows = [Entry(s.name, "searched", s.seed, s.path, cell_builder(s.genotype, kwargs)) for s in searched]
    for i, genotype in enumerate(random_genotypes(searched[0].genotype, target, kwargs, root)):
        rows.append(Entry(f"random{i}", "random", None, os.path.join(root, f"random{i}.json"),
                          cell_builder(genotype, kwargs)))
    widths = matched_resnet_widths(target, info)
    print(f"hand-designed: binary_resnet widths {widths}")

    def resnet():
        model = binary_resnet(info.image_shape, info.num_classes, widths=widths)
        return model, real_twin(model)

    rows.append(Entry("hand-designed", "hand-designed", None, None, resnet))
    return rows


def deploy_figures(model_path: str, work_dir: str, values: dict):
    """TFLite size (bytes) and host latency (ms, median) of a trained ``.keras`` model."""
    from tfbnas.deploy.benchmark import host_latency
    from tfbnas.deploy.convert import convert_model_file

    output = os.path.join(work_dir, "model.tflite")
    convert_model_file(model_path, output, parity_examples=0, use_float_twin=False)
    latency = host_latency(output, "indirect_bgemm", threads=values["benchmark_threads"],
                           runs=values["benchmark_runs"], warmup=3)
    return os.path.getsize(output), latency.median_ms


def train_entry(entry: Entry, recipe, train_data, root: str, values: dict) -> dict:
    """Train, convert and time one model; its results row."""
    import tensorflow as tf
    from tfbnas.train.recipe import configure_runtime, train_model

    tf.keras.backend.clear_session()
    configure_runtime(recipe)  # every model starts from the same seed, whatever ran before it
    model, parent = entry.build()
    run_dir = os.path.join(root, "models", entry.name)
    start = time.time()
    result = train_model(model, parent, recipe, run_dir, resume=os.path.isdir(os.path.join(run_dir, "checkpoints")),
                         train_data=train_data, name="model", log=indented, verbose=0)
    size, latency = deploy_figures(os.path.join(run_dir, "model.keras"), run_dir, values)
    return {"name": entry.name, "group": entry.group, "seed": entry.seed, "genotype": entry.genotype,
            "top1": result.metrics["test_top1"], "ops": result.metrics["cost"]["ops"], "size_kib": size / 1024,
            "latency_ms": latency, "seconds": time.time() - start}


# ------------------------------------------------------------------------------------------ results


def read_rows(path: str, repair: bool = True) -> dict:
    """Finished rows by name; a line cut short by a kill is dropped (and, with ``repair``, the file rewritten
    without it: only the process that appends to the file may repair it)."""
    if not os.path.exists(path):
        return {}
    rows, broken = {}, False
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                rows[row["name"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                broken = broken or bool(line.strip())
    if broken and repair:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows.values())
    return rows


def append_row(path: str, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list) -> dict:
    searched = [r["top1"] for r in rows if r["group"] == "searched"]
    random_ = [r["top1"] for r in rows if r["group"] == "random"]
    hand = next(r["top1"] for r in rows if r["group"] == "hand-designed")
    s_mean, s_std = _mean_std(searched)
    r_mean, r_std = _mean_std(random_)
    beats = sum(t > r_mean for t in searched)
    ranks = {r["name"]: 1 + sum(t > r["top1"] for t in random_) for r in rows if r["group"] == "searched"}
    summary = {"searched_mean": s_mean, "searched_std": s_std, "searched_min": min(searched),
               "n_searched": len(searched), "random_mean": r_mean, "random_std": r_std, "random_best": max(random_),
               "n_random": len(random_), "hand_designed": hand, "beats_random_mean": beats, "ranks": ranks}
    summary.update(ops_adjusted(rows))
    summary["verdict"] = verdict(summary)
    summary["line"] = (f"SUMMARY search-quality: searched mean {s_mean:.4f} min {min(searched):.4f} "
                       f"(n={len(searched)}); random mean {r_mean:.4f} best {max(random_):.4f} (n={len(random_)}); "
                       f"hand-designed {hand:.4f}; searched beats random mean on {beats}/{len(searched)} seeds")
    return summary


def random_line(rows: list) -> Optional[Callable[[float], float]]:
    """The random genotypes' least-squares line of top-1 over log OPs, as ``top1(ops)``; None with fewer than
    3 random rows or when they all have one OPs count."""
    random_ = [r for r in rows if r["group"] == "random"]
    x = np.log([r["ops"] for r in random_])
    if len(random_) < 3 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, [r["top1"] for r in random_], 1)
    return lambda ops: float(intercept + slope * np.log(ops))


def ops_adjusted(rows: list) -> dict:
    """Each searched (and the hand-designed) model's top-1 minus the :func:`random_line` at its OPs
    (``residuals`` by name, the searched ones' ``adjusted_mean``): the ±tolerance OPs window lets a bigger
    Child win by size alone, this compares at equal OPs. Empty without a random line."""
    line = random_line(rows)
    if line is None:
        return {}
    residuals = {r["name"]: r["top1"] - line(r["ops"]) for r in rows if r["group"] in ("searched", "hand-designed")}
    searched = [v for name, v in residuals.items() if name != "hand-designed"]
    return {"residuals": residuals, "adjusted_mean": float(np.mean(searched)),
            "points_per_doubling": line(2.0) - line(1.0)}


def verdict(s: dict) -> str:
    """One line: does the search beat random sampling, by how many standard errors of the difference."""
    diff = s["searched_mean"] - s["random_mean"]
    se = (s["searched_std"] ** 2 / s["n_searched"] + s["random_std"] ** 2 / s["n_random"]) ** 0.5
    gap = f"{100 * diff:+.2f} top-1 points vs the random mean" + (f", {diff / se:+.1f} standard errors" if se else "")
    hand = 100 * (s["searched_mean"] - s["hand_designed"])
    hand_text = (f"; the hand-designed ResNet is {abs(hand):.2f} points {'below' if hand > 0 else 'above'} the "
                 "searched mean")
    n, k = s["n_searched"], s["beats_random_mean"]
    if k == n and se and diff > 2 * se:
        head = f"the search beats OPs-matched random genotypes: all {n} searched Childs above the random mean"
    elif k == 0:
        head = "no evidence that the search beats random genotypes: no searched Child above the random mean"
    else:
        why = ("" if k < n else ", but too few models to measure the spread" if not se else
               ", but by less than 2 standard errors")
        head = f"inconclusive: {k}/{n} searched Childs above the random mean{why}"
    adjusted = ""
    if "adjusted_mean" in s:
        adjusted = (f"; at equal OPs (the random genotypes' top-1 over log OPs, {100 * s['points_per_doubling']:+.2f} "
                    f"points per doubling) the searched Childs lie {100 * s['adjusted_mean']:+.2f} points above "
                    f"the random line, the hand-designed ResNet {100 * s['residuals']['hand-designed']:+.2f}")
    return f"verdict: {head} ({gap}){hand_text}{adjusted}"


def markdown(rows: list, summary: dict, recipe: dict) -> str:
    lines = [recipe_text(recipe), "",
             "| model | group | seed | test top-1 | rank among random | vs random line at its OPs | OPs (M) | "
             "TFLite KiB | latency ms (host, indirect bgemm) | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rank = f"{summary['ranks'][r['name']]} of {summary['n_random'] + 1}" if r["name"] in summary["ranks"] else ""
        residual = summary.get("residuals", {}).get(r["name"])
        residual = "" if residual is None else f"{100 * residual:+.2f}"
        lines.append(f"| {r['name']} | {r['group']} | {'' if r['seed'] is None else r['seed']} | {r['top1']:.4f} | "
                     f"{rank} | {residual} | {r['ops'] / 1e6:.2f} | {r['size_kib']:.1f} | {r['latency_ms']:.3f} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "| group | n | test top-1 mean ± std | OPs (M) | TFLite KiB | latency ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for group in GROUPS:
        members = [r for r in rows if r["group"] == group]
        top1, std = _mean_std([r["top1"] for r in members])
        ops, size, latency = (np.mean([r[key] for r in members]) for key in ("ops", "size_kib", "latency_ms"))
        lines.append(f"| {group} | {len(members)} | {top1:.4f} ± {std:.4f} | {ops / 1e6:.2f} | {size:.1f} | "
                     f"{latency:.3f} |")
    return "\n".join(lines + ["", summary["verdict"]])


# --------------------------------------------------------------------------------------------- main


def load_searched(recipe, name: str, seed: Optional[int], path: str):
    """A :class:`Searched`; a genotype of another space than the flags' fails with a ConfigError."""
    from tfbnas.train.recipe import resolve_space

    resolved, genotype, _ = resolve_space(dataclasses.replace(recipe, genotype=path))
    return Searched(name, seed, path, genotype, resolved)


def train_all(todo: list, recipe, train_data, root: str, values: dict, clock: Clock) -> list:
    """Rows of every entry: finished ones from ``results.jsonl``, the others trained and appended."""
    results_path = os.path.join(root, "results.jsonl")
    done = read_rows(results_path)
    rows = []
    for k, entry in enumerate(todo, 1):
        if entry.name in done:
            row = done[entry.name]
            print(f"[{k}/{len(todo)}] {entry.name}: finished earlier, top-1 {row['top1']:.4f} (kept)")
        else:
            print(f"[{k}/{len(todo)}] training {entry.name} ({entry.group}) ... ({clock})")
            row = train_entry(entry, recipe, train_data, root, values)
            append_row(results_path, row)
            print(f"[{k}/{len(todo)}] {entry.name}: top-1 {row['top1']:.4f}, {row['ops'] / 1e6:.2f} M OPs, "
                  f"{row['size_kib']:.1f} KiB, {row['latency_ms']:.3f} ms ({row['seconds']:.0f} s; {clock})")
        rows.append(row)
    return rows


def write_results(root: str, rows: list, recipe_info: dict, recipe, config: dict):
    """``search_quality.md`` and ``search_quality.json``; returns the summary and the markdown."""
    summary = summarize(rows)
    table = markdown(rows, summary, recipe_info)
    with open(os.path.join(root, "search_quality.md"), "w") as f:
        f.write(table + "\n\n" + summary["line"] + "\n")
    with open(os.path.join(root, "search_quality.json"), "w") as f:
        json.dump({"recipe": recipe_info, "train_config": dataclasses.asdict(recipe), "flags": config, "rows": rows,
                   "summary": summary}, f, indent=2)
    return summary, table


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also in a log file
    from tfbnas.train.recipe import TrainData

    clock = Clock()
    root = os.path.abspath(FLAGS.results_dir)
    values = tflags.flag_values(["tfbnas"])
    config = configuration()
    check_config(root, config)
    proxy = {flag: config[flag] for flag in PROXY_FLAGS}
    recipe = proxy_recipe(values, proxy)
    train_data = TrainData(recipe)
    recipe_info = describe_recipe(recipe, train_data.sizes, proxy)
    print(recipe_text(recipe_info))
    given = [load_searched(recipe, f"searched{i}", None, p) for i, p in enumerate(config["genotypes"] or [])]
    save_config(root, config)  # (after the checks above, so a typo does not pin the folder's configuration)

    searched = given or [load_searched(recipe, f"searched-seed{s}", s, run_search(values, s, root, clock))
                         for s in config["seeds"]]
    recipe = searched[0].recipe  # the space is the flags' for every genotype (load_searched checks it)
    info = train_data.info
    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=recipe.init_channels,
                  num_cells=recipe.num_cells, widths=recipe.widths)
    todo = entries(searched, kwargs, info, root)
    rows = train_all(todo, recipe, train_data, root, values, clock)
    summary, table = write_results(root, rows, recipe_info, recipe, config)
    print(f"\n{table}\n\nresults: {root} ({clock})\n{summary['line']}")


if __name__ == "__main__":
    tflags.run(main, prog=PROGRAM)
