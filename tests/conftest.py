"""Shared test fixtures and helpers. Importing tfbnas first (here, before any test module) selects Keras 2
for TensorFlow.

Helpers (``from conftest import REPO, run_module``): ``REPO``, the repository root; ``run_module``, a
``python -m module`` subprocess in the repository root; ``trained_like``, trained-looking weights for a
model about to be converted; ``BackgroundRun``, a program run to its end that starts beside the
in-process tests. Fixtures: ``bench`` (Channel-Bench-Macro), ``fashion_arrays``
(Fashion-MNIST, read once per session) and ``parse_flags`` (absl flags parsed in this process, back to
their defaults afterwards).

Tests marked ``slow`` (more than ~15 s on 2 cores: whole searches, trainings, conversions) are left out by
``make test-fast`` (``pytest -m "not slow"``); ``make test`` runs everything.
"""

from tfbnas import data  # first: must precede any tensorflow import

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import larq as lq  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbnas.width.channel_bench import CHANNEL_BENCH_ENV, ChannelBenchMacro, default_table_path  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=600, env=None):
    """``python -m module args`` in the repository root (each such process pays TensorFlow's import)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def trained_like(model, seed=0):
    """Random latent weights and BatchNorm statistics, as after training (not the initial identity BN,
    where integer conv sums hit exactly 0 and sign ties may break differently in Larq and LCE)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0.0, 0.3, shape),
                               rng.normal(0.0, 0.3, shape), rng.uniform(0.5, 2.0, shape)])
        elif isinstance(layer, lq.layers.QuantConv2D):
            layer.set_weights([rng.uniform(-1.0, 1.0, w.shape) for w in layer.get_weights()])


class BackgroundRun:
    """A program that tests inspect only once it has run to the end (a search, a training, an error exit).

    Declared by a test module for one of its fixtures (``fixture`` in ``module``, e.g. ``__name__``; with
    ``param``, only for the test of that parametrization id); ``argv(folder)`` is its command line given its
    own new folder, ``after`` a run that has to end first (whose folder the command line uses). When a
    selected test uses that fixture, the run starts as soon as collection ends, in a background lane that runs
    one program at a time in the order the tests need them: on 2 cores it runs beside the in-process tests
    (mostly one busy core) instead of after them, and it pays TensorFlow's import there. :meth:`result` waits
    for it, or starts it at once when the lane has not reached it yet.
    """

    declared = []
    lane = []  # runs not started yet, in the order the selected tests need them
    lock = threading.Lock()
    running = False  # a thread runs the lane
    factory = None  # pytest's TempPathFactory
    env = None  # the environment when collection ended: the lane's thread starts programs while in-process
    # tests may have monkeypatched os.environ (e.g. $TFBNAS_CHANNEL_BENCH), which must not leak into them

    def __init__(self, module, fixture, name, argv, param=None, after=None, timeout=1800):
        self.module, self.fixture, self.name, self.argv, self.timeout = module, fixture, name, argv, timeout
        self.param, self.after = param, after
        self.proc = self.folder = self.started = self.output = None
        BackgroundRun.declared.append(self)

    def needed_by(self, item) -> bool:
        callspec = getattr(item, "callspec", None)
        return (getattr(item.module, "__name__", None) == self.module and self.fixture in item.fixturenames and
                (self.param is None or (callspec is not None and callspec.id == self.param)))

    def _start(self):
        """Starts the program (with the lock held)."""
        self.folder = BackgroundRun.factory.mktemp(self.name)
        self.command = [str(a) for a in self.argv(self.folder)]
        self.output = [open(self.folder / f"{stream}.txt", "w+") for stream in ("stdout", "stderr")]
        self.proc = subprocess.Popen(self.command, cwd=REPO, stdout=self.output[0], stderr=self.output[1], text=True,
                                     env=BackgroundRun.env)
        self.started = time.time()

    def ended(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def result(self):
        """``(CompletedProcess, folder)`` once the program has ended."""
        if self.after is not None:
            self.after.result()
        with BackgroundRun.lock:
            if self.proc is None:
                if self in BackgroundRun.lane:
                    BackgroundRun.lane.remove(self)
                self._start()
        try:
            self.proc.wait(timeout=max(1.0, self.started + self.timeout - time.time()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        stdout, stderr = (open(f.name).read() for f in self.output)
        for f in self.output:
            f.close()
        return subprocess.CompletedProcess(self.command, self.proc.returncode, stdout, stderr), self.folder

    @classmethod
    def for_test(cls, request):
        """``result()`` of the run declared for the requesting fixture and the test that asks for it."""
        runs = [run for run in cls.declared if run.fixture == request.fixturename and run.needed_by(request.node)]
        assert len(runs) == 1, f"{len(runs)} background runs declared for {request.node.nodeid}"
        return runs[0].result()

    @classmethod
    def run_lane(cls):
        while True:
            with cls.lock:
                if not cls.lane:
                    cls.running = False
                    return
                run, waiting = cls.lane[0], cls.lane[0].after
                if waiting is None or waiting.ended():
                    cls.lane.pop(0)
                    waiting = None
                    try:
                        run._start()
                    except Exception:  # noqa: BLE001  (result() starts it again and shows the error in its test)
                        run.proc = None
                        continue
            try:
                run.proc.wait() if waiting is None else waiting.result()  # (result() starts it if nobody has)
            except Exception:  # noqa: BLE001  (the test of that run reports it)
                continue

    @classmethod
    def stop(cls):
        with cls.lock:
            cls.lane.clear()
            for run in cls.declared:
                if run.proc is not None and run.proc.poll() is None:
                    run.proc.kill()


def pytest_collection_finish(session):
    """Starts the background lane with the runs the selected tests need (none for ``--collect-only``)."""
    BackgroundRun.factory = session.config._tmp_path_factory
    BackgroundRun.env = dict(os.environ)
    if session.config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # under pytest-xdist: see pytest_runtest_setup
    _queue(session.items)


_started_files = set()


def pytest_runtest_setup(item):
    """Under pytest-xdist (``make test``: ``--dist loadfile``) every worker collects every test but runs only
    the files it is sent, whole: the runs of a file join this worker's lane when its first test starts."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or item.path in _started_files:
        return
    _started_files.add(item.path)
    _queue([other for other in item.session.items if other.path == item.path])


def _queue(items):
    """Appends the runs ``items`` need to the lane, and starts the lane's thread unless it is running."""
    with BackgroundRun.lock:
        for item in items:
            for run in BackgroundRun.declared:
                if run.proc is None and run not in BackgroundRun.lane and run.needed_by(item):
                    BackgroundRun.lane.append(run)
        start = bool(BackgroundRun.lane) and not BackgroundRun.running
        BackgroundRun.running = BackgroundRun.running or start
    if start:
        threading.Thread(target=BackgroundRun.run_lane, name="background runs", daemon=True).start()


def pytest_sessionfinish(session):
    BackgroundRun.stop()


@pytest.fixture(scope="module")
def bench():
    """The Channel-Bench-Macro MobileNet table (the test is skipped, naming the fix, when it is absent)."""
    path = default_table_path()
    if not os.path.exists(path):
        pytest.skip(f"Channel-Bench-Macro table not found at {path} (set ${CHANNEL_BENCH_ENV} to its "
                    "Results_MobileNet.json)")
    return ChannelBenchMacro(path)


@pytest.fixture(scope="session")
def fashion_arrays():
    """Fashion-MNIST ``((x_train, y_train), (x_test, y_test))`` as uint8 images, read once per session
    (tests slice and normalise copies; nobody writes into these arrays)."""
    (x, y), (xt, yt) = data.load_arrays("fashion_mnist")
    for a in (x, y, xt, yt):
        a.flags.writeable = False
    return (x, y), (xt, yt)


@pytest.fixture
def parse_flags(monkeypatch):
    """``parse(*args)``: absl's flags of every tfbnas entry point parsed from ``args`` in this process, as
    ``python -m ... args`` would in the repository root; every flag is back to its default afterwards."""
    from absl import flags

    from tfbnas import flags as tflags

    tflags.define_all()
    monkeypatch.chdir(REPO)

    def parse(*args):
        flags.FLAGS.unparse_flags()
        return flags.FLAGS(["prog", *args])

    yield parse
    flags.FLAGS.unparse_flags()
