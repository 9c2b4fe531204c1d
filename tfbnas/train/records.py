"""What a training run writes besides checkpoints: one ``history.csv`` row per epoch (with the best
epoch's weights kept by :class:`PhaseRecorder`), ``curves.png``, ``larq_summary.txt`` and ``cost.md``.

    >>> recorder = PhaseRecorder("child", model, manager, state, "ckpt/best", "run/history.csv", 10)
    >>> model.fit(train, epochs=10, validation_data=val, callbacks=[recorder])
    >>> plot_history("run/history.csv", "run/curves.png")
"""

import os
import time

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.config import PHASES
from tfbnas.runs import read_rows, write_rows

HISTORY_FIELDS = ("phase", "epoch", "lr", "loss", "ce_loss", "kd_loss", "accuracy", "top5", "val_loss",
                  "val_accuracy", "val_top5", "seconds")


class PhaseRecorder(tf.keras.callbacks.Callback):
    """End of every epoch: history row, best weights (by ``val_accuracy``), then the checkpoint.

    Args:
        phase: phase name (a column of ``history.csv``).
        model: the network whose weights are kept (the student inside a Distiller).
        manager: ``tf.train.CheckpointManager`` of the phase (model, optimizer, counters).
        state: the phase's ``tf.Variable`` counters ``epoch``, ``best`` and ``best_epoch``.
        best_path: checkpoint prefix of the best weights (a TensorFlow checkpoint: it restores
            under ``tf.distribute`` too).
        history_path: ``history.csv`` of the run.
        total_epochs: epochs of the phase (for the log line).
        log: where one line per epoch goes.
    """

    def __init__(self, phase, model, manager, state, best_path, history_path, total_epochs, log=print):
        super().__init__()
        self.phase, self.net, self.manager, self.state = phase, model, manager, state
        self.best_path, self.history_path, self.total_epochs, self.log = best_path, history_path, total_epochs, log
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        optimizer = self.model.optimizer
        lr = optimizer.learning_rate
        if callable(lr):
            lr = lr(optimizer.iterations)
        lr = float(tf.convert_to_tensor(lr))  # a mirrored variable under tf.distribute
        row = {"phase": self.phase, "epoch": epoch + 1, "lr": lr, "seconds": round(time.time() - self._start, 2)}
        row.update({k: float(v) for k, v in logs.items() if k in HISTORY_FIELDS})
        note = ""
        val = logs.get("val_accuracy")
        if val is not None and float(val) > float(self.state["best"].numpy()):
            self.state["best"].assign(float(val))
            self.state["best_epoch"].assign(epoch + 1)
            tf.train.Checkpoint(model=self.net).write(self.best_path)
            note = " (best so far)"
        rows = read_rows(self.history_path) + [row]
        write_rows(self.history_path, rows, HISTORY_FIELDS)
        self.state["epoch"].assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if val is not None:
            self.log(f"[{self.phase}] epoch {epoch + 1}/{self.total_epochs}: val top-1 {float(val):.4f}{note}; "
                     f"checkpoint saved")


def truncate_history(path, phase, epochs_done, drop_later):
    """Drops rows a resumed phase will write again (and, if it trains again, rows of later phases)."""
    rows = read_rows(path)
    later = PHASES[PHASES.index(phase) + 1:] if drop_later else ()
    kept = [r for r in rows if r["phase"] not in later and not (r["phase"] == phase and int(r["epoch"]) > epochs_done)]
    if len(kept) != len(rows):
        write_rows(path, kept, HISTORY_FIELDS)



def plot_history(history_path: str, png_path: str):
    """Loss and top-1 (train and validation) per epoch, all phases side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_rows(history_path)
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    offset = 0
    for phase in PHASES:
        table = [r for r in rows if r["phase"] == phase]
        if not table:
            continue
        x = [offset + int(r["epoch"]) for r in table]

        def series(key):
            return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in table]

        color = f"C{PHASES.index(phase)}"
        ax_loss.plot(x, series("loss"), marker="o", color=color, label=f"{phase} train")
        ax_loss.plot(x, series("val_loss"), marker="x", linestyle="--", color=color, label=f"{phase} val (CE)")
        ax_acc.plot(x, series("accuracy"), marker="o", color=color, label=f"{phase} train")
        ax_acc.plot(x, series("val_accuracy"), marker="x", linestyle="--", color=color, label=f"{phase} val")
        offset = x[-1]
        for ax in (ax_loss, ax_acc):
            ax.axvline(offset + 0.5, color="0.8", linewidth=0.8)
    ax_loss.set_title("loss")
    ax_acc.set_title("top-1 accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch (phases in order)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def write_model_reports(model: tf.keras.Model, run_dir: str) -> dict:
    """``larq_summary.txt`` and ``cost.md`` of ``model``; returns the cost totals."""
    from tfbnas.cost import model_cost

    lines = []
    lq.models.summary(model, print_fn=lines.append)
    with open(os.path.join(run_dir, "larq_summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    report = model_cost(model)
    with open(os.path.join(run_dir, "cost.md"), "w") as f:
        f.write(report.to_markdown() + "\n\n" + report.summary_line() + "\n")
    return report.totals()


__all__ = ["PhaseRecorder", "HISTORY_FIELDS", "truncate_history", "plot_history", "write_model_reports"]
