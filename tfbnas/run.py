"""The main job: data → search → Child training → LCE TFLite → parity → benchmark → report, in one run folder.

    python -m tfbnas.run --flagfile=configs/fashion_mnist.flags            # what `make run` runs
    python -m tfbnas.run --resume=runs/run-fashion_mnist-20261125-101500   # continue after Ctrl-C or a kill

Run folder::

    flags.txt, flags.json      every flag of the run
    search/                    the search run (checkpoints, alphas, genotype.json, cell pictures)
    train/                     Child + Parent training (child.keras, parent.keras, curves, metrics)
    width/                     with --width=dnal: the narrowed Child (child.keras, widths.md, gates.npz, curves)
    deploy/                    child.tflite (+ float twin), conversion summary, latency table
    report.md, report.html     the story of the run with its pictures; summary.json the numbers

``--genotype=FILE`` skips the search and trains that genotype. ``--width=dnal`` adds a width stage after
training (:mod:`tfbnas.width.stage`): DNAL gates on the trained Child choose per-cell widths within
``--width_budget`` of its OPs, the narrowed Child is trained under the Parent, and it is what gets
converted. Every stage that finished is kept: a
resumed run skips it (the search and the training resume from their own checkpoints).
"""

import json
import os
import signal
import sys
import time

from absl import flags, logging

import tfbnas  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfbnas import data, flags as tflags, runs
from tfbnas.config import TrainConfig
from tfbnas.errors import EXIT_INTERRUPTED
from tfbnas.report import write_report
from tfbnas.runs import write_json

FLAGS = flags.FLAGS
tflags.define_all()

STAGES = ("data", "search", "train", "width", "convert", "benchmark", "report")


def _load_summary(run_dir):
    path = os.path.join(run_dir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save_summary(run_dir, summary):
    write_json(os.path.join(run_dir, "summary.json"), summary)


def _finished(stage: str, path: str):
    """The record a stage wrote when it finished (``path``, JSON), or None when it has to run."""
    if not os.path.exists(path):
        return None
    print(f"{stage}: finished earlier, kept")
    with open(path) as f:
        return json.load(f)


def stage_search(values, run_dir, resume, summary):
    from tfbnas.search.run_search import SearchConfig, search

    search_dir = os.path.join(run_dir, "search")
    done = _finished("search", os.path.join(search_dir, "search_summary.json"))
    if done is None:
        os.makedirs(search_dir, exist_ok=True)
        tflags.write_flags(search_dir, values)
        result = search(SearchConfig.from_flags(values), search_dir, resume=resume)
        done = result.history
        print(f"\ngenotype:\n{result.genotype}")
    from tfbnas.space.genotype import Genotype

    genotype = Genotype.from_dict(done["genotype"])
    summary["search"] = {
        "strategy": done["strategy"], "epochs": done["epochs"], "steps_per_epoch": done["steps_per_epoch"],
        "seconds": done["seconds"], "param_free_ops": done["param_free_ops"], "genotype_text": str(genotype),
        "cell_normal": "search/cell_normal.png", "cell_reduce": "search/cell_reduce.png",
        "alphas_plot": "search/alphas.png", "edge_margins": done.get("edge_margins"),
        "stem_stride": done.get("stem_stride")}
    return os.path.join(search_dir, "genotype.json")


def stage_train(values, genotype_path, run_dir, resume, summary):
    from tfbnas.train.recipe import TrainConfig, train_child

    train_dir = os.path.join(run_dir, "train")
    metrics = _finished("train", os.path.join(train_dir, "metrics.json"))
    if metrics is None:
        config = TrainConfig.from_flags({**values, "genotype": genotype_path})
        metrics = train_child(config, train_dir, resume=resume and os.path.isdir(train_dir)).metrics
    parent = metrics.get("parent_test") or {}
    epochs = metrics.get("phases", {})
    summary["train"] = {
        "child": {"top1": metrics["test_top1"], "top5": metrics["test_top5"],
                  "epochs": epochs.get("child", {}).get("epochs")},
        "parent": {"top1": parent.get("top1"), "top5": parent.get("top5"),
                   "epochs": epochs.get("parent", {}).get("epochs")} if parent else None,
        "curves": "train/curves.png", "selection": metrics.get("selection")}
    summary["cost"] = metrics.get("cost")  # tfbnas.cost totals of the trained Child
    return os.path.join(train_dir, "child.keras")


def stage_width(values, genotype_path, run_dir, resume, summary):
    """``--width=dnal``: the Child narrowed to the OPs budget by DNAL gates and trained (``width/child.keras``)."""
    from tfbnas.train.recipe import TrainConfig, resolve_space
    from tfbnas.width.stage import WidthStageConfig, run_width_stage

    width_dir = os.path.join(run_dir, "width")
    done = _finished("width", os.path.join(width_dir, "widths.json"))
    if done is None:
        config, genotype, _ = resolve_space(TrainConfig.from_flags({**values, "genotype": genotype_path}))
        parent = os.path.join(run_dir, "train", "parent.keras")
        done = run_width_stage(config, WidthStageConfig.from_flags(values), genotype,
                               os.path.join(run_dir, "train", "child.keras"),
                               parent if os.path.exists(parent) else None, width_dir,
                               resume=resume and os.path.isdir(width_dir))
    summary["width"] = done
    return os.path.join(width_dir, "child.keras")


def stage_convert(values, model_path, run_dir, summary):
    from tfbnas.deploy.convert import convert_model_file

    deploy_dir = os.path.join(run_dir, "deploy")
    os.makedirs(deploy_dir, exist_ok=True)
    output = os.path.join(deploy_dir, "child.tflite")
    parent = os.path.join(run_dir, "train", "parent.keras")
    if "width" in summary:
        parent = None  # the Parent has the trained Child's widths: the narrowed Child's reference is its own twin
    report = convert_model_file(model_path, output, parity_examples=values["parity_examples"],
                                dataset=values["dataset"], data_dir=values["data_dir"],
                                min_agreement=values["min_agreement"],
                                float_model=parent if parent and os.path.exists(parent) else None)
    summary["deploy"] = _deploy_summary(report)
    return output


def _deploy_summary(report: dict) -> dict:
    fb = report.get("flatbuffer", {})
    parity = report.get("parity") or {}
    floating = report.get("float_reference") or {}
    histogram = fb.get("ops", {})
    return {"size_bytes": fb.get("size_bytes"), "float_size_bytes": floating.get("size_bytes"),
            "binary_part_ratio": floating.get("binary_part_ratio"),
            "binary_convs": histogram.get("LceBconv2d", 0),
            "float_convs": sum(v for k, v in histogram.items() if k in ("CONV_2D", "DEPTHWISE_CONV_2D")),
            "op_histogram": histogram, "agreement": parity.get("agreement"),
            "max_error": parity.get("max_abs_error"), "parity_examples": parity.get("examples")}


def stage_benchmark(values, tflite_path, run_dir, summary):
    from tfbnas.deploy.benchmark import benchmark_host, markdown_table

    float_path = tflite_path.replace(".tflite", "_float.tflite")
    rows = benchmark_host(tflite_path, threads=values["benchmark_threads"], runs=values["benchmark_runs"],
                          float_model=float_path if os.path.exists(float_path) else None)
    table = markdown_table(rows)
    with open(os.path.join(run_dir, "deploy", "latency.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    summary["latency"] = [r.to_dict() for r in rows]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    values = tflags.flag_values(["tfbnas"])
    resume = bool(FLAGS.resume)
    if resume:
        run_dir = os.path.abspath(FLAGS.resume)
        values = tflags.saved_flag_values(run_dir, values, "tfbnas.run")
    else:
        if values.get("init_from_search") and not values.get("genotype") and values.get("partial_channels", 1) > 1:
            raise tflags.ConfigError(f"--init_from_search needs a search whose ops see all channels, but "
                                     f"--partial_channels={values['partial_channels']}: pass --partial_channels=1 or "
                                     "--noinit_from_search")
        run_dir = runs.make_run_dir(FLAGS.output_dir, "run", FLAGS.dataset)
        if os.path.exists(os.path.join(run_dir, "flags.json")):
            raise tflags.ConfigError(f"{run_dir} already holds a run; continue it with --resume={run_dir} or "
                                     "choose another --output_dir")
        if values.get("genotype"):
            values["genotype"] = os.path.abspath(values["genotype"])
        tflags.write_flags(run_dir, values)
    summary = _load_summary(run_dir)
    summary.update({"run_dir": run_dir, "flags": values})
    times = summary.setdefault("stage_seconds", {})
    timer = runs.StageTimer()
    start = time.time()
    interrupted = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (an inherited "ignore" stays)
        def on_ctrl_c(signum, frame):
            interrupted.append(signum)
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with timer.stage("data"):
            info = data.KNOWN_DATASETS.get(values["dataset"]) or data.dataset_info(values["dataset"],
                                                                                    values["data_dir"])
            splits = data.make_splits(values["dataset"], values["batch_size"], values["data_dir"],
                                      values["train_examples"], values["test_examples"], values["seed"],
                                      values["download"])
            s = splits.sizes
            n = values.get("search_examples")
            searched = (f"{s['search_train']} search-train + {s['search_val']} search-val" if not n else
                        f"search on a fixed subset of {n} (--search_examples): {n // 2} search-train + "
                        f"{n - n // 2} search-val")
            print(f"{values['dataset']}: {s['train']} train = {searched}, {s['test']} test; images "
                  f"{info.image_shape}, {info.num_classes} classes")
            summary["data"] = {"dataset": values["dataset"], "sizes": s,
                               "search_sizes": ({"search_train": n // 2, "search_val": n - n // 2} if n else None)}
        if values.get("genotype"):
            genotype_path = values["genotype"]
            print(f"search: skipped, training {genotype_path}")
        else:
            with timer.stage(f"search ({values['strategy']})"):
                genotype_path = stage_search(values, run_dir, resume, summary)
            _save_summary(run_dir, summary)
        teacher = TrainConfig.from_flags(values).parent_teacher()
        with timer.stage("train Child (Parent teacher)" if teacher else "train Child"):
            model_path = stage_train(values, genotype_path, run_dir, resume, summary)
        _save_summary(run_dir, summary)
        if values.get("width", "none") != "none":
            with timer.stage(f"width ({values['width']})"):
                model_path = stage_width(values, genotype_path, run_dir, resume, summary)
            _save_summary(run_dir, summary)
        with timer.stage("convert to LCE TFLite + parity"):
            tflite_path = stage_convert(values, model_path, run_dir, summary)
        with timer.stage("host benchmark"):
            stage_benchmark(values, tflite_path, run_dir, summary)
    except BaseException as e:
        # A Ctrl-C that lands inside TensorFlow's tracing can surface as another error (e.g. SystemError):
        # after a Ctrl-C every exception means "interrupted", and the folder stays resumable.
        if not (isinstance(e, KeyboardInterrupt) or interrupted):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the summary short
        _finish(summary, times, timer, run_dir)
        print(f"\ninterrupted: resume with python -m tfbnas.run --resume={run_dir}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    _finish(summary, times, timer, run_dir)
    top1 = summary.get("train", {}).get("child", {}).get("top1")
    ops = (summary.get("cost") or {}).get("ops")
    width, deploy = summary.get("width"), summary.get("deploy") or {}
    if width:  # the narrowed Child is the one converted
        top1, ops = width["top1_after"], width["ops_after"]
    headline = (f"{'narrowed ' if width else ''}Child test top-1 {top1 or 0:.4f} on {values['dataset']}, "
                f"{(ops or 0) / 1e6:.2f} M OPs, TFLite {(deploy.get('size_bytes') or 0) / 1024:.1f} KiB, "
                f"parity {deploy.get('agreement')}")
    summary["headline"] = headline
    report = write_report(summary, run_dir)
    print(f"\n{headline}\nwall time {time.time() - start:.0f} s\nreport: {report}\nrun folder: {run_dir}")


def _finish(summary, times, timer, run_dir):
    times.update({k: times.get(k, 0.0) + v for k, v in timer.times.items()})
    _save_summary(run_dir, summary)


def cli():
    tflags.run(main, prog="tfbnas.run")


if __name__ == "__main__":
    cli()
