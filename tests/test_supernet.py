"""The supernet: both modes on real input shapes, variable bookkeeping, alphas -> genotype, weight inheritance."""

import numpy as np
import pytest
import tensorflow as tf

from tfbnas.space import MixedEdge, PRESETS, SpaceError, SuperNet, edge_index
from tfbnas.space.ops import quantize_input


def _images(shape, batch=4, seed=0):
    return tf.random.stateless_normal([batch, *shape], seed=(seed, 1))


@pytest.mark.parametrize("preset, shape, nodes", [
    ("dcp", (28, 28, 1), 4), ("bats", (28, 28, 1), 2), ("dcp", (32, 32, 3), 2), ("bats", (32, 32, 3), 3),
], ids=["fashion_mnist-dcp", "fashion_mnist-bats", "cifar-dcp", "cifar-bats"])
def test_forward_both_modes(preset, shape, nodes):
    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, nodes=nodes, preset=preset)
    x = _images(shape)
    child = model(x, training=True)
    n_vars = len(model.variables)
    parent = model(x, training=True, binary=False)
    assert child.shape == parent.shape == (4, 10)
    assert np.all(np.isfinite(child.numpy())) and np.all(np.isfinite(parent.numpy()))
    assert not np.allclose(child.numpy(), parent.numpy())
    assert len(model.variables) == n_vars  # Parent mode runs on the Child's variables


def test_default_mode_follows_constructor_flag():
    x = _images((28, 28, 1))
    child = SuperNet(num_classes=10, init_channels=8, num_cells=3, nodes=2)
    parent = SuperNet(num_classes=10, init_channels=8, num_cells=3, nodes=2, binary=False)
    child(x)
    parent(x)
    parent.copy_weights_from(child)
    for a, b in zip(parent.arch_variables, child.arch_variables):
        a.assign(b)
    np.testing.assert_array_equal(parent(x).numpy(), child(x, binary=False).numpy())
    np.testing.assert_array_equal(child(x).numpy(), parent(x, binary=True).numpy())


def test_arch_and_weight_variables_are_disjoint_and_complete():
    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, preset="dcp")
    model(_images((28, 28, 1), batch=2))
    arch = {v.ref() for v in model.arch_variables}
    weights = {v.ref() for v in model.weight_variables}
    assert len(arch) == 2 and not arch & weights
    assert arch | weights == {v.ref() for v in model.trainable_variables}
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, len(PRESETS["dcp"]))
    assert not model.temperature.trainable and float(model.temperature.numpy()) == 1.0
    assert model.temperature.ref() not in arch | weights
    alphas = model.alphas_normal.numpy()
    assert 0 < np.abs(alphas).max() < 0.01  # 1e-3 * randn
    assert not np.allclose(alphas, model.alphas_reduce.numpy())


def test_gradients_reach_both_variable_sets():
    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, nodes=1, preset="bats")
    x, y = _images((28, 28, 1)), tf.constant([0, 1, 2, 3])
    model(x)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for binary in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            loss = loss_fn(y, model(x, training=True, binary=binary))
        arch_grads = tape.gradient(loss, model.arch_variables)
        weight_grads = tape.gradient(loss, model.weight_variables)
        assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in arch_grads)
        assert sum(g is not None for g in weight_grads) == len(weight_grads)


def test_weight_step_respects_weight_clip():
    model = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=1, preset="dcp")
    x, y = _images((28, 28, 1)), tf.constant([0, 1, 2, 3])
    model(x)
    optimizer = tf.keras.optimizers.SGD(1e3)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.weight_variables), model.weight_variables))
    kernels = [v for v in model.weight_variables if v.constraint is not None]
    assert kernels and max(float(tf.reduce_max(tf.abs(v))) for v in kernels) <= 1.0


def test_mixed_edge_is_the_weighted_sum_of_its_ops():
    names = PRESETS["dcp"]
    edge = MixedEdge(names, 8, stride=2)
    x = _images((8, 8, 8), batch=2)
    mix = tf.constant(np.random.default_rng(0).dirichlet(np.ones(len(names))), tf.float32)
    got = edge(x, mix, training=False).numpy()
    want = 0.0
    for i, name in enumerate(names):
        op = edge.op(name)
        if op is not None:
            want = want + mix[i].numpy() * op(x, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # One-hot mixing selects exactly one op.
    one_hot = tf.one_hot(names.index("max_pool_3x3"), len(names))
    np.testing.assert_allclose(edge(x, one_hot).numpy(), tf.nn.max_pool2d(x, 3, 2, "SAME").numpy(), atol=1e-6)


def test_hand_set_alphas_give_expected_genotype():
    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, preset="dcp", nodes=2)
    ops = PRESETS["dcp"]
    normal = [("dil_conv_5x5", 1), ("sep_conv_3x3", 0), ("skip_connect", 2), ("avg_pool_3x3", 0)]
    reduce = [("max_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 1), ("sep_conv_5x5", 2)]
    for variable, edges in ((model.alphas_normal, normal), (model.alphas_reduce, reduce)):
        alphas = np.full(variable.shape, -3.0, np.float32)
        alphas[:, ops.index("none")] = 5.0
        for k, (op, source) in enumerate(edges):
            alphas[edge_index(k // 2, source), ops.index(op)] = 4.0
        variable.assign(alphas)
    genotype = model.genotype()
    assert genotype.nodes == 2 and genotype.preset == "dcp"
    assert genotype.normal == (("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("avg_pool_3x3", 0), ("skip_connect", 2))
    assert genotype.reduce == (("max_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 1), ("sep_conv_5x5", 2))
    probs = model.arch_probabilities()
    np.testing.assert_allclose(probs["normal"].sum(axis=1), 1.0, rtol=1e-6)
    # Temperature sharpens the softmax (BATS).
    model.temperature.assign(0.25)
    sharper = model.arch_probabilities()["normal"]
    assert sharper.max() > probs["normal"].max()


def test_copy_weights_from_parent_leaves_alphas():
    parent = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=2, binary=False, temperature=2.0)
    child = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=2)
    x = _images((28, 28, 1))
    parent(x, training=True)  # moves BN statistics away from their initial values
    child(x)
    alphas_before = child.alphas_normal.numpy().copy()
    child.copy_weights_from(parent)
    for a, b in zip(child.weight_variables, parent.weight_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(child.alphas_normal.numpy(), alphas_before)
    assert float(child.temperature.numpy()) == 1.0
    for a, b in zip(child.arch_variables, parent.arch_variables):
        a.assign(b)
    child.temperature.assign(parent.temperature)
    np.testing.assert_array_equal(child(x, binary=False).numpy(), parent(x).numpy())


def test_copy_weights_from_rejects_other_configs():
    a = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=1, preset="dcp")
    b = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=1, preset="bats")
    with pytest.raises(SpaceError, match="preset"):
        a.copy_weights_from(b)
    c = SuperNet(num_classes=10, init_channels=8, num_cells=2, nodes=1, preset="dcp")
    with pytest.raises(SpaceError, match="built"):
        a.copy_weights_from(c)


def test_config_round_trip_and_errors():
    model = SuperNet(num_classes=7, init_channels=8, num_cells=4, nodes=3, preset="bats", binary=False,
                     stem_multiplier=2, group_policy="paper", temperature=0.5)
    config = model.get_config()
    clone = SuperNet.from_config(config)
    assert clone.get_config() == config
    assert [c.reduction for c in clone.cells] == [False, True, True, False]
    assert clone.alphas_reduce.shape == (9, 8)
    assert float(clone.temperature.numpy()) == 0.5
    with pytest.raises(SpaceError, match="preset"):
        SuperNet(preset="darts")
    with pytest.raises(SpaceError, match="init_channels"):
        SuperNet(init_channels=7)
    with pytest.raises(SpaceError, match="group_policy"):
        SuperNet(group_policy="fast")


def test_shared_binarisation_matches_per_op_binarisation():
    edge = MixedEdge(PRESETS["bats"], 8)
    x = _images((6, 6, 8), batch=1)
    mix = tf.fill([len(PRESETS["bats"])], 1.0 / len(PRESETS["bats"]))
    shared = edge(x, mix).numpy()
    per_op = sum(float(mix[i]) * edge.op(n)(x, quantized=quantize_input(x, True)).numpy()
                 for i, n in enumerate(PRESETS["bats"]) if edge.op(n) is not None)
    np.testing.assert_allclose(shared, per_op, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_runs_inside_tf_function():
    model = SuperNet(num_classes=10, init_channels=8, num_cells=3, nodes=1, preset="bats")
    x, y = _images((32, 32, 3), batch=2), tf.constant([3, 5])
    model(x)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def arch_grads(binary):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True, binary=binary))
        return tape.gradient(loss, model.arch_variables)

    for binary in (True, False):
        grads = arch_grads(binary)
        assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    assert arch_grads.experimental_get_tracing_count() == 2  # one graph per mode
