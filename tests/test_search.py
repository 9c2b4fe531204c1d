"""The search engine: decoupled phases, strategy terms and their switches, DCP's tangent/GGN algebra."""

import numpy as np
import pytest
import tensorflow as tf

from tfbnas.search.strategies import Dcp, kl_divergence, make_strategy, rank_mask

from search_helpers import config, first_step, make_engine, search_batch, snapshot


@pytest.fixture(scope="module")
def batch():
    return search_batch()


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


@pytest.mark.slow
def test_darts_train_step_runs_under_fit_and_reports_losses(batch):
    engine = make_engine("darts")
    ds = tf.data.Dataset.from_tensors(batch).repeat(2)
    history = engine.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    assert {"arch_ce", "w_ce", "loss"} <= set(history.history)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.slow
def test_dcp_terms_are_nonzero_and_each_switch_removes_its_term(batch):
    full, logs = first_step("dcp")
    for term in ("w_kl", "tangent", "tangent_ratio", "decoupled", "decoupled_ratio", "parent_val_ce", "parent_ce"):
        assert term in logs and logs[term] > 0, (term, logs)
    assert "arch_kl" not in logs  # the KL is in the weight objective only, unless --dcp_kl_arch
    # psi learns from the previous step's correction: zero signal on the first step, non-zero on the second
    assert logs["psi_grad"] == 0
    assert float(full.train_step(batch)["psi_grad"]) > 0

    _, kl_arch = first_step("dcp", dcp_kl_arch=True)
    assert kl_arch["arch_kl"] > 0 and kl_arch["w_kl"] > 0
    _, no_kl = first_step("dcp", dcp_kl=False, dcp_kl_arch=True)
    assert "arch_kl" not in no_kl and "w_kl" not in no_kl and no_kl["tangent"] > 0
    _, no_tangent = first_step("dcp", dcp_tangent=False)
    assert "tangent" not in no_tangent and "tangent_ratio" not in no_tangent and no_tangent["w_kl"] > 0
    _, no_decoupled = first_step("dcp", dcp_decoupled=False)
    assert "decoupled" not in no_decoupled and "decoupled_ratio" not in no_decoupled and no_decoupled["tangent"] > 0
    assert full.strategy.arch_micro_batches() == 1  # H = I by default: one tape
    # --dcp_ggn: the strategy build_search makes of the flags takes --dcp_ggn_samples=2 micro-batches
    ggn = config("dcp", dcp_ggn=True)
    assert make_strategy("dcp", ggn.search_epochs, **ggn.strategy_kwargs()).arch_micro_batches() == 2


@pytest.mark.slow
def test_dcp_inheritance_switch(batch):
    engine = make_engine("dcp", dcp_inherit_weights=True)
    engine.strategy.on_epoch_begin(engine, 0)
    engine.train_step(batch)
    parent_w = snapshot(engine.parent.weight_variables)
    assert any(changed(parent_w, engine.child.weight_variables))  # they trained apart
    engine.strategy.on_epoch_begin(engine, 1)
    assert not any(changed(parent_w, engine.child.weight_variables))  # the Child inherited the Parent's weights
    for p, c in zip(engine.parent.arch_variables, engine.child.arch_variables):
        np.testing.assert_array_equal(p.numpy(), c.numpy())  # one architecture after the epoch boundary

    own = make_engine("dcp")  # default: the binary Child keeps its own weights
    own.train_step(batch)
    child_w = snapshot(own.child.weight_variables)
    own.strategy.on_epoch_begin(own, 1)
    assert not any(changed(child_w, own.child.weight_variables))

    off = make_engine("dcp", dcp_inherit=False, dcp_inherit_weights=True)
    off.train_step(batch)
    child_w, child_a, parent_a = (snapshot(v) for v in (off.child.weight_variables, off.child.arch_variables,
                                                        off.parent.arch_variables))
    off.strategy.on_epoch_begin(off, 1)
    off.strategy.on_epoch_end(off, 1)
    assert not any(changed(child_w, off.child.weight_variables))
    assert not any(changed(child_a, off.child.arch_variables)) and not any(changed(parent_a, off.parent.arch_variables))


def _flat(ts):
    return np.concatenate([np.asarray(t).ravel() for t in ts])


def test_tangent_propagation_with_ggn_matches_explicit_matrix():
    rng = np.random.RandomState(0)
    micro = [[tf.constant(rng.randn(3, 4), tf.float32), tf.constant(rng.randn(2, 4), tf.float32)] for _ in range(3)]
    grads = [tf.add_n([m[i] for m in micro]) / 3 for i in range(2)]
    tangent = [tf.constant(rng.randn(3, 4), tf.float32), tf.constant(rng.randn(2, 4), tf.float32)]
    g, t = _flat(grads), _flat(tangent)
    hessian = sum(np.outer(_flat(m), _flat(m)) for m in micro) / 3  # GGN: mean outer product of gradients
    h = hessian @ (t - g)  # the book's sign: towards the Parent's direction

    literal, logs = Dcp(tangent_weight=0.3, ggn=True, ggn_samples=3, tangent_normalize=False).transform_arch_gradients(
        grads, micro, tangent)
    np.testing.assert_allclose(_flat(literal), g + 2 * 0.3 * h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(logs["tangent"]), 0.3 * np.sum((g - t) ** 2), rtol=1e-5)

    scaled, logs = Dcp(tangent_weight=0.3, ggn=True, ggn_samples=3).transform_arch_gradients(grads, micro, tangent)
    np.testing.assert_allclose(_flat(scaled), g + 0.3 * np.linalg.norm(g) * h / np.linalg.norm(h), rtol=1e-5, atol=1e-6)
    assert float(logs["tangent_grad_norm"]) == pytest.approx(0.3 * np.linalg.norm(g), rel=1e-5)
    assert float(logs["tangent_cos"]) == pytest.approx(g @ t / np.linalg.norm(g) / np.linalg.norm(t), rel=1e-5)

    identity, _ = Dcp(tangent_weight=0.3, tangent_normalize=False).transform_arch_gradients(grads, micro, tangent)
    # (1 - 2 lambda) g + 2 lambda t
    np.testing.assert_allclose(_flat(identity), 0.4 * g + 0.6 * t, rtol=1e-5, atol=1e-6)
    identity, _ = Dcp(tangent_weight=0.3).transform_arch_gradients(grads, micro, tangent)
    np.testing.assert_allclose(_flat(identity), g + 0.3 * np.linalg.norm(g) * (t - g) / np.linalg.norm(t - g),
                               rtol=1e-5, atol=1e-6)
    unchanged, logs = Dcp(tangent=False).transform_arch_gradients(grads, micro, tangent)
    np.testing.assert_allclose(_flat(unchanged), g)
    assert not logs


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


def _descendants(ops):
    """Every op reachable from ``ops`` through data and control edges."""
    seen, todo = set(), list(ops)
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        todo.extend(c for t in op.outputs for c in t.consumers())
        todo.extend(op._control_outputs)
    return seen


def _ops_on(graph, variables, types):
    """Ops of ``types`` in ``graph`` whose first input is the handle of one of ``variables``."""
    handles = {inner.name for outer, inner in graph.captures if any(outer is v.handle for v in variables)}
    return [op for op in graph.get_operations() if op.type in types and op.inputs and op.inputs[0].name in handles]


WRITES = ("AssignVariableOp", "AssignSubVariableOp", "AssignAddVariableOp")


@pytest.mark.slow
def test_the_childs_passes_wait_for_the_parents_weight_update(batch):
    """One supernet pass at a time (peak memory): every conv of the Child's passes in a dcp step runs after
    the Parent's weight update (without the ordering, the executor may run the Child's architecture pass
    beside the Parent's), and the Child's weight update after its architecture update."""
    engine = make_engine("dcp")
    graph = tf.function(engine.train_step).get_concrete_function(batch).graph
    parent_updates = _ops_on(graph, engine.parent.weight_variables, WRITES)
    arch_updates = _ops_on(graph, engine.child.arch_variables, WRITES)
    child_updates = _ops_on(graph, engine.child.weight_variables, WRITES)
    child_convs = [op for op in graph.get_operations()
                   if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul") and op.name.startswith("child/")]
    assert parent_updates and arch_updates and child_updates and child_convs
    after_parent = _descendants(parent_updates)
    assert [op.name for op in child_convs if op.name not in after_parent] == []
    after_arch = _descendants(arch_updates)
    assert [op.name for op in child_updates if op.name not in after_arch] == []
