"""DNAL: scaled-sigmoid gates, gate insertion, exact pruning, the four stages on Fashion-MNIST, LCE."""

import importlib.util
import json
import sys

import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf

from conftest import BackgroundRun
from tfbnas.data import KNOWN_DATASETS, normalize_numpy
from tfbnas.deploy.flatbuffer import op_histogram
from tfbnas.width import WidthSearchError
from tfbnas.width.dnal import (ChannelGate, DeltaSchedule, PruneError, example_cnn, finetune, gate_layers,
                               insert_gates, prune, prune_plan, set_gate_delta, set_gate_mode, train_gates,
                               train_weights, width_table)

L = tf.keras.layers


def _randomize_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.5, 2.0, c)])


def _random_gates(gated, rng, p_open=0.5):
    for gate in gate_layers(gated):
        gate.s.assign(rng.choice([-1.0, 1.0], gate.s.shape[0], p=[1 - p_open, p_open]))
    set_gate_mode(gated, "hard")


def _n_quant_convs(model):
    return sum(isinstance(layer, lq.layers.QuantConv2D) for layer in model.layers)


# ------------------------------------------------------------------------------------- the gate


def test_gate_approaches_a_step_function_as_delta_grows():
    s = np.array([-0.5, -0.05, -0.005, 0.005, 0.05, 0.5], np.float32)
    gate = ChannelGate(mode="soft")
    gate.build((None, len(s)))
    gate.s.assign(s)
    x = tf.ones([1, len(s)])
    step = (s > 0).astype(np.float32)
    errors = []
    for delta in (1.0, 10.0, 100.0, 1e3, 1e4):
        gate.delta.assign(delta)
        g = gate(x).numpy()[0]
        np.testing.assert_allclose(g, 0.5 * (1 + np.tanh(0.5 * delta * s.astype(np.float64))), rtol=1e-5, atol=1e-7)
        errors.append(np.abs(g - step).max())
    assert errors[0] == pytest.approx(1 / (1 + np.exp(0.005)), rel=1e-5)  # ~0.4988: far from a step at delta 1
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 2e-22  # sigmoid(-50)
    gate.mode = "hard"
    np.testing.assert_array_equal(gate(x).numpy()[0], step)
    gate.mode = "off"
    np.testing.assert_array_equal(gate(x).numpy()[0], np.ones_like(s))
    with pytest.raises(WidthSearchError, match="mode"):
        gate.mode = "half"


def test_delta_schedule_is_exponential_from_1_to_1e4():
    schedule = DeltaSchedule(1.0, 1e4, total_steps=5)
    values = [schedule.value(t) for t in range(5)]
    np.testing.assert_allclose(values, [1.0, 10.0, 100.0, 1e3, 1e4], rtol=1e-9)
    with pytest.raises(WidthSearchError):
        DeltaSchedule(0.0, 1e4, 3)


# ------------------------------------------------------------------------------------- insertion


def test_insert_gates_copies_weights_and_places_gates_after_conv_bn():
    rng = np.random.default_rng(0)
    model = example_cnn("resnet", widths=(8, 16))
    _randomize_bn(model, rng)
    gated = insert_gates(model)
    names = [g.name for g in gate_layers(gated)]
    assert names == ["bn0_gate", "bn0r1_gate", "bn0r2_gate", "bn1_gate", "bn1r1_gate", "bn1r2_gate"]
    for name in names:  # Conv-BN-gate-activation
        gate = gated.get_layer(name)
        bn = gate._inbound_nodes[0].inbound_layers
        assert isinstance(bn, L.BatchNormalization)
        assert isinstance(bn._inbound_nodes[0].inbound_layers, L.Conv2D)
    x = rng.normal(size=(2, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(gated(x).numpy(), model(x).numpy())  # gates start "off"
    assert gated.get_layer("conv1") is not model.get_layer("conv1")  # a copy: the original is untouched


def test_gated_and_pruned_models_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    gated = insert_gates(example_cnn("vgg", widths=(8, 8), binary=True), mode="soft", delta=3.0)
    _random_gates(gated, rng)
    set_gate_delta(gated, 7.0)
    x = rng.normal(size=(2, 28, 28, 1)).astype(np.float32)
    gated.save(tmp_path / "gated.keras")
    loaded = tf.keras.models.load_model(tmp_path / "gated.keras")
    assert loaded.get_layer("bn1a_gate").mode == "hard"
    assert loaded.get_layer("bn1a_gate").get_config()["delta"] == pytest.approx(7.0)
    np.testing.assert_array_equal(loaded(x).numpy(), gated(x).numpy())
    pruned = prune(gated)
    pruned.save(tmp_path / "pruned.keras")
    np.testing.assert_allclose(tf.keras.models.load_model(tmp_path / "pruned.keras")(x).numpy(), pruned(x).numpy(),
                               atol=1e-6)


# ------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("binary", [False, True], ids=["real", "binary"])
def test_pruning_keeps_the_outputs_of_kept_channels(kind, binary):
    rng = np.random.default_rng(3)
    model = example_cnn(kind, widths=(8, 16, 16), binary=binary)
    _randomize_bn(model, rng)
    gated = insert_gates(model)
    _random_gates(gated, rng)
    pruned = prune(gated)
    assert not gate_layers(pruned)
    assert pruned.count_params() < model.count_params()
    x = rng.normal(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(pruned(x).numpy(), gated(x).numpy(), atol=1e-5)
    # Inside the network: the kept channels of a gated BN output equal the pruned BN output.
    bn = "bn1a" if kind == "vgg" else "bn1r1"
    keep = np.flatnonzero(gated.get_layer(f"{bn}_gate").open_mask())
    inner_gated = tf.keras.Model(gated.input, gated.get_layer(f"{bn}_gate").output)(x).numpy()
    inner_pruned = tf.keras.Model(pruned.input, pruned.get_layer(bn).output)(x).numpy()
    assert inner_pruned.shape[-1] == len(keep)
    np.testing.assert_allclose(inner_pruned, inner_gated[..., keep], atol=1e-5)


def test_residual_adds_keep_the_union_of_both_branches():
    rng = np.random.default_rng(4)
    gated = insert_gates(example_cnn("resnet", widths=(8, 16)))
    _random_gates(gated, rng)
    widths = prune_plan(gated)
    for i in range(2):
        union = gated.get_layer(f"bn{i}_gate").open_mask() | gated.get_layer(f"bn{i}r2_gate").open_mask()
        assert widths[f"conv{i}"][1] == widths[f"conv{i}r2"][1] == union.sum()
        inner = gated.get_layer(f"bn{i}r1_gate").open_mask().sum()
        assert widths[f"conv{i}r1"][1] == inner  # not on the residual stream: its own gate decides
    rows = {r["layer"]: r for r in width_table(gated)}
    assert rows["logits"]["after"] == rows["logits"]["before"] == 10 and not rows["logits"]["gated"]


def test_binary_consumers_absorb_the_constant_of_removed_channels():
    # A closed channel is 0 after its gate, but sign(0) = +1 in the next binary conv: pruning folds
    # that constant into the next BatchNorm's moving mean, which plain slicing would miss.
    rng = np.random.default_rng(5)
    model = example_cnn("vgg", widths=(8, 8), binary=True)
    _randomize_bn(model, rng)
    gated = insert_gates(model)
    _random_gates(gated, rng)
    pruned = prune(gated)
    keep = np.flatnonzero(gated.get_layer("bn0b_gate").open_mask())
    assert 0 < len(keep) < 8
    original_mean = model.get_layer("bn1a").moving_mean.numpy()
    keep_next = np.flatnonzero(gated.get_layer("bn1a_gate").open_mask())
    assert np.abs(pruned.get_layer("bn1a").moving_mean.numpy() - original_mean[keep_next]).max() > 1e-3


def test_pruning_through_depthwise_separable_concat_and_flatten():
    rng = np.random.default_rng(6)
    i = tf.keras.Input((12, 12, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(i)))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(x)))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(y)))
    y = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(y))
    y = L.Add()([x, y])
    z = L.PReLU(shared_axes=[1, 2])(L.BatchNormalization()(L.SeparableConv2D(6, 3, padding="same")(x)))
    c = L.MaxPooling2D()(L.Concatenate()([y, z]))
    model = tf.keras.Model(i, L.Dense(5)(L.Flatten()(c)))
    _randomize_bn(model, rng)
    gated = insert_gates(model)
    assert len(gate_layers(gated)) == 4
    _random_gates(gated, rng)
    pruned = prune(gated)
    x = rng.normal(size=(3, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(pruned(x).numpy(), gated(x).numpy(), atol=1e-5)
    assert pruned.count_params() < model.count_params()


def test_bad_models_get_one_clear_error():
    i = tf.keras.Input((8,))
    with pytest.raises(PruneError, match="no Conv-BatchNorm pair"):
        insert_gates(tf.keras.Model(i, L.Dense(3)(i)))

    class Sub(tf.keras.Model):
        def call(self, x):
            return x

    with pytest.raises(PruneError, match="not a Functional model"):
        insert_gates(Sub())
    gated = insert_gates(example_cnn("vgg", widths=(4,)))
    ds = tf.data.Dataset.from_tensors((tf.zeros([2, 28, 28, 1]), tf.zeros([2]))).repeat()
    with pytest.raises(WidthSearchError, match="steps_per_epoch"):
        train_gates(gated, ds)
    with pytest.raises(WidthSearchError, match="penalty"):
        train_gates(gated, (np.zeros([2, 28, 28, 1]), np.zeros([2])), penalty="max")


# ------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def fashion(fashion_arrays):
    (x, y), (xt, yt) = fashion_arrays
    rng = np.random.default_rng(0)
    info = KNOWN_DATASETS["fashion_mnist"]
    i = rng.choice(len(x), 4000, replace=False)
    j = rng.choice(len(xt), 2000, replace=False)
    return (normalize_numpy(x[i], info), y[i]), (normalize_numpy(xt[j], info), yt[j])


MARGIN = 0.03  # finetuned pruned model: at most 3 points below the unpruned model


@pytest.mark.slow
def test_dnal_removes_channels_and_keeps_accuracy_on_fashion_mnist(fashion):
    (x, y), (xt, yt) = fashion
    tf.keras.utils.set_random_seed(0)
    gated = insert_gates(example_cnn("vgg", widths=(16, 32, 32)))
    train_weights(gated, (x, y), epochs=4, batch_size=64)
    gated.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    unpruned = gated.evaluate(xt, yt, batch_size=500, verbose=0)[1]
    history = train_gates(gated, (x, y), epochs=1, lambda_a=7e-3, batch_size=64)
    assert history.history["delta"][-1] == pytest.approx(1e4)
    assert all(g.mode == "hard" for g in gate_layers(gated))
    gated_acc = gated.evaluate(xt, yt, batch_size=500, verbose=0)[1]
    pruned = prune(gated)
    pruned.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    assert pruned.evaluate(xt, yt, batch_size=500, verbose=0)[1] == pytest.approx(gated_acc, abs=1e-3)
    finetune(pruned, (x, y), epochs=2, batch_size=64)
    finetuned = pruned.evaluate(xt, yt, batch_size=500, verbose=0)[1]
    rows = width_table(gated)
    before = sum(r["before"] for r in rows if r["gated"])
    after = sum(r["after"] for r in rows if r["gated"])
    print(f"\nDNAL on Fashion-MNIST (4000 train / 2000 test): channels {before} -> {after}, params "
          f"{gated.count_params()} -> {pruned.count_params()}, accuracy unpruned {unpruned:.4f}, "
          f"gated {gated_acc:.4f}, "
          f"finetuned {finetuned:.4f}")
    assert after <= 0.8 * before, "DNAL removed fewer than 20% of the channels"
    assert unpruned > 0.75
    assert finetuned >= unpruned - MARGIN


# ------------------------------------------------------------------------------------- deployment


@pytest.mark.slow
def test_pruned_binary_model_converts_with_lce():
    rng = np.random.default_rng(7)
    model = example_cnn("resnet", widths=(8, 16, 32), binary=True)
    _randomize_bn(model, rng)
    gated = insert_gates(model)
    _random_gates(gated, rng, p_open=0.6)
    pruned = prune(gated)
    ops = op_histogram(lce.convert_keras_model(pruned))
    assert _n_quant_convs(pruned) == 8
    assert ops.get("LceBconv2d", 0) == 8
    assert ops.get("CONV_2D", 0) == 1  # the real stem conv


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tfbnas.models") is None, reason="tfbnas.models is not available")
def test_tiny_child_prunes_exactly_and_converts():
    from tfbnas.models import build_child
    from tfbnas.space.genotype import Genotype

    rng = np.random.default_rng(8)
    genotype = Genotype("dcp", 2, normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2),
                                          ("max_pool_3x3", 1)],
                        reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 2), ("sep_conv_3x3", 1)])
    child = build_child(genotype, init_channels=8, num_cells=3, input_shape=(16, 16, 1))
    _randomize_bn(child, rng)
    gated = insert_gates(child)
    assert len(gate_layers(gated)) >= 10
    _random_gates(gated, rng, p_open=0.6)
    pruned = prune(gated)
    x = rng.normal(size=(3, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(pruned(x).numpy(), gated(x).numpy(), atol=1e-4)
    assert pruned.count_params() < child.count_params()
    ops = op_histogram(lce.convert_keras_model(pruned))
    assert ops.get("LceBconv2d", 0) == _n_quant_convs(pruned) > 0


# The command-line run starts beside the in-process tests (conftest.BackgroundRun).
CLI_RUN = BackgroundRun(__name__, "cli_run", "width-dnal", lambda folder: [
    sys.executable, "-m", "tfbnas.width", "--method=dnal", "--model=example:binary_vgg", "--train_examples=512",
    "--test_examples=256", "--weight_epochs=1", "--gate_epochs=1", "--finetune_epochs=1", "--lambda_a=3e-3",
    f"--output_dir={folder / 'run'}"])


@pytest.fixture(scope="module")
def cli_run():
    result, folder = CLI_RUN.result()
    return result, folder / "run"


@pytest.mark.slow
def test_cli_dnal_writes_widths_table_and_pruned_model(cli_run):
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.load(open(out / "widths.json"))
    pruned = tf.keras.models.load_model(out / "pruned.keras")
    for row in summary["widths"]:
        config = pruned.get_layer(row["layer"]).get_config()
        assert config.get("filters", config.get("units")) == row["after"] <= row["before"]
    assert summary["params_after"] == pruned.count_params() <= summary["params_before"]
    assert "| conv0a | Conv2D | 16 |" in open(out / "widths.md").read()
