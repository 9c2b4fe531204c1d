"""Search schedules and DCP's mechanisms at work: temperature and warm-up under every strategy,
Algorithm 10's Parent -> Child architecture inheritance, and the sizes of the tangent term and of the
decoupled correction in the architecture update (measured on real tiny supernets, no mocks)."""

import csv
import math

import numpy as np
import pytest
import tensorflow as tf

from tfbnas.search.callbacks import SearchRecorder, StrategySchedule, append_history
from tfbnas.search.run_search import SearchConfig, _checkpoint
from tfbnas.search.strategies import Bats, Darts, Dcp, make_strategy

from search_helpers import first_step, make_engine, search_batch, snapshot


@pytest.fixture(scope="module")
def batch():
    return search_batch()


def floats(logs):
    return {k: float(v) for k, v in logs.items()}


def schedule(engine):
    callback = StrategySchedule()
    callback.set_model(engine)
    return callback


# ---------------------------------------------------------------- temperature


def test_one_temperature_schedule_for_every_strategy():
    # geometric from t_start to t_end over the epochs after the warm-up; t_start during the warm-up
    for strategy in (Darts(5, t_start=2.0, t_end=0.5, warmup_epochs=2),
                     Dcp(5, t_start=2.0, t_end=0.5, warmup_epochs=2),
                     Bats(5, t_start=2.0, t_end=0.5, warmup_epochs=2)):
        assert [round(strategy.temperature(e), 6) for e in range(5)] == [2.0, 2.0, 2.0, 1.0, 0.5], strategy.name
        assert [strategy.arch_enabled(e) for e in range(5)] == [False, False, True, True, True]
    assert [Dcp(3).temperature(e) for e in range(3)] == [1.0, 1.0, 1.0]  # default: T = 1 for darts/dcp
    assert [round(Bats(3).temperature(e), 4) for e in range(3)] == [1.0, round(0.2 ** 0.5, 4), 0.2]
    assert Dcp(3, t_start=2.0, t_end=0.5, warmup_epochs=2).temperature(2) == 0.5  # one searching epoch: t_end
    with pytest.raises(ValueError):
        Darts(3, t_start=0.0)


def test_temperature_flags_map_onto_each_strategy():
    dcp = make_strategy("dcp", 4, **SearchConfig(strategy="dcp", search_epochs=4, arch_t_start=1.0, arch_t_end=0.125,
                                                 arch_frozen_epochs=1, bats_t_end=0.5).strategy_kwargs())
    assert (dcp.t_start, dcp.t_end, dcp.warmup_epochs) == (1.0, 0.125, 1)
    bats = make_strategy("bats", 4, **SearchConfig(strategy="bats", search_epochs=4, arch_t_end=0.125, bats_t_start=2.0,
                                                   bats_t_end=0.5).strategy_kwargs())
    assert (bats.t_start, bats.t_end) == (2.0, 0.5)  # bats keeps its own flags
    darts = make_strategy("darts", 4, **SearchConfig(strategy="darts", arch_t_end=0.25).strategy_kwargs())
    assert darts.t_end == 0.25


def test_temperature_schedule_is_applied_to_child_and_parent_under_dcp():
    engine = make_engine("dcp", search_epochs=4, arch_frozen_epochs=1, arch_t_start=2.0, arch_t_end=0.5)
    callback = schedule(engine)
    seen = []
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        seen.append((float(engine.child.temperature.numpy()), float(engine.parent.temperature.numpy())))
    expected = [2.0, 2.0, 1.0, 0.5]
    np.testing.assert_allclose([c for c, _ in seen], expected, rtol=1e-6)
    np.testing.assert_allclose([p for _, p in seen], expected, rtol=1e-6)
    assert engine.arch_frozen_epochs == 1 and engine.arch_enabled


# ---------------------------------------------------------------- warm-up


@pytest.mark.parametrize("strategy", ["darts", pytest.param("bats", marks=pytest.mark.slow),
                                      pytest.param("dcp", marks=pytest.mark.slow)])
def test_warmup_epoch_leaves_child_and_parent_alphas_unchanged(batch, strategy):
    engine = make_engine(strategy, arch_frozen_epochs=1)
    callback = schedule(engine)
    callback.on_epoch_begin(0)
    assert not engine.arch_enabled
    nets = [engine.child] + ([engine.parent] if engine.parent is not None else [])
    alphas = [snapshot(net.arch_variables) for net in nets]
    weights = snapshot(engine.child.weight_variables)
    for _ in range(2):
        logs = floats(engine.train_step(batch))
    assert "arch_ce" not in logs and "tangent_ratio" not in logs
    callback.on_epoch_end(0)
    callback.on_epoch_begin(1)  # the epoch boundary (DCP's inheritance) does not move them either
    for net, before in zip(nets, alphas):
        for b, v in zip(before, net.arch_variables):
            np.testing.assert_array_equal(b, v.numpy(), err_msg=f"{strategy}: {net.name} {v.name}")
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(weights, engine.child.weight_variables))
    assert engine.arch_enabled  # epoch 2 searches
    logs = floats(engine.train_step(batch))
    assert "arch_ce" in logs
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(alphas[0], engine.child.arch_variables))


# ---------------------------------------------------------------- Algorithm 10


@pytest.mark.slow
def test_child_takes_the_parent_architecture_at_epoch_begin(batch):
    engine = make_engine("dcp")
    callback = schedule(engine)
    callback.on_epoch_begin(0)
    start = snapshot(engine.child.arch_variables)
    np.testing.assert_array_equal(_cat(start), _cat(snapshot(engine.parent.arch_variables)))
    for _ in range(2):
        engine.train_step(batch)
    child, parent = snapshot(engine.child.arch_variables), snapshot(engine.parent.arch_variables)
    child_weights = snapshot(engine.child.weight_variables)
    assert np.abs(_cat(child) - _cat(parent)).max() > 1e-5  # they searched apart during the epoch
    callback.on_epoch_end(0)
    np.testing.assert_array_equal(_cat(child), _cat(snapshot(engine.child.arch_variables)))  # nothing at the end
    callback.on_epoch_begin(1)
    # a_hat <- a (+ the Child's own epoch of updates), then a <- a_hat
    expected = [p + (c - s) for p, c, s in zip(parent, child, start)]
    for e, c, p in zip(expected, engine.child.arch_variables, engine.parent.arch_variables):
        np.testing.assert_allclose(c.numpy(), e, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(p.numpy(), c.numpy())
    for b, v in zip(child_weights, engine.child.weight_variables):  # default: the Child keeps its own weights
        np.testing.assert_array_equal(b, v.numpy())
    # a Child that did not move ends up exactly on the Parent's architecture
    for v, s in zip(engine.child.arch_variables, start):
        v.assign(s)
    for v, s in zip(engine.strategy.epoch_start_arch, start):
        v.assign(s)
    for v, p in zip(engine.parent.arch_variables, parent):
        v.assign(p)
    callback.on_epoch_begin(2)
    np.testing.assert_allclose(_cat(snapshot(engine.child.arch_variables)), _cat(parent), rtol=0, atol=1e-7)


@pytest.mark.slow
def test_without_arch_from_parent_only_the_parent_takes_the_child_architecture(batch):
    engine = make_engine("dcp", dcp_arch_from_parent=False)
    callback = schedule(engine)
    callback.on_epoch_begin(0)
    engine.train_step(batch)
    child = snapshot(engine.child.arch_variables)
    callback.on_epoch_end(0)
    callback.on_epoch_begin(1)
    np.testing.assert_array_equal(_cat(child), _cat(snapshot(engine.child.arch_variables)))
    np.testing.assert_array_equal(_cat(child), _cat(snapshot(engine.parent.arch_variables)))


def _cat(arrays):
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


# ---------------------------------------------------------------- sizes of DCP's terms


def _arch_update(engine, batch, state, **strategy_attrs):
    """The Child's architecture update of one step from the saved state, with strategy attributes set."""
    checkpoint, path = state
    checkpoint.read(path).assert_existing_objects_matched()
    for k, v in strategy_attrs.items():
        setattr(engine.strategy, k, v)
    before = _cat(snapshot(engine.child.arch_variables))
    logs = floats(engine.train_step(batch))
    return _cat(snapshot(engine.child.arch_variables)) - before, logs


@pytest.fixture(scope="module")
def dcp_engine(tmp_path_factory, batch):
    engine = make_engine("dcp")
    engine.strategy.on_epoch_begin(engine, 0)
    engine.train_step(batch)  # one step first: Adam's moments and psi's signal are not at their start values
    checkpoint = _checkpoint(engine)
    return engine, (checkpoint, checkpoint.write(str(tmp_path_factory.mktemp("dcp") / "state")))


@pytest.mark.slow
def test_tangent_term_changes_the_architecture_update(dcp_engine, batch):
    engine, checkpoint = dcp_engine
    with_tangent, logs = _arch_update(engine, batch, checkpoint, tangent_weight=0.5)
    without, logs_off = _arch_update(engine, batch, checkpoint, tangent_weight=0.0)
    again, _ = _arch_update(engine, batch, checkpoint, tangent_weight=0.5)
    np.testing.assert_allclose(again, with_tangent, rtol=0, atol=1e-9)  # the comparison is reproducible
    change = np.linalg.norm(with_tangent - without) / np.linalg.norm(without)
    assert change > 0.05, change
    assert 0.05 < logs["tangent_ratio"] < 10 and 0 < logs["tangent_perp_ratio"] <= logs["tangent_ratio"] + 1e-6
    assert logs_off["tangent_ratio"] == pytest.approx(0.0, abs=1e-7)
    engine.strategy.tangent_weight = 0.5


@pytest.mark.slow
def test_decoupled_correction_changes_the_architecture_update(dcp_engine, batch):
    engine, checkpoint = dcp_engine
    with_correction, logs = _arch_update(engine, batch, checkpoint, decoupled_weight=0.5)
    without, _ = _arch_update(engine, batch, checkpoint, decoupled_weight=0.0)
    change = np.linalg.norm(with_correction - without) / np.linalg.norm(without)
    assert change > 0.05, change
    # the correction is rho * psi times the architecture step, edge by edge
    assert logs["decoupled_ratio"] == pytest.approx(0.5 * logs["psi_mean"], rel=0.2)
    assert logs["psi_grad"] > 0  # psi learns from the previous correction, by RMS-normalised steps of ~psi_lr
    steps = np.abs(_cat(snapshot(engine.strategy.psi)) - 1.0)
    assert np.all(steps > 0.2 * engine.strategy.psi_lr) and np.all(steps < 3 * engine.strategy.psi_lr), steps
    engine.strategy.decoupled_weight = 0.5


@pytest.mark.slow
def test_literal_terms_are_numerically_inert(dcp_engine, batch):
    """The issue's measurement, kept as a regression: the book's literal scales barely move the update."""
    engine, checkpoint = dcp_engine
    try:
        base, _ = _arch_update(engine, batch, checkpoint, tangent=False, decoupled=False)
        literal, logs = _arch_update(engine, batch, checkpoint, decoupled=True, decoupled_normalize=False)
        assert np.linalg.norm(literal - base) / np.linalg.norm(base) < 1e-3
        assert logs["decoupled_ratio"] < 1e-3
        # the literal tangent term with the GGN of K micro-batch gradients (|g|^2 smaller than g)
        base, _ = _arch_update(engine, batch, checkpoint, tangent=True, ggn=True, tangent_weight=0.0, decoupled=False)
        literal, logs = _arch_update(engine, batch, checkpoint, tangent_weight=0.5, tangent_normalize=False)
        assert np.linalg.norm(literal - base) / np.linalg.norm(base) < 1e-3
        assert logs["tangent_ratio"] < 1e-2
    finally:
        for k, v in dict(tangent=True, decoupled=True, decoupled_normalize=True, ggn=False, tangent_weight=0.5,
                         tangent_normalize=True).items():
            setattr(engine.strategy, k, v)


@pytest.mark.slow
def test_ratios_are_logged_only_when_their_component_is_on():
    for overrides, present, absent in (
            ({}, ("tangent_ratio", "tangent_perp_ratio", "decoupled_ratio"), ()),
            ({"dcp_tangent": False}, ("decoupled_ratio",), ("tangent_ratio", "tangent_perp_ratio")),
            ({"dcp_decoupled": False}, ("tangent_ratio",), ("decoupled_ratio", "psi_mean")),
            ({"strategy": "darts"}, (), ("tangent_ratio", "decoupled_ratio"))):
        _, logs = first_step(**{"strategy": "dcp", **overrides})  # the first step of a fresh engine
        for key in present:
            assert math.isfinite(logs[key]) and logs[key] > 0, (overrides, key, logs)
        for key in absent:
            assert key not in logs, (overrides, key)


@pytest.mark.slow
def test_ratios_reach_the_epoch_history_as_epoch_means(batch, tmp_path):
    engine = make_engine("dcp")
    manager = tf.train.CheckpointManager(_checkpoint(engine), str(tmp_path / "checkpoints"), max_to_keep=1)
    lines = []
    recorder = SearchRecorder(str(tmp_path), manager, log=lines.append)
    recorder.set_model(engine)
    schedule(engine).on_epoch_begin(0)
    recorder.on_epoch_begin(0)
    ratios = []
    for step in range(2):
        logs = floats(engine.train_step(batch))
        ratios.append(logs["tangent_ratio"])
        recorder.on_train_batch_end(step, logs)
    epoch_logs = dict(logs)
    recorder.on_epoch_end(0, epoch_logs)
    assert epoch_logs["tangent_ratio"] == pytest.approx(np.mean(ratios))  # later callbacks see the mean
    with open(tmp_path / "search_history.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["tangent_ratio"]) == pytest.approx(np.mean(ratios))
    assert float(row["decoupled_ratio"]) > 0
    assert any("tangent_ratio=" in line and "decoupled_ratio=" in line for line in lines)


def test_history_gains_columns_that_appear_after_a_warmup(tmp_path):
    path = str(tmp_path / "search_history.csv")
    append_history(path, 0, {"loss": 1.0, "w_ce": 1.0})
    append_history(path, 1, {"loss": 0.5, "w_ce": 0.5, "arch_ce": 0.7, "tangent_ratio": 0.4})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["arch_ce"] == "" and rows[1]["arch_ce"] == "0.7" and rows[1]["tangent_ratio"] == "0.4"
    assert rows[0]["loss"] == "1.0" and rows[1]["epoch"] == "2"
