"""The search engine: decoupled phases, strategy terms and their switches, DCP's tangent/GGN algebra."""

import numpy as np
import pytest
import tensorflow as tf

from tfbnas import data
from tfbnas.search.run_search import SearchConfig, build_search
from tfbnas.search.strategies import Dcp, kl_divergence, rank_mask

TINY = dict(init_channels=4, num_cells=3, nodes=1, batch_size=8, train_examples=64, search_epochs=2)


@pytest.fixture(scope="module")
def batch():
    splits = data.make_splits("fashion_mnist", batch_size=8, train_examples=64, seed=0)
    return next(iter(tf.data.Dataset.zip((splits.search_train, splits.search_val))))


def make_engine(strategy="darts", **overrides):
    config = SearchConfig(strategy=strategy, **{**TINY, "dcp_ggn_samples": 2, **overrides})
    tf.keras.utils.set_random_seed(0)
    return build_search(config, data.KNOWN_DATASETS["fashion_mnist"], steps_per_epoch=4)


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


def test_arch_phase_changes_only_architecture_and_weight_phase_only_weights(batch):
    engine = make_engine("darts")
    (xt, yt), (xv, yv) = batch
    alphas, weights = engine.child.arch_variables, engine.child.weight_variables
    assert {v.ref() for v in alphas}.isdisjoint({v.ref() for v in weights})
    a0, w0 = snapshot(alphas), snapshot(weights)
    engine.arch_phase(xv, yv)
    assert all(changed(a0, alphas)), "every architecture variable moves in the arch phase"
    assert not any(changed(w0, weights)), "no weight moves in the arch phase"
    a1, w1 = snapshot(alphas), snapshot(weights)
    engine.weight_phase(xt, yt)
    assert not any(changed(a1, alphas)), "no architecture variable moves in the weight phase"
    assert sum(changed(w1, weights)) > 0.9 * len(weights)


def test_darts_train_step_runs_under_fit_and_reports_losses(batch):
    engine = make_engine("darts")
    ds = tf.data.Dataset.from_tensors(batch).repeat(2)
    history = engine.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    assert {"arch_ce", "w_ce", "loss"} <= set(history.history)
    assert np.isfinite(history.history["loss"][0])


def test_dcp_terms_are_nonzero_and_each_switch_removes_its_term(batch):
    (xt, yt), (xv, yv) = batch
    full = make_engine("dcp")
    logs = {k: float(v) for k, v in full.train_step(batch).items()}
    for term in ("arch_kl", "w_kl", "tangent", "decoupled", "parent_val_ce", "parent_ce"):
        assert term in logs and logs[term] > 0, (term, logs)
    # psi learns from the previous step's correction: zero signal on the first step, non-zero on the second
    assert logs["psi_grad"] == 0
    assert float(full.train_step(batch)["psi_grad"]) > 0

    no_kl = {k: float(v) for k, v in make_engine("dcp", dcp_kl=False).train_step(batch).items()}
    assert "arch_kl" not in no_kl and "w_kl" not in no_kl and no_kl["tangent"] > 0
    no_tangent = {k: float(v) for k, v in make_engine("dcp", dcp_tangent=False).train_step(batch).items()}
    assert "tangent" not in no_tangent and no_tangent["arch_kl"] > 0
    no_decoupled = {k: float(v) for k, v in make_engine("dcp", dcp_decoupled=False).train_step(batch).items()}
    assert "decoupled" not in no_decoupled and no_decoupled["tangent"] > 0
    assert make_engine("dcp", dcp_ggn=False).strategy.arch_micro_batches() == 1
    assert make_engine("dcp").strategy.arch_micro_batches() == 2


def test_dcp_inheritance_switch(batch):
    engine = make_engine("dcp")
    engine.train_step(batch)
    parent_w = snapshot(engine.parent.weight_variables)
    assert any(changed(parent_w, engine.child.weight_variables))  # they trained apart
    engine.strategy.on_epoch_begin(engine, 1)
    assert not any(changed(parent_w, engine.child.weight_variables))  # the Child inherited the Parent's weights
    engine.strategy.on_epoch_end(engine, 1)
    for p, c in zip(engine.parent.arch_variables, engine.child.arch_variables):
        np.testing.assert_array_equal(p.numpy(), c.numpy())  # the Parent took the Child's architecture

    off = make_engine("dcp", dcp_inherit=False)
    off.train_step(batch)
    child_w = snapshot(off.child.weight_variables)
    off.strategy.on_epoch_begin(off, 1)
    assert not any(changed(child_w, off.child.weight_variables))


def test_tangent_propagation_with_ggn_matches_explicit_matrix():
    rng = np.random.RandomState(0)
    micro = [[tf.constant(rng.randn(3, 4), tf.float32), tf.constant(rng.randn(2, 4), tf.float32)] for _ in range(3)]
    grads = [tf.add_n([m[i] for m in micro]) / 3 for i in range(2)]
    tangent = [tf.constant(rng.randn(3, 4), tf.float32), tf.constant(rng.randn(2, 4), tf.float32)]
    strategy = Dcp(tangent_weight=0.3, ggn_samples=3)
    out, logs = strategy.transform_arch_gradients(grads, micro, tangent)
    flat = lambda ts: np.concatenate([t.numpy().ravel() for t in ts])  # noqa: E731
    g, t = flat(grads), flat(tangent)
    hessian = sum(np.outer(flat(m), flat(m)) for m in micro) / 3  # GGN: mean outer product of gradients
    expected = g + 2 * 0.3 * hessian @ (g - t)
    np.testing.assert_allclose(flat(out), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(logs["tangent"]), 0.3 * np.sum((g - t) ** 2), rtol=1e-5)
    identity, _ = Dcp(tangent_weight=0.3, ggn=False).transform_arch_gradients(grads, micro, tangent)
    np.testing.assert_allclose(flat(identity), g + 0.6 * (g - t), rtol=1e-5)
    unchanged, logs = Dcp(tangent=False).transform_arch_gradients(grads, micro, tangent)
    np.testing.assert_allclose(flat(unchanged), g) and not logs


def test_rank_mask_and_kl():
    norms = tf.constant([[0.1, 0.5, 0.3, 0.9], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(rank_mask(norms, 0.5).numpy(), [[0, 1, 0, 1], [1, 1, 0, 0]])
    logits = tf.constant([[2.0, 0.0, -1.0]])
    assert float(kl_divergence(logits, logits)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(logits, tf.zeros([1, 3]))[0]) > 0


def test_bats_schedule_and_teacher(batch):
    engine = make_engine("bats", bats_t_start=1.0, bats_t_end=0.25, bats_real_epochs=1, search_epochs=3)
    strategy = engine.strategy
    assert [round(strategy.temperature(e), 4) for e in range(3)] == [1.0, 0.5, 0.25]
    assert [strategy.child_binary(e) for e in range(3)] == [False, True, True]
    child_alphas = snapshot(engine.child.arch_variables)
    logs = {k: float(v) for k, v in engine.train_step(batch).items()}
    assert logs["w_kl"] > 0 and "tangent" not in logs
    for p, c in zip(engine.parent.arch_variables, child_alphas):
        np.testing.assert_array_equal(p.numpy(), c)  # the teacher evaluated the Child's architecture of this step
