"""The main job's width stage: DNAL gates on the trained Child choose per-cell widths under an OPs budget.

After Child training, ``python -m tfbnas.run --width=dnal`` narrows the Child:

1. :func:`tfbnas.width.dnal.insert_gates` puts a gate ``sigmoid(delta * s)`` after every Conv-BN of the
   trained Child; its weights stay as trained (DNAL's weight stage is the Child training itself).
2. :func:`tfbnas.width.dnal.train_gates` learns the gate scores ``s`` on the training stream while
   ``delta`` anneals the sigmoid to a step, with the penalty ``lambda_a * sum(gates)``.
3. :func:`cell_widths` turns the scores into one width per cell. In a Bi-Real cell every op adds its
   input back and the cell's inputs come through real-valued channel folds, so every conv of a cell
   writes into the same channels: a channel's score is the highest score any gate of the cell gives it,
   and a cell keeps the channels scoring above a threshold ``tau``. :func:`widths_for_budget` bisects
   ``tau`` to the smallest value whose Child fits ``budget`` x the trained Child's OPs: the budget is
   filled with the best-scored channels, including channels whose gates closed.
4. The narrowed Child (:func:`tfbnas.models.build_child` with those ``widths``) is trained from scratch
   with the recipe, the trained Parent as its teacher (BCNet's protocol for a found width; the channels a
   cell keeps are not a slice of the trained Child, because its channel folds regroup them), and is
   what the main job converts.

Every step is kept in the stage folder, so a resumed run continues where it stopped: ``gates.npz``
(the trained gate scores), the training checkpoints, ``child.keras`` (the result), ``widths.json`` /
``widths.md`` (channels per cell before and after; OPs, size, latency and accuracy before and after).

Example:
    >>> summary = run_width_stage(train_config, WidthStageConfig(budget=0.5), genotype,
    ...                           "RUN/train/child.keras", "RUN/train/parent.keras", "RUN/width")
    >>> summary["ops_after"] <= 0.5 * summary["ops_before"]
    True
"""

import dataclasses
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfbnas.width import WidthSearchError, dnal
from tfbnas.runs import write_json

#: Width methods of the main job (``--width``).
METHODS = ("none", "dnal")


@dataclasses.dataclass
class WidthStageConfig:
    """The width stage's settings (the ``--width*`` flags of ``python -m tfbnas.run``).

    Attributes:
        method: ``"dnal"``.
        budget: the narrowed Child's OPs as a fraction of the trained Child's, in (0, 1].
        gate_epochs: epochs of gate training (``delta`` anneals over them).
        lambda_a: weight of the gate penalty.
        gate_lr: SGD learning rate of the gate scores.
        epochs: epochs of training the narrowed Child (None: the recipe's ``epochs``).
        latency_runs: timed inferences per model for the before/after latency (0: no latency).
    """

    method: str = "dnal"
    budget: float = 0.5
    gate_epochs: int = 1
    lambda_a: float = 5e-3
    gate_lr: float = 0.1
    epochs: Optional[int] = None
    latency_runs: int = 30

    @classmethod
    def from_flags(cls, values: dict) -> "WidthStageConfig":
        return cls(method=values["width"], budget=values["width_budget"], gate_epochs=values["width_gate_epochs"],
                   lambda_a=values["width_lambda"], gate_lr=values["width_gate_lr"], epochs=values["width_epochs"],
                   latency_runs=values["benchmark_runs"])

    def check(self):
        """Raise :class:`WidthSearchError` for values no run can use."""
        if self.method not in METHODS[1:]:
            raise WidthSearchError(f"--width={self.method} is not a width method of the main job; use "
                                   f"{' or '.join(METHODS[1:])}")
        if not 0.0 < self.budget <= 1.0:
            raise WidthSearchError(f"--width_budget={self.budget} must be in (0, 1]: the narrowed Child's OPs as a "
                                   "fraction of the trained Child's")
        if self.gate_epochs < 1:
            raise WidthSearchError(f"--width_gate_epochs={self.gate_epochs} must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise WidthSearchError(f"--width_epochs={self.epochs} must be at least 1")


# ---------------------------------------------------------------------------------- widths from gates


def cell_scores(gated: tf.keras.Model, num_cells: int) -> List[np.ndarray]:
    """Per cell, each output channel's highest gate score over the gates that write into it.

    The gates of cell ``i`` are those of layers named ``cell{i}_...`` (:func:`tfbnas.models.build_child`)
    with as many channels as the cell; the half-width convs of a factorized reduction are left out.
    """
    by_cell: Dict[int, List[np.ndarray]] = {i: [] for i in range(num_cells)}
    for gate in dnal.gate_layers(gated):
        match = re.match(r"cell(\d+)_", gate.name)
        if match and int(match.group(1)) in by_cell:
            by_cell[int(match.group(1))].append(gate.s.numpy())
    scores = []
    for i in range(num_cells):
        if not by_cell[i]:
            raise WidthSearchError(f"cell {i} of the Child has no gated conv: the width stage needs a Child "
                                   "built by tfbnas.models.build_child")
        width = max(len(s) for s in by_cell[i])
        scores.append(np.max([s for s in by_cell[i] if len(s) == width], axis=0))
    return scores


def cell_widths(scores: Sequence[np.ndarray], tau: float, base: Optional[Sequence[float]] = None) -> List[float]:
    """Width multipliers (for ``build_child(widths=...)``): each cell keeps its channels scoring above ``tau``
    (at least one), as a fraction of its channels, times its ``base`` multiplier."""
    base = list(base) if base else [1.0] * len(scores)
    return [b * max(1, int(np.sum(s > tau))) / len(s) for s, b in zip(scores, base)]


def widths_for_budget(scores: Sequence[np.ndarray], budget_ops: float, cost: Callable[[List[float]], float],
                      base: Optional[Sequence[float]] = None, log=print) -> Tuple[float, List[float], float]:
    """The smallest threshold ``tau`` whose Child costs at most ``budget_ops``: the budget filled with the
    channels of the highest gate scores, wherever their gates ended (open or closed).

    The narrowed Child is trained from scratch, so only how many channels each cell keeps matters, and
    the gate scores rank them across cells. Stopping at the open gates (``tau = 0``) instead can leave a
    cell with one or two channels far under the budget after a short, strongly penalised gate training.
    OPs fall as ``tau`` rises, so a bisection over the scores finds it with about ``log2(channels)`` cost
    evaluations. If even one channel per cell is above the budget, that Child is returned with a note.

    Returns:
        ``(tau, widths, OPs)``; ``tau`` is ``-inf`` when the whole Child fits.
    """
    widths = cell_widths(scores, 0.0, base)
    log(f"width: the open gates alone would leave {cost(widths) / 1e6:.3f} M OPs "
        f"(budget {budget_ops / 1e6:.3f} M)")
    candidates = np.concatenate([[-np.inf], np.unique(np.concatenate(scores))])
    lo, hi = 0, len(candidates) - 1
    best = (float(candidates[hi]), cell_widths(scores, float(candidates[hi]), base))
    best_ops = cost(best[1])
    if best_ops > budget_ops:
        log(f"width: even one channel per cell costs {best_ops / 1e6:.3f} M OPs, above the budget; keeping that")
        return best[0], best[1], best_ops
    while lo < hi:  # invariant: candidates[hi] meets the budget
        mid = (lo + hi) // 2
        widths = cell_widths(scores, float(candidates[mid]), base)
        mid_ops = cost(widths)
        if mid_ops <= budget_ops:
            hi, best, best_ops = mid, (float(candidates[mid]), widths), mid_ops
        else:
            lo = mid + 1
    log(f"width: threshold {best[0]:.4g} on the gate scores meets the budget ({best_ops / 1e6:.3f} M OPs)")
    return best[0], best[1], best_ops


# ------------------------------------------------------------------------------------------ the stage


def _figures(model_path: str, work_dir: str, runs: int) -> dict:
    """TFLite size and host latency of a ``.keras`` model (no parity check: the deploy stage does that)."""
    from tfbnas.deploy.benchmark import host_latency
    from tfbnas.deploy.convert import convert_model_file

    stem = os.path.basename(os.path.dirname(model_path)) + "_" + os.path.basename(model_path)
    output = os.path.join(work_dir, "figures", stem.replace(".keras", ".tflite"))
    os.makedirs(os.path.dirname(output), exist_ok=True)
    convert_model_file(model_path, output, parity_examples=0, use_float_twin=False)
    out = {"size_bytes": os.path.getsize(output), "latency_ms": None}
    if runs:
        out["latency_ms"] = host_latency(output, "indirect_bgemm", threads=1, runs=runs, warmup=3).median_ms
    return out


def summary_line(summary: dict) -> str:
    """One line: OPs, size, latency and test top-1 before -> after."""
    def pair(key, fmt, scale=1.0):
        b, a = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        return "n/a" if b is None or a is None else f"{fmt.format(b * scale)} -> {fmt.format(a * scale)}"

    return (f"OPs {pair('ops', '{:.3f}', 1e-6)} M, TFLite {pair('size_bytes', '{:.1f}', 1 / 1024)} KiB, "
            f"latency {pair('latency_ms', '{:.3f}')} ms, test top-1 {pair('top1', '{:.4f}')}")


def _write_tables(out_dir: str, summary: dict):
    write_json(os.path.join(out_dir, "widths.json"), summary)
    lines = ["# Channels per cell (DNAL gates, OPs budget)", "", "| cell | before | after | width multiplier |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['cell']} | {r['before']} | {r['after']} | {r['multiplier']:.3f} |" for r in summary["cells"]]
    lines += ["", summary_line(summary), ""]
    with open(os.path.join(out_dir, "widths.md"), "w") as f:
        f.write("\n".join(lines))


def run_width_stage(train_config, stage: WidthStageConfig, genotype, child_path: str, parent_path: Optional[str],
                    out_dir: str, resume: bool = False, log=print, verbose=None) -> dict:
    """DNAL widths for the trained Child in ``child_path`` under ``stage.budget``; the summary (also
    ``widths.json``).

    Args:
        train_config: the run's :class:`tfbnas.train.recipe.TrainConfig` with its space settled
            (:func:`tfbnas.train.recipe.resolve_space`): data, recipe, seed, sizes.
        stage: the width settings.
        genotype: the Child's :class:`tfbnas.space.genotype.Genotype`.
        child_path: the trained ``child.keras``.
        parent_path: its trained ``parent.keras`` (the teacher), or None (labels only).
        out_dir: the stage folder (created).
        resume: continue from the folder's ``gates.npz`` and checkpoints.
        log: where progress lines go.
        verbose: ``fit`` verbosity.

    Raises:
        WidthSearchError: bad settings; ConfigError: bad recipe values.
    """
    from tfbnas import models
    from tfbnas.cost import model_cost
    from tfbnas.train.recipe import TrainData, configure_runtime, evaluate, train_model

    stage.check()
    os.makedirs(out_dir, exist_ok=True)
    configure_runtime(train_config)
    train_data = TrainData(train_config)
    info = train_data.info
    child = tf.keras.models.load_model(child_path, compile=False)
    parent = tf.keras.models.load_model(parent_path, compile=False) if parent_path else None
    ops_before = model_cost(child).ops
    top1_before = evaluate(child, train_data.test)["top1"]
    gated = dnal.insert_gates(child)
    gates_path = os.path.join(out_dir, "gates.npz")
    if resume and os.path.exists(gates_path):
        saved = np.load(gates_path)
        for i, gate in enumerate(dnal.gate_layers(gated)):
            gate.s.assign(saved[f"s{i}"])
        log(f"width: gate scores of an earlier call kept ({gates_path})")
    else:
        steps = train_data.steps_per_epoch
        log(f"width: DNAL gate training, {stage.gate_epochs} epoch(s) x {steps} steps, lambda_a {stage.lambda_a:g}, "
            f"{sum(int(g.s.shape[0]) for g in dnal.gate_layers(gated))} gated channels")
        dnal.train_gates(gated, train_data.train(0), stage.gate_epochs, lambda_a=stage.lambda_a,
                         optimizer=tf.keras.optimizers.SGD(stage.gate_lr), steps_per_epoch=steps,
                         verbose=verbose if verbose is not None else 2)
        np.savez(gates_path, **{f"s{i}": g.s.numpy() for i, g in enumerate(dnal.gate_layers(gated))})

    kwargs = dict(num_classes=info.num_classes, input_shape=info.image_shape,
                  init_channels=train_config.init_channels, num_cells=train_config.num_cells)

    def cost(widths):
        return model_cost(models.build_child(genotype, widths=widths, **kwargs)).ops

    scores = cell_scores(gated, train_config.num_cells)
    tau, widths, ops_after = widths_for_budget(scores, stage.budget * ops_before, cost, train_config.widths, log)
    narrow = models.build_child(genotype, widths=widths, **kwargs)
    cells = [{"cell": i, "before": len(s), "after": int(narrow.get_layer(f"cell{i}_pre1_qconv").filters)
              if _has_layer(narrow, f"cell{i}_pre1_qconv") else None, "multiplier": w}
             for i, (s, w) in enumerate(zip(scores, widths))]
    log("width: channels per cell " + ", ".join(f"{c['before']}->{c['after']}" for c in cells) +
        f"; {ops_before / 1e6:.3f} -> {ops_after / 1e6:.3f} M OPs")
    epochs = stage.epochs or train_config.epochs
    recipe = dataclasses.replace(train_config, epochs=epochs, parent_epochs=0, two_stage=False,
                                 init_from_parent=False, widths=widths)
    result = train_model(narrow, parent, recipe, out_dir, resume=resume, parent_trained=parent is not None,
                         train_data=train_data, name="child", log=log, verbose=verbose)
    before = _figures(child_path, out_dir, stage.latency_runs)
    after = _figures(os.path.join(out_dir, "child.keras"), out_dir, stage.latency_runs)
    summary = {"method": stage.method, "settings": dataclasses.asdict(stage), "tau": tau if np.isfinite(tau) else None, "widths": widths,
               "cells": cells, "ops_before": ops_before, "ops_after": ops_after, "top1_before": top1_before,
               "top1_after": result.metrics["test_top1"],
               "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
               "latency_ms_before": before["latency_ms"], "latency_ms_after": after["latency_ms"],
               "epochs": epochs}
    _write_tables(out_dir, summary)
    log(f"width: {summary_line(summary)}")
    return summary


def _has_layer(model: tf.keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)
