"""Which parts of the search earn their place? The main job's search with one component changed at a time,
each searched Child trained with the recipe of a search-quality run and set beside its rows.

    python benchmarks/search_quality.py --flagfile=configs/fashion_mnist.flags --results_dir=runs/sq
    python benchmarks/dcp_ablation.py --reference=runs/sq                       # every variant below
    python benchmarks/dcp_ablation.py --reference=runs/sq --variants=nodcp_tangent,strategy=darts

A variant is one flag of the search as it is written on the command line without the dashes
(``nodcp_tangent``, ``dcp_ggn``, ``strategy=darts``); everything else is the reference run's configuration
(``REFERENCE/config.json``: the flagfile, the search seeds and the training proxy), so the variant's
Childs are comparable with the reference's searched, random and hand-designed rows. The default variants
switch DCP-NAS's components off one at a time, switch on the ones the main job leaves off, and replace the
strategy by plain DARTS (no Parent) and BATS:

* ``nodcp_tangent``: no tangent propagation towards the Parent's architecture gradient;
* ``nodcp_decoupled``: no decoupled-optimisation (backtracking) term;
* ``nodcp_arch_from_parent``: the Child keeps its own architecture at epoch ends (no ``alpha_hat <- alpha``);
* ``dcp_inherit_weights``: the Child takes the Parent's weights at epoch ends too;
* ``dcp_kl_arch``: the Parent-Child KL in the architecture objective as well as the weight objective;
* ``dcp_ggn``: the Gauss-Newton product of micro-batch gradients instead of the Parent-gradient difference;
* ``strategy=darts``, ``strategy=bats``: the other strategies with the same space, warm-up and temperature.

The special variant ``retrain`` (first by default) trains the reference's own searched genotypes again with
the same recipe: its spread against the reference rows is the run-to-run noise of training alone (oneDNN's
kernels are not bit-reproducible), the floor under which a variant's difference means nothing. Variants
that change the Childs' OPs are also compared at equal OPs: the column "vs random line at its OPs" is the
mean distance in top-1 points to the reference's random genotypes' line of top-1 over log OPs.

``RESULTS`` (``--results_dir`` [runs/dcp_ablation]) holds ``config.json`` (a second call must match it),
``results.jsonl`` (one row per trained Child; a second call continues where the first stopped),
``<variant>/search_seed<s>/`` (searches), ``models/`` (training run folders), ``dcp_ablation.md`` and
``dcp_ablation.json``. The output ends with the table and, as the last line::

    SUMMARY dcp-ablation: reference 0.xxxx; nodcp_tangent 0.xxxx (-0.0xxx); ...; random mean 0.xxxx
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_quality as sq  # noqa: E402  (defines the tfbnas flags and the search-quality ones)
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from tfbnas import flags as tflags  # noqa: E402
from tfbnas.flags import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_VARIANTS = ["retrain", "nodcp_tangent", "nodcp_decoupled", "nodcp_arch_from_parent", "dcp_inherit_weights",
                    "dcp_kl_arch", "dcp_ggn", "strategy=darts", "strategy=bats"]
flags.DEFINE_string("reference", None, "A finished search_quality.py results folder (its configuration, recipe "
                    "and rows are the reference).")
flags.DEFINE_list("variants", DEFAULT_VARIANTS, "Search flags to change, one per variant, as on the command line "
                  "without dashes (nodcp_tangent, strategy=darts), or retrain (the reference's genotypes again).")
flags.DEFINE_string("ablation_dir", "runs/dcp_ablation", "Results folder; a second call with it resumes.")
RETRAIN = "retrain"
PROGRAM = "dcp_ablation.py"


# ------------------------------------------------------------------------------------ configuration


def read_reference(root: str) -> dict:
    """The configuration of a search-quality run whose searches have finished (its trainings may still run:
    the table then shows the rows it has when the ablation ends)."""
    if not root:
        raise ConfigError("--reference is required: a folder written by benchmarks/search_quality.py, "
                          "e.g. --reference=runs/search_quality")
    config_path = os.path.join(root, "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"--reference={root} is not a search-quality run (no config.json): run "
                          "benchmarks/search_quality.py into it first")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("genotypes"):
        raise ConfigError(f"--reference={root} trained given --genotypes, not searches: an ablation needs a "
                          "reference that searched")
    unfinished = [s for s in config["seeds"]
                  if not os.path.exists(os.path.join(sq.search_folder(root, s), "search_summary.json"))]
    if unfinished:
        raise ConfigError(f"--reference={root} has not finished its search for seed {unfinished[0]}: let "
                          "benchmarks/search_quality.py run past its searches first")
    return config


def parse_variant(text: str, values: dict) -> dict:
    """``{flag: value}`` of one variant (``{}`` for ``retrain``); unknown flags fail with a ConfigError."""
    if text == RETRAIN:
        return {}
    name, _, raw = text.partition("=")
    negated = not raw and name.startswith("no") and name[2:] in values and isinstance(values[name[2:]], bool)
    flag = name[2:] if negated else name
    if flag not in values:
        raise ConfigError(f"--variants: {text!r} names no tfbnas flag; write a search flag as on the command line "
                          "without dashes, e.g. nodcp_tangent or strategy=darts")
    if isinstance(values[flag], bool) and not raw:
        return {flag: not negated}
    if not raw:
        raise ConfigError(f"--variants: {text!r} needs a value, e.g. {flag}={values[flag]}")
    try:
        return {flag: FLAGS[flag].parser.parse(raw)}
    except (ValueError, flags.Error) as e:
        raise ConfigError(f"--variants: {text!r}: {e}") from None


def configuration(reference: dict) -> dict:
    return {"reference": reference, "variants": list(FLAGS.variants)}


# ------------------------------------------------------------------------------------------ a variant


def search_figures(folder: str) -> dict:
    """What the search itself shows: parameter-free edges, mean top-two margin, last epoch's DCP ratios."""
    with open(os.path.join(folder, "search_summary.json")) as f:
        summary = json.load(f)
    margins = [e["margin"] for cell in summary.get("edge_margins", {}).values() for e in cell]
    figures = {"param_free_ops": summary["param_free_ops"],
               "mean_margin": float(np.mean(margins)) if margins else None}
    history = os.path.join(folder, "search_history.csv")
    if os.path.exists(history):
        import csv

        with open(history) as f:
            last = list(csv.DictReader(f))[-1]
        for key in ("tangent_ratio", "decoupled_ratio"):
            figures[key] = float(last[key]) if last.get(key) else None
    return figures


def run_variant(name: str, overrides: dict, values: dict, seeds: list, reference_root: str, root: str, recipe,
                kwargs: dict, train_data, done: dict, clock) -> list:
    """Rows of one variant: for each seed its search (or the reference's, for ``retrain``) and its Child."""
    rows = []
    for seed in seeds:
        row_name = f"{name}-seed{seed}"
        if name == RETRAIN:
            genotype = os.path.join(sq.search_folder(reference_root, seed), "genotype.json")
        else:
            genotype = sq.run_search({**values, **overrides}, seed, os.path.join(root, name), clock)
        folder = os.path.dirname(genotype)
        if row_name in done:
            row = done[row_name]
            print(f"{row_name}: finished earlier, top-1 {row['top1']:.4f} (kept)")
        else:
            searched = sq.load_searched(recipe, row_name, seed, genotype)
            entry = sq.Entry(row_name, name, seed, genotype, sq.cell_builder(searched.genotype, kwargs))
            print(f"{row_name}: training its Child ... ({clock})")
            row = {**sq.train_entry(entry, recipe, train_data, root, values), **search_figures(folder)}
            sq.append_row(os.path.join(root, "results.jsonl"), row)
            print(f"{row_name}: top-1 {row['top1']:.4f}, {row['ops'] / 1e6:.2f} M OPs ({row['seconds']:.0f} s; "
                  f"{clock})")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ results


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def _mean(values):
    return float(np.mean(values)) if values else None


def table(groups: dict, reference_rows: list, flags_of: dict) -> tuple:
    """Markdown table (one line per variant) and the SUMMARY line. Reference rows not trained yet are left
    out (their figures show as ``n/a``)."""
    random_mean = _mean([r["top1"] for r in reference_rows if r["group"] == "random"])
    hand = _mean([r["top1"] for r in reference_rows if r["group"] == "hand-designed"])
    base = _mean([r["top1"] for r in groups["reference"]])
    line = sq.random_line(reference_rows)
    lines = ["| variant | flag | top-1 per seed | mean ± std | vs reference | seeds above random mean | "
             "vs random line at its OPs | OPs (M) | param-free edges | mean top-2 margin | tangent ratio | "
             "decoupled ratio |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    parts = []
    for name, rows in groups.items():
        top1 = [r["top1"] for r in rows]
        mean, std = sq._mean_std(top1) if top1 else (None, None)
        delta = None if name == "reference" or None in (mean, base) else mean - base
        above = "n/a" if random_mean is None else f"{sum(t > random_mean for t in top1)}/{len(top1)}"
        figure = {key: _mean([r[key] for r in rows if r.get(key) is not None])
                  for key in ("ops", "param_free_ops", "mean_margin", "tangent_ratio", "decoupled_ratio")}
        adjusted = None if line is None or not rows else 100 * _mean([r["top1"] - line(r["ops"]) for r in rows])
        points = None if delta is None else 100 * delta
        mops = None if figure["ops"] is None else figure["ops"] / 1e6
        lines.append(f"| {name} | {flags_of.get(name, '')} | {', '.join(f'{t:.4f}' for t in top1)} | "
                     f"{_fmt(mean, '.4f')} ± {_fmt(std, '.4f')} | {_fmt(points, '+.2f')} | "
                     f"{above} | {_fmt(adjusted, '+.2f')} | {_fmt(mops, '.2f')} | "
                     f"{_fmt(figure['param_free_ops'], '.1f')} | {_fmt(figure['mean_margin'], '.3f')} | "
                     f"{_fmt(figure['tangent_ratio'], '.3f')} | {_fmt(figure['decoupled_ratio'], '.3f')} |")
        parts.append(f"{name} {_fmt(mean, '.4f') or 'n/a'}" + ("" if delta is None else f" ({delta:+.4f})"))
    lines += ["", f"random genotypes (reference): mean {_fmt(random_mean, '.4f') or 'n/a'}; hand-designed "
              f"(reference): {_fmt(hand, '.4f') or 'n/a'}"]
    summary = ("SUMMARY dcp-ablation: " + "; ".join(parts) +
               f"; random mean {_fmt(random_mean, '.4f') or 'n/a'}")
    return "\n".join(lines), summary


# --------------------------------------------------------------------------------------------- main


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    sys.stdout.reconfigure(line_buffering=True)
    from tfbnas.train.recipe import TrainData

    clock = sq.Clock()
    reference_root = os.path.abspath(FLAGS.reference) if FLAGS.reference else None
    reference = read_reference(reference_root)
    values = {**tflags.flag_values(["tfbnas"]), **{k: v for k, v in reference.items() if k not in sq.BENCH_FLAGS}}
    variants = {text: parse_variant(text, values) for text in FLAGS.variants}
    root = os.path.abspath(FLAGS.ablation_dir)
    config = configuration(reference)
    sq.check_config(root, config)
    proxy = {flag: reference[flag] for flag in sq.PROXY_FLAGS}
    recipe = sq.proxy_recipe(values, proxy)
    train_data = TrainData(recipe)
    print(sq.recipe_text(sq.describe_recipe(recipe, train_data.sizes, proxy)))
    sq.save_config(root, config)

    seeds = reference["seeds"]
    first = sq.load_searched(recipe, "reference", seeds[0],
                             os.path.join(sq.search_folder(reference_root, seeds[0]), "genotype.json"))
    recipe, info = first.recipe, train_data.info
    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape, init_channels=recipe.init_channels,
                  num_cells=recipe.num_cells, widths=recipe.widths)
    groups, flags_of = {}, {}
    done = sq.read_rows(os.path.join(root, "results.jsonl"))
    for k, (name, overrides) in enumerate(variants.items(), 1):
        flags_of[name] = " ".join(sq._flag_text(f, v) for f, v in overrides.items()) or "(same genotypes)"
        print(f"[{k}/{len(variants)}] variant {name}: {flags_of[name]} ({clock})")
        groups[name] = run_variant(name, overrides, values, seeds, reference_root, root, recipe, kwargs,
                                   train_data, done, clock)
    # the reference's rows as of now (its benchmark may still be appending to the file: read, never repair)
    reference_rows = list(sq.read_rows(os.path.join(reference_root, "results.jsonl"), repair=False).values())
    searched = [r for r in reference_rows if r["group"] == "searched"]
    for row in searched:  # the reference's own search figures, for the table
        row.update(search_figures(sq.search_folder(reference_root, row["seed"])))
    text, summary = table({"reference": searched, **groups}, reference_rows, flags_of)
    with open(os.path.join(root, "dcp_ablation.md"), "w") as f:
        f.write(text + "\n\n" + summary + "\n")
    with open(os.path.join(root, "dcp_ablation.json"), "w") as f:
        json.dump({"config": config, "groups": groups, "summary": summary}, f, indent=2)
    print(f"\n{text}\n\nresults: {root} ({clock})\n{summary}")


if __name__ == "__main__":
    tflags.run(main, prog=PROGRAM)
