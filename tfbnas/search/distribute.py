"""Distribution: the ``--distribute`` choice, the ``TF_CONFIG`` check, the chief's run folder, and
replica-safe reductions and assignments (search and Child training share them).

``--distribute=default`` runs on one device, ``mirrored`` on every local GPU (or on the logical CPUs
of ``--cpu_devices``), ``multiworker`` on several processes or machines with TensorFlow's
``MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG``. Two workers on one machine:

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' \\
        python -m tfbnas.search --distribute=multiworker --output_dir=runs/s1 ...   # the chief
    # the same command with "index": 1 in a second shell

``--batch_size`` is the global batch: every step splits it over all replicas. Only the chief (task
``chief``, or worker 0 when there is none) writes the run folder; the other workers write into a
temporary folder they delete at the end (TensorFlow's pattern: every worker saves, as saving may
run collective ops, and only the chief's copy is kept). docs/distributed.md has the details.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

from tfbnas.errors import ConfigError, WorkerLostError

DISTRIBUTIONS = ("default", "mirrored", "multiworker")
TASK_TYPES = ("chief", "worker")
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:23456", "host2:23456"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')
_FIX = f"set it on every worker, e.g. {TF_CONFIG_EXAMPLE} with index 1 on host2 (docs/distributed.md)"

_multiworker = None  # one MultiWorkerMirroredStrategy per process: its collectives are set up once


def check_tf_config(text: Optional[str] = None) -> dict:
    """The parsed ``TF_CONFIG`` (default: the environment's) of a ``--distribute=multiworker`` run.

    Checks what ``MultiWorkerMirroredStrategy`` needs before any TensorFlow work: JSON, a ``cluster``
    of ``chief``/``worker`` jobs listing ``host:port`` addresses (at most one chief), and a ``task``
    whose ``type`` is one of those jobs and whose ``index`` is in range.

    Raises:
        ConfigError: one line naming what is wrong and the fix.

    Example:
        >>> check_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
        {'cluster': {'worker': ['a:1', 'b:1']}, 'task': {'type': 'worker', 'index': 1}}
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not (text or "").strip():
        raise ConfigError(f"--distribute=multiworker needs TF_CONFIG (cluster and task) in the environment: {_FIX}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not JSON ({e}): {_FIX}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', not {text.strip()[:60]!r}: "
                          f"{_FIX}")
    cluster, task = config.get("cluster"), config.get("task")
    if not cluster or not isinstance(cluster, dict):
        raise ConfigError(f"TF_CONFIG has no 'cluster' (the address of every worker): {_FIX}")
    for job, addresses in cluster.items():
        if job not in TASK_TYPES:
            raise ConfigError(f"TF_CONFIG cluster job {job!r} is not one --distribute=multiworker runs (jobs: "
                              f"{', '.join(TASK_TYPES)}; MultiWorkerMirroredStrategy has no parameter servers or "
                              "evaluators): remove it")
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise ConfigError(f"TF_CONFIG cluster job {job!r} must list 'host:port' addresses, got {addresses!r}: "
                              f"{_FIX}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG cluster has {len(cluster['chief'])} chiefs; list one chief (or none: worker 0 "
                          "is then the chief) and the others as workers")
    if not task or not isinstance(task, dict):
        raise ConfigError("TF_CONFIG has no 'task' (which cluster entry this process is): add e.g. "
                          '"task": {"type": "worker", "index": 0}, a different index on each worker')
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG task type {kind!r} is not a job of its cluster ({', '.join(cluster)}): set "
                          f"\"task\": {{\"type\": ...}} to one of them")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG task index {index!r} is out of range: cluster job {kind!r} has "
                          f"{len(cluster[kind])} address(es), so the index must be 0 to {len(cluster[kind]) - 1}")
    return config


def _is_address(address) -> bool:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def is_chief(tf_config: Optional[dict] = None) -> bool:
    """Whether this process writes the run folder: always, except a multi-worker task other than the
    chief (task ``chief``, or worker 0 when the cluster has no chief; TensorFlow's rule).

    ``tf_config`` is a :func:`check_tf_config` result; None: one process (the chief). Once a strategy
    exists, ``strategy.extended.should_checkpoint`` says the same.
    """
    if not tf_config:
        return True
    kind, index = tf_config["task"]["type"], tf_config["task"].get("index", 0)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config["cluster"])


def make_distribution(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, or all logical CPUs) or ``multiworker``
    (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``; one per process, as its collectives
    can be set up only once).

    Raises:
        ConfigError: an unknown name, or ``multiworker`` with a missing or malformed ``TF_CONFIG``.
    """
    global _multiworker
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        check_tf_config()
        if _multiworker is None:
            _multiworker = tf.distribute.MultiWorkerMirroredStrategy()
        return _multiworker
    raise ConfigError(f"unknown --distribute={name!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def configure_runtime(config):
    """Process-wide TensorFlow settings of a run, before any model is built: ``config.cpu_devices`` logical
    CPUs (before TensorFlow uses its devices), deterministic ops, Grappler off when a search config says
    ``graph_optimizations=False``, then every random generator seeded with ``config.seed``.

    Args:
        config: a :class:`~tfbnas.config.SearchConfig` or :class:`~tfbnas.config.TrainConfig` (any object
            with ``cpu_devices``, ``deterministic`` and ``seed``).
    """
    split_cpu(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if not getattr(config, "graph_optimizations", True):
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    tf.keras.utils.set_random_seed(config.seed)


def split_cpu(devices: Optional[int]):
    """Splits the CPU into ``devices`` logical devices (``--cpu_devices``; None: leave it whole).

    Raises:
        ConfigError: TensorFlow already initialised its devices (call this first).
    """
    if not devices:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as e:
        if len(tf.config.list_logical_devices("CPU")) == devices:
            return  # already split this way (a second stage in the same process)
        raise ConfigError(f"--cpu_devices must be set before TensorFlow initialises its devices ({e})") from None


@contextlib.contextmanager
def worker_dir(run_dir: Optional[str], distribution: tf.distribute.Strategy, resume: bool = False,
               copy=("checkpoints",)):
    """The folder this process writes: ``run_dir`` on the chief; on other workers a temporary folder,
    deleted on exit, that starts with a copy of ``run_dir``'s ``copy`` subfolders when ``resume`` (so
    every worker restores the chief's last checkpoint; the run folder must be visible to all workers).

    Example:
        >>> with worker_dir(run_dir, distribution, resume) as out:
        ...     manager = tf.train.CheckpointManager(checkpoint, os.path.join(out, "checkpoints"), 3)
    """
    if distribution.extended.should_checkpoint:
        yield run_dir
        return
    out = tempfile.mkdtemp(prefix="tfbnas-worker-")
    try:
        for name in copy if (resume and run_dir) else ():
            if os.path.isdir(os.path.join(run_dir, name)):
                shutil.copytree(os.path.join(run_dir, name), os.path.join(out, name))
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _batch_norms(model: tf.keras.Model) -> list:
    return [m for m in model.submodules if isinstance(m, tf.keras.layers.BatchNormalization)]


def _synchronize(layers: list) -> list:
    for layer in layers:
        layer.synchronized, layer.fused = True, False
    return layers


def synchronize_batch_norm(model: tf.keras.Model) -> list:
    """Every BatchNormalization of ``model`` normalises with global (cross-replica) batch statistics
    from now on (the search's supernets, which are never saved as models); returns the layers."""
    return _synchronize(_batch_norms(model))


@contextlib.contextmanager
def synchronized_batch_norm(model: tf.keras.Model):
    """Inside: :func:`synchronize_batch_norm` when the current strategy has several replicas, so a step
    computes what one device computes on the whole batch; on exit each layer gets its own settings back
    (saved models keep their plain, fused BatchNorm). Wrap ``fit`` in it (the train function is traced
    inside).
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    layers = _batch_norms(model) if replicas > 1 else []
    saved = [(layer.synchronized, layer.fused) for layer in layers]
    _synchronize(layers)
    try:
        yield
    finally:
        for layer, (synchronized, fused) in zip(layers, saved):
            layer.synchronized, layer.fused = synchronized, fused


# What a collective raises on the surviving workers when another one is killed, crashes or is unreachable.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                      tf.errors.CancelledError)


@contextlib.contextmanager
def lost_worker_errors(distribution: tf.distribute.Strategy, run_dir: Optional[str]):
    """Inside: under ``MultiWorkerMirroredStrategy``, a collective that fails because another worker
    stopped becomes a one-line :class:`~tfbnas.errors.WorkerLostError` naming the resume command.

    TensorFlow notices a dead worker at the next collective (the coordination service's heartbeat
    timeout, or a refused connection to the chief) and aborts it on every surviving worker.
    """
    try:
        yield
    except LOST_WORKER_ERRORS as e:
        if not isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        lines = [line.strip() for line in str(getattr(e, "message", e)).splitlines() if line.strip()]
        reason = next((line.split("aborted by:")[-1].strip() for line in lines if "aborted by:" in line),
                      lines[-1] if lines else "").split(". ")[0]  # TensorFlow's first sentence names the task
        raise WorkerLostError(f"another worker stopped or cannot be reached ({type(e).__name__}: {reason[:200]}); "
                              f"check its log, then restart every worker with --resume={run_dir or 'RUN'} to continue "
                              "from the chief's last checkpoint") from None


def replica_mean(values):
    """All-reduce a list of tensors to their mean over replicas (identity with one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    # identity: a value read from a mirrored variable carries no device under MultiWorkerMirroredStrategy,
    # and the all-reduce needs one
    summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.identity(v) for v in values])
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
