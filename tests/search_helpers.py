"""Tiny real search engines for the search tests (no mocks: real supernets, strategies and data)."""

import tensorflow as tf

from tfbnas import data
from tfbnas.search.run_search import SearchConfig, build_search

TINY = dict(init_channels=4, num_cells=3, nodes=1, batch_size=8, train_examples=64, search_epochs=2)


def search_batch():
    """One ``((x_train, y_train), (x_val, y_val))`` batch of 8 real Fashion-MNIST images per split."""
    splits = data.make_splits("fashion_mnist", batch_size=8, train_examples=64, seed=0)
    return next(iter(tf.data.Dataset.zip((splits.search_train, splits.search_val))))


def make_engine(strategy="darts", **overrides):
    """A built, compiled :class:`~tfbnas.search.engine.SearchModel` of the tiny configuration, seed 0."""
    config = SearchConfig(strategy=strategy, **{**TINY, "dcp_ggn_samples": 2, **overrides})
    tf.keras.utils.set_random_seed(0)
    return build_search(config, data.KNOWN_DATASETS["fashion_mnist"], steps_per_epoch=4)


def snapshot(variables):
    return [v.numpy().copy() for v in variables]
