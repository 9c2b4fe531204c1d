"""DNAL: Differentiable Neural Architecture Learning of layer widths with scaled-sigmoid channel gates.

A :class:`ChannelGate` multiplies every channel of a Conv-BN output by ``g = sigmoid(delta * s)``
(Conv-BN-gate-activation). ``s`` starts at 0; ``delta`` is a non-trainable scale that grows from
1 to 1e4, so ``g`` turns from a smooth sigmoid into the step ``[s > 0]``. The four stages:

1. :func:`train_weights`: gates off (identity), ordinary training of the weights.
2. :func:`train_gates`: weights and BatchNorm frozen, only ``s`` learns, with loss
   ``CE + lambda_a * sum_i sigmoid(delta * s_i)`` (``penalty="mean"`` divides by the number of
   gates) while :class:`DeltaSchedule` raises ``delta`` exponentially from ``delta_start`` to
   ``delta_end`` over the stage.
3. :func:`prune`: channels whose gate is closed (``s <= 0``) are removed and a smaller plain Keras
   model (no gates) is rebuilt with the surviving weights; removal is propagated through the
   layers that consume the channels.
4. :func:`finetune`: ordinary training of the pruned model.

Example:
    >>> gated = insert_gates(model)
    >>> train_weights(gated, (x, y), epochs=3)
    >>> train_gates(gated, (x, y), epochs=2, lambda_a=2e-3)
    >>> small = prune(gated)
    >>> finetune(small, (x, y), epochs=2)

The gate lives in :mod:`tfbnas.width.gates`, gate insertion and exact pruning of any gated Functional
model in :mod:`tfbnas.width.pruning` (how pruning keeps the function is explained there), the example
networks in :mod:`tfbnas.baselines`; all are importable from here too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from tfbnas.errors import PruneError, WidthSearchError
from tfbnas.baselines import example_cnn  # noqa: F401  (importable from here)
from tfbnas.width.gates import GATE_MODES, ChannelGate, gate_layers, set_gate_delta, set_gate_mode  # noqa: F401
from tfbnas.width.pruning import (insert_gates, prune, prune_plan, register_channel_wise,  # noqa: F401
                                  width_table)

__all__ = [
    "GATE_MODES",
    "ChannelGate",
    "DNALResult",
    "DeltaSchedule",
    "PruneError",
    "default_loss",
    "example_cnn",
    "finetune",
    "gate_layers",
    "insert_gates",
    "prune",
    "prune_plan",
    "register_channel_wise",
    "run_dnal",
    "set_gate_delta",
    "set_gate_mode",
    "train_gates",
    "train_weights",
    "width_table",
]


class DeltaSchedule(tf.keras.callbacks.Callback):
    """Raises ``delta`` of every gate exponentially, ``delta_t = start * (end / start) ** (t / (T - 1))``.

    Args:
        start: ``delta`` at the first training step (DNAL: 1).
        end: ``delta`` at the last step (DNAL: 1e4).
        total_steps: number of training steps ``T`` of the stage.
        gates: the gates to drive; default all gates of the model being trained.

    Example:
        >>> model.fit(ds, epochs=2, callbacks=[DeltaSchedule(1.0, 1e4, total_steps=2 * len(ds))])
    """

    def __init__(self, start: float = 1.0, end: float = 1e4, total_steps: int = 1,
                 gates: Optional[Sequence[ChannelGate]] = None):
        super().__init__()
        if start <= 0 or end <= 0:
            raise WidthSearchError(f"delta start and end must be positive, got {start} and {end}")
        if total_steps < 1:
            raise WidthSearchError(f"total_steps must be at least 1, got {total_steps}")
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)
        self._gates = gates
        self.step = 0

    def value(self, step: int) -> float:
        t = min(step, self.total_steps - 1) / max(1, self.total_steps - 1)
        return self.start * (self.end / self.start) ** t

    def on_train_batch_begin(self, batch, logs=None):
        gates = self._gates if self._gates is not None else gate_layers(self.model)
        delta = self.value(self.step)
        for gate in gates:
            gate.delta.assign(delta)
        self.step += 1


# ============================================================================ the four stages


def default_loss(model):
    """Sparse categorical cross-entropy, from logits unless the model ends in a softmax."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    softmax = isinstance(last, tf.keras.layers.Softmax) or (act is not None and tf.keras.activations.serialize(act) == "softmax")
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax)


def _fit_args(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return (data,), {}
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return (data[0], data[1]), {"batch_size": batch_size}
    raise WidthSearchError("data must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of arrays")


def _steps(data, batch_size, steps_per_epoch) -> int:
    if steps_per_epoch:
        return int(steps_per_epoch)
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        if n < 0:
            raise WidthSearchError("the dataset's length is unknown; pass steps_per_epoch so delta can be scheduled")
        return n
    return int(math.ceil(len(data[0]) / batch_size))


def _set_trainable(model, gates: bool, weights: bool):
    for layer in model.submodules:
        if isinstance(layer, ChannelGate):
            layer.trainable = gates
        elif isinstance(layer, tf.keras.layers.Layer) and not isinstance(layer, tf.keras.Model):
            layer.trainable = weights


def train_weights(gated_model: tf.keras.Model, data, epochs: int = 1, optimizer=None, loss=None,
                  batch_size: int = 64, validation_data=None, callbacks=None, steps_per_epoch=None,
                  verbose: int = 0) -> tf.keras.callbacks.History:
    """Stage 1: gates off, train the weights (Adam, lr 1e-3, unless ``optimizer`` is given).

    Args:
        gated_model: from :func:`insert_gates`.
        data: ``tf.data.Dataset`` of ``(x, y)`` batches or a tuple ``(x, y)``.
        epochs, batch_size, validation_data, callbacks, steps_per_epoch, verbose: as ``model.fit``.
        optimizer: a Keras optimizer.
        loss: default sparse categorical cross-entropy (from logits unless the model ends in softmax).

    Returns:
        The ``History`` of ``fit``.
    """
    set_gate_mode(gated_model, "off")
    _set_trainable(gated_model, gates=False, weights=True)
    gated_model.compile(optimizer=optimizer or tf.keras.optimizers.Adam(1e-3),
                        loss=loss or default_loss(gated_model), metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    return gated_model.fit(*args, **kwargs, epochs=epochs, validation_data=validation_data, callbacks=callbacks,
                           steps_per_epoch=steps_per_epoch, verbose=verbose)


class _GateTrainer(tf.keras.Model):
    """Trains only the gates of ``inner`` with ``CE + lambda_a * penalty(gates)``."""

    def __init__(self, inner, lambda_a, penalty):
        super().__init__(name=f"{inner.name}_gate_trainer")
        self.inner = inner
        self.lambda_a = float(lambda_a)
        self.penalty = penalty
        self.gate_list = gate_layers(inner)

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def _penalty(self):
        values = tf.concat([g.gates("soft") for g in self.gate_list], axis=0)
        return tf.reduce_sum(values) if self.penalty == "sum" else tf.reduce_mean(values)

    def train_step(self, data):
        x, y = data[0], data[1]
        variables = [g.s for g in self.gate_list]
        with tf.GradientTape() as tape:
            logits = self.inner(x, training=True)
            ce = self.compiled_loss(y, logits)
            pen = self._penalty()
            loss = ce + self.lambda_a * pen
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.compiled_metrics.update_state(y, logits)
        s = tf.concat([g.s for g in self.gate_list], axis=0)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update({"ce": ce, "gate_penalty": pen, "open_fraction": tf.reduce_mean(tf.cast(s > 0, tf.float32)),
                     "delta": self.gate_list[0].delta})
        return logs


def train_gates(gated_model: tf.keras.Model, data, epochs: int = 1, lambda_a: float = 5e-3, penalty: str = "sum",
                delta_start: float = 1.0, delta_end: float = 1e4, batch_norm: str = "batch", optimizer=None, loss=None,
                batch_size: int = 64, steps_per_epoch=None, callbacks=None,
                verbose: int = 0) -> tf.keras.callbacks.History:
    """Stage 2: weights and BatchNorm frozen, learn the gate parameters ``s`` while ``delta`` grows.

    Loss ``CE + lambda_a * sum_i sigmoid(delta * s_i)`` (``penalty="mean"``: divided by the number of
    gated channels). Default optimiser: SGD lr 0.1 (DNAL's constant rate). At the end every gate is
    set to ``"hard"`` so the gated model computes what :func:`prune` will build.

    Args:
        gated_model: from :func:`insert_gates`, after :func:`train_weights`.
        data: ``tf.data.Dataset`` of ``(x, y)`` or a tuple ``(x, y)``.
        epochs: length of the stage (delta goes from ``delta_start`` to ``delta_end`` over it).
        lambda_a: weight of the gate penalty (larger: fewer channels).
        penalty: ``"sum"`` (the paper's eq. 4) or ``"mean"``.
        delta_start, delta_end: the schedule's end points.
        batch_norm: ``"batch"`` (default): BatchNorm scale/offset stay fixed but normalise with batch
            statistics, as a PyTorch model in train mode with frozen parameters does, so a global
            gate scale (all gates start at 0.5) does not compound through the layers, and the moving
            statistics follow the gated network; ``"frozen"``: BatchNorm in inference mode.
        optimizer, loss, batch_size, steps_per_epoch, callbacks, verbose: as in :func:`train_weights`.

    Returns:
        The ``History`` (logs ``ce``, ``gate_penalty``, ``open_fraction``, ``delta``).
    """
    if penalty not in ("sum", "mean"):
        raise WidthSearchError(f"penalty must be 'sum' or 'mean', got '{penalty}'")
    if not gate_layers(gated_model):
        raise WidthSearchError(f"{gated_model.name} has no ChannelGate; call insert_gates first")
    total = epochs * _steps(data, batch_size, steps_per_epoch)
    if batch_norm not in ("batch", "frozen"):
        raise WidthSearchError(f"batch_norm must be 'batch' or 'frozen', got '{batch_norm}'")
    set_gate_mode(gated_model, "soft")
    for gate in gate_layers(gated_model):
        gate.s.assign(tf.zeros_like(gate.s))
    # Only the gates get gradients either way; "frozen" also puts BatchNorm in inference mode.
    _set_trainable(gated_model, gates=True, weights=batch_norm == "batch")
    trainer = _GateTrainer(gated_model, lambda_a, penalty)
    trainer.compile(optimizer=optimizer or tf.keras.optimizers.SGD(0.1), loss=loss or default_loss(gated_model),
                    metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    schedule = DeltaSchedule(delta_start, delta_end, total, gates=gate_layers(gated_model))
    history = trainer.fit(*args, **kwargs, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          callbacks=[schedule] + list(callbacks or []), verbose=verbose)
    set_gate_mode(gated_model, "hard")
    _set_trainable(gated_model, gates=False, weights=True)
    return history


def finetune(model: tf.keras.Model, data, epochs: int = 1, optimizer=None, loss=None, batch_size: int = 64,
             validation_data=None, callbacks=None, steps_per_epoch=None, verbose: int = 0):
    """Stage 4: ordinary training of the pruned model (Adam, lr 5e-4, unless ``optimizer`` is given)."""
    model.compile(optimizer=optimizer or tf.keras.optimizers.Adam(5e-4),
                  loss=loss or default_loss(model), metrics=["accuracy"])
    args, kwargs = _fit_args(data, batch_size)
    return model.fit(*args, **kwargs, epochs=epochs, validation_data=validation_data, callbacks=callbacks,
                     steps_per_epoch=steps_per_epoch, verbose=verbose)


@dataclasses.dataclass
class DNALResult:
    """What :func:`run_dnal` produced."""

    gated: tf.keras.Model
    pruned: tf.keras.Model
    widths: Dict[str, Tuple[int, int]]
    histories: Dict[str, tf.keras.callbacks.History]


def run_dnal(model: tf.keras.Model, data, weight_epochs: int = 1, gate_epochs: int = 1, finetune_epochs: int = 1,
             lambda_a: float = 5e-3, penalty: str = "sum", delta_start: float = 1.0, delta_end: float = 1e4,
             batch_size: int = 64, weight_optimizer=None, gate_optimizer=None, finetune_optimizer=None,
             validation_data=None, verbose: int = 0) -> DNALResult:
    """All four DNAL stages on ``model``: gate, train weights, train gates, prune, finetune."""
    gated = insert_gates(model)
    hist = {"weights": train_weights(gated, data, weight_epochs, optimizer=weight_optimizer, batch_size=batch_size,
                                     validation_data=validation_data, verbose=verbose) if weight_epochs else None}
    hist["gates"] = train_gates(gated, data, gate_epochs, lambda_a=lambda_a, penalty=penalty, delta_start=delta_start,
                                delta_end=delta_end, optimizer=gate_optimizer, batch_size=batch_size, verbose=verbose)
    pruned = prune(gated)
    hist["finetune"] = finetune(pruned, data, finetune_epochs, optimizer=finetune_optimizer, batch_size=batch_size,
                                validation_data=validation_data, verbose=verbose) if finetune_epochs else None
    return DNALResult(gated, pruned, prune_plan(gated), hist)
