"""Tiny real search engines for the search tests (no mocks: real supernets, strategies and data)."""

import functools

import tensorflow as tf

from tfbnas import data
from tfbnas.search.run_search import SearchConfig, build_search

TINY = dict(init_channels=4, num_cells=3, nodes=1, batch_size=8, train_examples=64, search_epochs=2)


@functools.lru_cache(maxsize=None)
def search_batch():
    """One ``((x_train, y_train), (x_val, y_val))`` batch of 8 real Fashion-MNIST images per split (read once)."""
    splits = data.make_splits("fashion_mnist", batch_size=8, train_examples=64, seed=0)
    return next(iter(tf.data.Dataset.zip((splits.search_train, splits.search_val))))


def config(strategy="darts", **overrides):
    """The :class:`SearchConfig` of the tiny configuration with ``overrides``."""
    return SearchConfig(strategy=strategy, **{**TINY, "dcp_ggn_samples": 2, **overrides})


def make_engine(strategy="darts", **overrides):
    """A built, compiled :class:`~tfbnas.search.engine.SearchModel` of the tiny configuration, seed 0."""
    tf.keras.utils.set_random_seed(0)
    return build_search(config(strategy, **overrides), data.KNOWN_DATASETS["fashion_mnist"], steps_per_epoch=4)


_FIRST_STEPS = {}


def first_step(strategy="darts", **overrides):
    """``(engine, logs)``: a fresh :func:`make_engine` and the float logs of its first ``train_step`` on
    :func:`search_batch`, built once per session for each configuration (several tests read the logs of
    the same first step). Callers may step the engine on; later callers then get it as they left it, so
    tests that need a fresh engine's state read only ``logs``."""
    key = (strategy, tuple(sorted(overrides.items())))
    if key not in _FIRST_STEPS:
        engine = make_engine(strategy, **overrides)
        _FIRST_STEPS[key] = engine, {k: float(v) for k, v in engine.train_step(search_batch()).items()}
    engine, logs = _FIRST_STEPS[key]
    return engine, dict(logs)


def snapshot(variables):
    return [v.numpy().copy() for v in variables]
