"""Learning-rate schedules of Child training, indexed by optimizer step.

Both are ordinary ``tf.keras.optimizers.schedules.LearningRateSchedule`` objects: they depend only
on ``optimizer.iterations``, so a resumed run (optimizer state restored from a checkpoint) continues
the schedule exactly where the killed run stopped, and they serialise with the optimizer.

* :class:`CosineSchedule`: optional linear warm-up, then cosine decay to ``min_lr``.
* :class:`OneCycleSchedule`: the one-cycle policy: a cosine ramp from ``max_lr / div_factor`` up to
  ``max_lr`` over the first ``warmup_fraction`` of training, then a cosine anneal down to
  ``max_lr / (div_factor * final_div_factor)``.
"""

import math

import tensorflow as tf

from tfbnas.config import SCHEDULES  # noqa: F401  (the names, importable from here)
from tfbnas.errors import ScheduleError  # noqa: F401  (importable from here)


def _check_steps(total_steps):
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ScheduleError(f"total_steps={total_steps!r} must be a positive integer (epochs x steps per epoch).")


def _cosine(start, end, progress):
    """``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + tf.cos(math.pi * progress))


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class CosineSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by cosine decay.

    ``lr(t) = lr * (t + 1) / warmup_steps`` for ``t < warmup_steps``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2``;
    after ``total_steps`` it stays at ``min_lr``.

    Args:
        lr: peak learning rate.
        total_steps: steps of the whole schedule (warm-up included).
        warmup_steps: steps of the linear warm-up (0: none).
        min_lr: final learning rate.

    Example:
        >>> s = CosineSchedule(1e-3, total_steps=100)
        >>> [round(float(s(t)), 6) for t in (0, 50, 100)]
        [0.001, 0.0005, 0.0]
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, name=None):
        super().__init__()
        _check_steps(total_steps)
        if lr <= 0 or min_lr < 0 or min_lr > lr:
            raise ScheduleError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr}, min_lr={min_lr}.")
        if not 0 <= warmup_steps < total_steps:
            raise ScheduleError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}); "
                                "use fewer warm-up epochs or train longer.")
        self.lr, self.total_steps, self.warmup_steps, self.min_lr = float(lr), total_steps, int(warmup_steps), \
            float(min_lr)
        self.name = name

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        decay_steps = float(self.total_steps - self.warmup_steps)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = _cosine(self.lr, self.min_lr, progress)
        if not self.warmup_steps:
            return decayed
        return tf.where(step < self.warmup_steps, self.lr * (step + 1.0) / warm, decayed)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr": self.min_lr, "name": self.name}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class OneCycleSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate: cosine up to ``max_lr``, then cosine down to a tiny final value.

    Args:
        max_lr: peak learning rate (reached after ``warmup_fraction * total_steps`` steps).
        total_steps: steps of the whole cycle.
        warmup_fraction: share of the steps spent rising.
        div_factor: the start value is ``max_lr / div_factor``.
        final_div_factor: the final value is ``max_lr / (div_factor * final_div_factor)``.

    Example:
        >>> s = OneCycleSchedule(1e-2, total_steps=100, warmup_fraction=0.3)
        >>> [round(float(s(t)), 6) for t in (0, 30, 100)]
        [0.0004, 0.01, 0.0]
    """

    def __init__(self, max_lr: float, total_steps: int, warmup_fraction: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, name=None):
        super().__init__()
        _check_steps(total_steps)
        if max_lr <= 0 or div_factor < 1 or final_div_factor < 1:
            raise ScheduleError(f"need max_lr > 0, div_factor >= 1 and final_div_factor >= 1, got {max_lr}, "
                                f"{div_factor}, {final_div_factor}.")
        if not 0 < warmup_fraction < 1:
            raise ScheduleError(f"warmup_fraction={warmup_fraction} must be in (0, 1), e.g. 0.3.")
        self.max_lr, self.total_steps, self.warmup_fraction = float(max_lr), total_steps, float(warmup_fraction)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.name = name

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        start = self.max_lr / self.div_factor
        final = start / self.final_div_factor
        up = max(self.warmup_fraction * self.total_steps, 1.0)
        down = max(self.total_steps - up, 1.0)
        rising = _cosine(start, self.max_lr, tf.clip_by_value(step / up, 0.0, 1.0))
        falling = _cosine(self.max_lr, final, tf.clip_by_value((step - up) / down, 0.0, 1.0))
        return tf.where(step < up, rising, falling)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor, "name": self.name}


def make_schedule(kind: str, lr: float, total_steps: int, warmup_steps: int = 0):
    """The schedule ``kind`` (``"cosine"`` or ``"onecycle"``) peaking at ``lr`` over ``total_steps``.

    ``warmup_steps`` applies to ``cosine``; ``onecycle`` always rises over its first 30%.

    Raises:
        ScheduleError: unknown kind or invalid arguments.
    """
    if kind == "cosine":
        return CosineSchedule(lr, total_steps, warmup_steps)
    if kind == "onecycle":
        return OneCycleSchedule(lr, total_steps)
    raise ScheduleError(f"lr schedule {kind!r} is unknown; use one of {list(SCHEDULES)}.")


__all__ = ["CosineSchedule", "OneCycleSchedule", "ScheduleError", "SCHEDULES", "make_schedule"]
