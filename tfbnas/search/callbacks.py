"""Keras callbacks of a search: schedules, checkpoints, guards and the records a run folder keeps."""

import csv
import math
import os

import numpy as np
import tensorflow as tf

from tfbnas import runs
from tfbnas.space.genotype import count_param_free


class StrategySchedule(tf.keras.callbacks.Callback):
    """Applies the strategy's per-epoch schedule (temperature, binarisation, warm-up) and epoch hooks.

    A change of the binarisation mode or of the warm-up switch rebuilds the train function (the
    supernet's mode is a python-level choice of the traced step).
    """

    def on_epoch_begin(self, epoch, logs=None):
        engine = self.model
        strategy = engine.strategy
        engine.epoch.assign(epoch)
        engine.child.temperature.assign(strategy.temperature(epoch))
        if engine.parent is not None:
            engine.parent.temperature.assign(strategy.temperature(epoch))
        binary = strategy.child_binary(epoch)
        arch = strategy.arch_enabled(epoch)
        if (binary, arch) != (engine.child_binary, engine.arch_enabled):
            engine.child_binary, engine.arch_enabled = binary, arch
            engine.train_function = engine.make_train_function(force=True)
            engine.test_function = None
            engine.make_test_function(force=True)
        strategy.on_epoch_begin(engine, epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.model.strategy.on_epoch_end(self.model, epoch)


class NanGuard(tf.keras.callbacks.Callback):
    """Stops the search at the first non-finite loss; the run keeps its last good checkpoint."""

    def __init__(self):
        super().__init__()
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = [k for k, v in (logs or {}).items() if isinstance(v, (int, float, np.floating)) and not math.isfinite(v)]
        if bad:
            self.failure = (self._epoch, batch, bad)
            self.model.stop_training = True


# Per-step diagnostics whose epoch value is their mean over the epoch's steps (not the last step's value).
EPOCH_MEAN_KEYS = ("tangent_ratio", "tangent_perp_ratio", "decoupled_ratio", "tangent_cos", "psi_mean")


class SearchRecorder(tf.keras.callbacks.Callback):
    """Per epoch: architecture-parameter history (CSV + plot), genotype, parameter-free op count, checkpoint.

    The DCP diagnostics of :data:`EPOCH_MEAN_KEYS` (relative sizes of the tangent term and of the
    decoupled correction after the optimiser) are averaged over the epoch's steps, written to
    ``search_history.csv`` (and to the epoch logs that History and TensorBoard see) and printed.

    Args:
        run_dir: the run folder.
        checkpoint: a ``tf.train.CheckpointManager`` saved at every epoch end (after the records).
        nan_guard: the :class:`NanGuard` of the same fit; no checkpoint is written after a failure.
        log: where one line per epoch goes.
    """

    def __init__(self, run_dir, checkpoint_manager, nan_guard=None, log=print):
        super().__init__()
        self.run_dir, self.manager, self.nan_guard, self.log = run_dir, checkpoint_manager, nan_guard, log
        self.csv_path = os.path.join(run_dir, "alphas.csv")
        self.history_path = os.path.join(run_dir, "search_history.csv")
        self._sums, self._counts = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self._sums, self._counts = {}, {}

    def on_train_batch_end(self, batch, logs=None):
        for key in EPOCH_MEAN_KEYS:
            value = (logs or {}).get(key)
            if value is None or np.size(value) != 1:
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(np.asarray(value).reshape(()))
            self._counts[key] = self._counts.get(key, 0) + 1

    def epoch_means(self):
        """The epoch means of the :data:`EPOCH_MEAN_KEYS` seen so far in this epoch."""
        return {k: self._sums[k] / self._counts[k] for k in self._sums}

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard is not None and self.nan_guard.failure is not None:
            return
        engine = self.model
        child = engine.child
        probs = child.arch_probabilities()
        write_alpha_rows(self.csv_path, epoch, probs, child.op_names)
        genotype = child.genotype()
        genotype.save(os.path.join(self.run_dir, "genotype.json"))
        free = count_param_free(genotype)
        means = self.epoch_means()
        if logs is not None:
            logs.update(means)  # later callbacks (TensorBoard, History) see the epoch means too
        logs = dict(logs or {})
        logs["param_free_ops"] = free
        append_history(self.history_path, epoch, logs)
        plot_alpha_history(self.csv_path, os.path.join(self.run_dir, "alphas.png"))
        self.log(f"epoch {epoch + 1}: genotype has {free} parameter-free ops of {2 * 2 * child.nodes} edges"
                 f"{' (collapse warning: mostly parameter-free)' if free > child.nodes * 2 else ''}; "
                 f"T={float(child.temperature.numpy()):.3f}")
        if means:
            self.log("  epoch means: " + ", ".join(f"{k}={means[k]:.4g}" for k in EPOCH_MEAN_KEYS if k in means))
        self.log(f"  normal: {format_cell(genotype.normal)}")
        self.log(f"  reduce: {format_cell(genotype.reduce)}")
        self.manager.save(checkpoint_number=epoch + 1)


def format_cell(edges):
    return ", ".join(f"{op}<-{src}" for op, src in edges)


def write_alpha_rows(path, epoch, probs, op_names):
    """Appends one row per (cell type, edge) of an epoch's softmax weights to ``alphas.csv``."""
    rows = [{"epoch": epoch + 1, "cell": cell, "edge": edge, **{op: f"{p:.6f}" for op, p in zip(op_names, row)}}
            for cell, table in probs.items() for edge, row in enumerate(table)]
    runs.append_rows(path, rows, ["epoch", "cell", "edge"] + list(op_names))


def append_history(path, epoch, logs):
    """Appends one epoch row; a key seen for the first time (e.g. architecture terms after a
    weight-only warm-up) adds a column, earlier rows get an empty cell."""
    keys = sorted(k for k, v in logs.items() if np.isscalar(v))
    runs.append_rows(path, [{"epoch": epoch + 1, **{k: logs[k] for k in keys}}])


def truncate_records(run_dir, epochs_done):
    """Drops CSV rows of epochs after ``epochs_done`` (a resumed run rewrites them)."""
    for name in ("alphas.csv", "search_history.csv"):
        path = os.path.join(run_dir, name)
        rows = runs.read_rows(path)
        kept = [r for r in rows if int(r["epoch"]) <= epochs_done]
        if len(kept) != len(rows):
            runs.write_rows(path, kept, list(rows[0]))


def plot_alpha_history(csv_path, png_path):
    """Mean softmax weight of each op over the edges of each cell type, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    ops = header[3:]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, cell in zip(axes, ("normal", "reduce")):
        table = [r for r in rows if r[1] == cell]
        epochs = sorted({int(r[0]) for r in table})
        for j, op in enumerate(ops):
            means = [np.mean([float(r[3 + j]) for r in table if int(r[0]) == e]) for e in epochs]
            ax.plot(epochs, means, marker="o", label=op)
        ax.set_title(f"{cell} cell: mean op weight over edges")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("softmax(alpha / T)")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
