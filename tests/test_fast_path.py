"""The fused supernet (the fast path) computes what the plain one computes.

The plain reference is ``SuperNet(fused=False)``: one ``MixedEdge`` per edge, one small layer per
candidate op, exactly the op table's definitions. The fused form computes all edges that leave a
node together (wide convs, shared pooling, mixing folded into BatchNorm). Given the same weights,
both must give the same logits, the same gradients w.r.t. every weight and both architecture
parameters, and the same BatchNorm statistics, in Child (1-bit) and Parent (real) mode, for both
presets; a fused op's weights must also transfer into its Child (Functional) layers.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfbnas.search.engine import latent_binary_kernels
from tfbnas.search.strategies import op_weight_norm
from tfbnas.space import PRESETS, SuperNet
from tfbnas.space.ops import FusedEdgeOps, FusedOpView, ScaledBatchNorm, SpaceError, child_op, transfer_weights

SHAPE = (10, 10, 3)  # 10 -> 5 -> 3: odd sizes after the reductions exercise "same" padding


def build_pair(preset, group_policy="lce", nodes=2, num_cells=3, partial_channels=1):
    """A fused and a plain supernet of one configuration, built, with random weights copied fused -> plain."""
    args = dict(num_classes=5, init_channels=8, num_cells=num_cells, nodes=nodes, preset=preset,
                group_policy=group_policy, partial_channels=partial_channels)
    fused, plain = SuperNet(fused=True, **args), SuperNet(fused=False, **args)
    x = tf.zeros((2,) + SHAPE)
    fused(x)
    plain(x)
    rng = np.random.default_rng(0)
    for v in fused.variables:
        if v.ref() == fused.temperature.ref():
            continue
        shape = v.shape.as_list()
        if "moving_variance" in v.name:
            value = rng.uniform(0.5, 2.0, shape)
        elif "gamma" in v.name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "alphas" in v.name:
            value = rng.normal(0.0, 1.0, shape)
        else:
            value = rng.uniform(-1.0, 1.0, shape)
        v.assign(value.astype("float32"))
    pairs = variable_pairs(fused, plain)
    for p, f, index in pairs:
        p.assign(f[index])
    return fused, plain, pairs


def variable_pairs(fused, plain):
    """``(plain_variable, fused_variable, index)``: ``plain_variable == fused_variable[index]`` by construction."""
    full = (Ellipsis,)
    pairs = [(plain.alphas_normal, fused.alphas_normal, full), (plain.alphas_reduce, fused.alphas_reduce, full)]
    for a, b in ((plain.stem_conv, fused.stem_conv), (plain.stem_bn, fused.stem_bn),
                 (plain.classifier, fused.classifier)):
        pairs += [(p, f, full) for p, f in zip(a.weights, b.weights)]
    for cp, cf in zip(plain.cells, fused.cells):
        for a, b in ((cp.pre0, cf.pre0), (cp.pre1, cf.pre1)):
            pairs += [(p, f, full) for p, f in zip(a.op_weights(), b.op_weights())]
        if cp.real_path:  # the batch-normalised real paths around the preprocessing
            for a, b in ((cp.real_bn0, cf.real_bn0), (cp.real_bn1, cf.real_bn1)):
                pairs += [(p, f, full) for p, f in zip(a.weights, b.weights)]
        assert len(cp.edges) == len(cf.edges)
        for ep, ef in zip(cp.edges, cf.edges):
            for name in plain.op_names:
                op = ep.op(name)
                if op is None or not op.op_weights():
                    assert not (ef.op(name) is not None and ef.op(name).op_weights())
                    continue
                slices = ef.op(name).weight_slices()
                assert len(slices) == len(op.op_weights())
                pairs += [(p, f, index) for p, (f, index) in zip(op.op_weights(), slices)]
    return pairs


def covered_fraction(fused, pairs):
    """Fraction of the fused model's variable elements that some pair maps (1.0 = the mapping is complete)."""
    seen = {v.ref(): np.zeros(v.shape, bool) for v in fused.variables}
    for _, f, index in pairs:
        seen[f.ref()][index] = True
    seen.pop(fused.temperature.ref())
    return sum(int(m.sum()) for m in seen.values()) / sum(m.size for m in seen.values())


def run(net, x, y, binary, training=True):
    """Logits and gradients of the cross-entropy w.r.t. every trainable variable."""
    with tf.GradientTape() as tape:
        logits = net(x, training=training, binary=binary)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, net.trainable_variables)
    return logits, {v.ref(): g for v, g in zip(net.trainable_variables, grads)}


def assert_close(a, b, what, tolerance=2e-4):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * scale, err_msg=what)


PRESETS_OF_CASES = {"dcp": ("dcp", "lce"), "bats": ("bats", "lce"), "bats-grouped": ("bats", 2),
                    "bireal": ("bireal", "lce")}
FAST_CASE = "child-dcp"  # each case takes ~10-40 s on 2 cores: the fast tier keeps the dcp Child's


@pytest.mark.parametrize("preset, group_policy, binary", [
    pytest.param(*case, binary, id=f"{mode}-{name}", marks=[pytest.mark.slow] * (f"{mode}-{name}" != FAST_CASE))
    for binary, mode in ((True, "child"), (False, "parent")) for name, case in PRESETS_OF_CASES.items()])
def test_fused_equals_plain(preset, group_policy, binary, partial_channels=1):
    fused, plain, pairs = build_pair(preset, group_policy, partial_channels=partial_channels)
    assert covered_fraction(fused, pairs) == 1.0
    x = tf.random.stateless_normal((6,) + SHAPE, seed=(4, 2))
    y = tf.constant([0, 1, 2, 3, 4, 0])
    logits_f, grads_f = run(fused, x, y, binary)
    logits_p, grads_p = run(plain, x, y, binary)
    assert_close(logits_f, logits_p, "logits")
    for p, f, index in pairs:
        if p.trainable:
            assert_close(grads_f[f.ref()][index], grads_p[p.ref()], f"gradient of {p.name}")
        else:  # BatchNorm moving statistics after one training-mode call
            assert_close(f[index], p, p.name)
    # Architecture gradients are non-zero, so the comparison above means something.
    assert float(tf.reduce_sum(tf.abs(grads_p[plain.alphas_normal.ref()]))) > 0
    # Inference mode (moving statistics) as well.
    assert_close(fused(x, training=False, binary=binary), plain(x, training=False, binary=binary), "inference")


@pytest.mark.parametrize("preset", ["dcp", "bireal"])
def test_fused_op_weights_transfer_to_child_layers(preset):
    fused, plain, _ = build_pair(preset)
    cell = fused.cells[1]  # a reduction cell: stride-2 edges, factorized reduce
    x = tf.random.stateless_normal([2, 10, 10, cell.channels], seed=(1, 1))
    for name in PRESETS[preset][1:]:
        view = cell.edges[0].op(name)
        inputs = tf.keras.Input((10, 10, cell.channels))
        out, layers = child_op(name, inputs, cell.channels, 2, prefix="op")
        transfer_weights(view if isinstance(view, FusedOpView) else None, layers)
        want = tf.keras.Model(inputs, out)(x, training=False)
        got = plain.cells[1].edges[0].op(name)(x, training=False)
        assert_close(got, want, name)


def test_weight_views_write_back_and_report_errors():
    fused, _, _ = build_pair("dcp", nodes=1, num_cells=1)
    view = fused.cells[0].edges[0].op("sep_conv_5x5")
    values = [np.full(np.shape(w), 0.25, np.float32) for w in view.op_weights()]
    view.assign_op_weights(values)
    for got in view.op_weights():
        np.testing.assert_array_equal(got.numpy(), 0.25)
    other = fused.cells[0].edges[1].op("sep_conv_5x5").op_weights()
    assert not np.allclose(other[0].numpy(), 0.25)  # the neighbouring edge's slice is untouched
    with pytest.raises(SpaceError, match="weights"):
        view.assign_op_weights(values[:2])
    with pytest.raises(SpaceError, match="out of range"):
        fused.cells[0].sources[0].weight_slices(5, "sep_conv_5x5")


@pytest.mark.parametrize("preset, group_policy", [("dcp", "lce"), ("bats", 2), ("bireal", "lce")])
def test_bookkeeping_matches_plain(preset, group_policy):
    fused, plain, pairs = build_pair(preset, group_policy)
    # Same number of trainable scalars; binary latent kernels (exempt from weight decay) correspond.
    count = lambda vs: sum(int(np.prod(v.shape)) for v in vs)  # noqa: E731
    assert count(fused.trainable_variables) == count(plain.trainable_variables)
    assert count(latent_binary_kernels(fused)) == count(latent_binary_kernels(plain))
    # DCP's per-(edge, op) weight norms.
    for cf, cp in zip(fused.cells, plain.cells):
        np.testing.assert_allclose(cf.edge_weight_norms(op_weight_norm).numpy(),
                                   cp.edge_weight_norms(op_weight_norm).numpy(), rtol=1e-5)
    assert fused.get_config()["fused"] and not plain.get_config()["fused"]
    with pytest.raises(SpaceError, match="fused"):
        fused.copy_weights_from(plain)


@pytest.mark.parametrize("training", [True, False])
def test_scaled_batch_norm_equals_batch_norm_times_scale(training):
    x = tf.random.stateless_normal([4, 5, 5, 6], seed=(9, 9))
    scale = tf.constant([0.5, 2.0, 0.0, 1.0, -1.0, 0.25])
    plain, scaled = tf.keras.layers.BatchNormalization(momentum=0.9), ScaledBatchNorm(momentum=0.9)
    plain.build(x.shape)
    scaled.build(x.shape)
    for a, b in zip(plain.weights, scaled.weights):
        value = np.random.default_rng(1).uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, scale])
        want = plain(x, training=training) * scale
        got = scaled(x, training=training, scale=scale)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(plain.weights, scaled.weights):  # moving statistics updated alike
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    gw = tape.gradient(want, [x, scale] + plain.trainable_weights)
    gg = tape.gradient(got, [x, scale] + scaled.trainable_weights)
    for a, b in zip(gg, gw):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_edge_ops_errors():
    with pytest.raises(SpaceError, match="even"):
        FusedEdgeOps(PRESETS["dcp"], 7, num_edges=2, stride=2)
    ops = FusedEdgeOps(PRESETS["dcp"], 8, num_edges=2)
    with pytest.raises(SpaceError, match="channels"):
        ops(tf.zeros([1, 4, 4, 6]), tf.fill([2, 8], 0.125))


def test_ste_sign_equals_larq():
    import larq as lq
    from tfbnas.space.ops import ste_sign

    x = tf.constant([-3.0, -1.0000001, -1.0, -0.5, -0.0, 0.0, 1e-9, 0.5, 1.0, 1.0000001, 3.0, np.nan])
    dy = tf.range(1.0, 13.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = ste_sign(x), lq.quantizers.ste_sign(x)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(tape.gradient(ours, x, output_gradients=dy).numpy(),
                                  tape.gradient(theirs, x, output_gradients=dy).numpy())
    assert set(ours.numpy()[:-1]) == {-1.0, 1.0}


def test_hard_tanh_gradient_equals_clip_by_value():
    from tfbnas.space.ops import hard_tanh

    x = tf.constant([-3.0, -1.0000001, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0000001, 3.0, np.nan, np.inf])
    dy = tf.range(1.0, 12.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = hard_tanh(x), tf.clip_by_value(x, -1.0, 1.0)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(tape.gradient(ours, x, output_gradients=dy).numpy(),
                                  tape.gradient(theirs, x, output_gradients=dy).numpy())


@pytest.mark.parametrize("binary", [True, False])
def test_fast_factorized_reduce_equals_plain(binary):
    from tfbnas.space.ops import FactorizedReduceOp

    plain, fast = FactorizedReduceOp(8), FactorizedReduceOp(8, fast=True)
    for size in (7, 8):
        x = tf.random.stateless_normal([2, size, size, 6], seed=(size, 3))
        plain(x)
        fast(x)
        for i, (a, b) in enumerate(zip(fast.op_weights(), plain.op_weights())):
            a.assign(tf.random.stateless_uniform(a.shape, seed=(i, size), minval=-1.0 if i % 5 == 0 else 0.5,
                                                 maxval=1.5))
            b.assign(a)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            got, want = fast(x, training=True, binary=binary), plain(x, training=True, binary=binary)
        assert_close(got, want, f"size {size}")
        for a, b in zip(tape.gradient(got, [x] + fast.trainable_weights),
                        tape.gradient(want, [x] + plain.trainable_weights)):
            assert_close(a, b, "gradient")


@pytest.mark.slow
def test_dcp_train_step_fused_equals_plain():
    """One whole dcp step (Parent phase, GGN micro-batches, decoupled correction, weight phase) updates
    the fused and the plain supernets alike."""
    from tfbnas.search.engine import SearchModel
    from tfbnas.search.strategies import make_strategy

    def engine(fused):
        nets = [SuperNet(num_classes=5, init_channels=4, num_cells=3, nodes=1, binary=binary, fused=fused,
                         name=name) for binary, name in ((True, "child"), (False, "parent"))]
        model = SearchModel(nets[0], make_strategy("dcp", 2, ggn_samples=2, ggn=True, kl_arch=True), nets[1])
        model.compile(*[optimizer() for _ in range(2) for optimizer in (
            lambda: tf.keras.optimizers.Adam(3e-4, beta_1=0.5), lambda: tf.keras.optimizers.SGD(0.025, momentum=0.9))])
        model.build_supernets(SHAPE)
        return model

    fused, plain = engine(True), engine(False)
    pairs = [pair for net in ("child", "parent")
             for pair in variable_pairs(getattr(fused, net), getattr(plain, net))]
    for p, f, index in pairs:
        p.assign(f[index])
    before = [p.numpy() for p, _, _ in pairs]
    rng = np.random.default_rng(3)
    batch = tuple((tf.constant(rng.normal(size=(4,) + SHAPE), tf.float32), tf.constant([0, 1, 2, 3]))
                  for _ in range(2))
    logs_f, logs_p = fused.train_step(batch), plain.train_step(batch)
    for key in ("loss", "arch_ce", "arch_kl", "tangent", "decoupled", "parent_ce"):
        assert_close(logs_f[key], logs_p[key], key)
    # Four sequential updates through sign() and the STE's |x| <= 1 window: the fused and plain convs sum in
    # different orders (oneDNN picks the algorithm per shape), so a last-bit difference can flip a sign or cross
    # the window for a few elements, and the next update carries it on (a step of ~lr = 0.025). So: all but a
    # handful of elements agree to 1e-3, against steps of ~1e-2; a wrong slice or op would differ everywhere.
    moved, largest_step, differ, total = 0, 0.0, 0, 0
    for (p, f, index), start in zip(pairs, before):
        a, b = np.asarray(f[index]), p.numpy()
        differ += int(np.sum(np.abs(a - b) > 1e-3 * max(1.0, float(np.abs(b).max()))))
        total += b.size
        moved += int(p.trainable and not np.array_equal(b, start))  # a trainable variable the step changed
        largest_step = max(largest_step, float(np.abs(b - start).max()))
    assert differ <= 0.002 * total, f"{differ} of {total} updated elements differ"
    assert moved > 100 and largest_step > 1e-2
