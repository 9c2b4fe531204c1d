"""DNAL's channel gate: ``x * sigmoid(delta * s)`` per channel, and switches for every gate of a model.

    >>> gate = ChannelGate(mode="soft")
    >>> gate(tf.ones([1, 2, 2, 3])).numpy()[0, 0, 0]       # s starts at 0: sigmoid(0) = 0.5
    array([0.5, 0.5, 0.5], dtype=float32)
    >>> set_gate_mode(model, "hard")                        # the step [s > 0] in every gate

:func:`tfbnas.width.pruning.insert_gates` puts gates into a model and :func:`tfbnas.width.pruning.prune`
removes the channels whose gate is closed; :mod:`tfbnas.width.dnal` trains them.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import tensorflow as tf

from tfbnas.errors import WidthSearchError


#: Gate behaviours: identity, ``sigmoid(delta * s)``, and the step ``[s > 0]``.
GATE_MODES = ("off", "soft", "hard")

_L = tf.keras.layers


# ============================================================================ the gate


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class ChannelGate(tf.keras.layers.Layer):
    """Per-channel gate ``x * sigmoid(delta * s)`` on the last axis (DNAL's scaled sigmoid).

    Args:
        mode: ``"off"`` (identity), ``"soft"`` (``sigmoid(delta * s)``) or ``"hard"`` (``[s > 0]``).
            Stored in a variable, so changing :attr:`mode` needs no re-trace.
        delta: initial scale; a non-trainable variable, raised by :class:`DeltaSchedule`.
        **kwargs: base layer arguments.

    Example:
        >>> gate = ChannelGate(mode="soft")
        >>> y = gate(tf.ones([2, 8, 8, 16]))   # s = 0: every gate is sigmoid(0) = 0.5
        >>> gate.mode = "hard"
    """

    def __init__(self, mode: str = "soft", delta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in GATE_MODES:
            raise WidthSearchError(f"ChannelGate mode must be one of {GATE_MODES}, got '{mode}'")
        self._initial_mode = mode
        self._initial_delta = float(delta)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise WidthSearchError(f"{self.name}: the channel axis (last) must be known to build a gate")
        self.s = self.add_weight("s", shape=(int(channels),), initializer="zeros", trainable=True)
        self.delta = self.add_weight("delta", shape=(), initializer=tf.keras.initializers.Constant(self._initial_delta),
                                     trainable=False)
        self._mode = self.add_weight("mode", shape=(), dtype=tf.int32, trainable=False,
                                     initializer=tf.keras.initializers.Constant(GATE_MODES.index(self._initial_mode)))
        super().build(input_shape)

    @property
    def mode(self) -> str:
        if not self.built:
            return self._initial_mode
        return GATE_MODES[int(self._mode.numpy())]

    @mode.setter
    def mode(self, value: str):
        if value not in GATE_MODES:
            raise WidthSearchError(f"ChannelGate mode must be one of {GATE_MODES}, got '{value}'")
        if self.built:
            self._mode.assign(GATE_MODES.index(value))
        self._initial_mode = value

    def gates(self, mode: Optional[str] = None) -> tf.Tensor:
        """The per-channel multipliers for ``mode`` (the current mode if ``None``)."""
        s = tf.cast(self.s, self.compute_dtype)
        table = tf.stack([tf.ones_like(s), tf.sigmoid(tf.cast(self.delta, s.dtype) * s), tf.cast(s > 0, s.dtype)])
        index = self._mode if mode is None else GATE_MODES.index(mode)
        return tf.gather(table, index)

    def call(self, inputs):
        return inputs * self.gates()

    def open_mask(self) -> np.ndarray:
        """Channels that survive pruning: ``s > 0``."""
        return self.s.numpy() > 0

    def get_config(self):
        delta = float(self.delta.numpy()) if self.built else self._initial_delta
        return {**super().get_config(), "mode": self.mode, "delta": delta}


def gate_layers(model: tf.keras.Model) -> List[ChannelGate]:
    """All :class:`ChannelGate` layers of a model (nested models included)."""
    return [layer for layer in model.submodules if isinstance(layer, ChannelGate)]


def set_gate_mode(model: tf.keras.Model, mode: str) -> None:
    """Sets every gate of ``model`` to ``mode`` (``"off"``, ``"soft"`` or ``"hard"``)."""
    for gate in gate_layers(model):
        gate.mode = mode


def set_gate_delta(model: tf.keras.Model, delta: float) -> None:
    """Sets ``delta`` of every gate of ``model``."""
    for gate in gate_layers(model):
        gate.delta.assign(float(delta))
