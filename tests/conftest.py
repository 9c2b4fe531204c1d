"""Shared test fixtures and helpers. Importing tfbnas first (here, before any test module) selects Keras 2
for TensorFlow.

Helpers (``from conftest import REPO, run_module``): ``REPO``, the repository root; ``run_module`` and
``run_script``, a ``python -m module`` or ``python script`` subprocess in the repository root. Fixtures:
``bench`` (Channel-Bench-Macro), ``fashion_arrays`` (Fashion-MNIST, read once per session) and
``parse_flags`` (absl flags parsed in this process, back to their defaults afterwards).

Tests marked ``slow`` (more than ~15 s on 2 cores: whole searches, trainings, conversions) are left out by
``make test-fast`` (``pytest -m "not slow"``); ``make test`` runs everything.
"""

from tfbnas import data  # first: must precede any tensorflow import

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tfbnas.width.channel_bench import CHANNEL_BENCH_ENV, ChannelBenchMacro, default_table_path  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=600, env=None):
    """``python -m module args`` in the repository root (each such process pays TensorFlow's import)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def run_script(path, *args, timeout=600, env=None):
    """``python path args`` (``path`` relative to the repository root) in the repository root."""
    return subprocess.run([sys.executable, os.path.join(REPO, path), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


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
