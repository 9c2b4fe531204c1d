"""Distribution helpers: the ``--distribute`` choice and replica-safe reductions and assignments."""

import json
import os

import tensorflow as tf

DISTRIBUTIONS = ("default", "mirrored", "multiworker")


def make_distribution(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, or all logical CPUs) or ``multiworker``
    (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribute=multiworker needs TF_CONFIG (cluster and task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown --distribute={name!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def is_chief() -> bool:
    """Whether this process writes the run folder (always, except non-chief multi-worker tasks)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    if not task:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                            and "chief" not in config.get("cluster", {}))


def replica_mean(values):
    """All-reduce a list of tensors to their mean over replicas (identity with one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)
    return [v / ctx.num_replicas_in_sync for v in summed]


def assign_variable(variable, value, add: bool = False):
    """``assign``/``assign_add`` that also works on mirrored variables inside a replica context.

    Every replica computes the same value (it depends on all-reduced gradients only), so each
    replica's copy is updated with its own (identical) value.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return variable.assign_add(value) if add else variable.assign(value)

    def update(var, val):
        return var.assign_add(val) if add else var.assign(val)

    return ctx.merge_call(lambda strategy, v, val: strategy.extended.update(v, update, args=(val,)),
                          args=(variable, value))


