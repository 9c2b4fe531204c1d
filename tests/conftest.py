"""Shared test fixtures. Importing tfbnas first selects Keras 2 for TensorFlow."""

import tfbnas  # noqa: F401  (must precede any tensorflow import)

import os  # noqa: E402

import pytest  # noqa: E402

from tfbnas.width.channel_bench import CHANNEL_BENCH_ENV, ChannelBenchMacro, default_table_path  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    """The Channel-Bench-Macro MobileNet table (the test is skipped, naming the fix, when it is absent)."""
    path = default_table_path()
    if not os.path.exists(path):
        pytest.skip(f"Channel-Bench-Macro table not found at {path} (set ${CHANNEL_BENCH_ENV} to its "
                    "Results_MobileNet.json)")
    return ChannelBenchMacro(path)
