"""The op table: presets, group counts, and supernet form == Child form for every op."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from tfbnas.space import ops
from tfbnas.space.ops import (OPS, PARAM_FREE_OPS, PRESETS, SpaceError, child_op, group_count, make_search_op,
                              transfer_weights)

ALL_OPS = sorted({name for names in PRESETS.values() for name in names} - {"none"})


def test_presets_follow_the_papers():
    assert PRESETS["dcp"] == ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
                              "dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "sep_conv_5x5")
    assert set(PRESETS["bats"]) == {"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "group_conv_3x3",
                                    "group_conv_5x5", "dil_group_conv_3x3", "dil_group_conv_5x5"}
    assert PARAM_FREE_OPS == {"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"}
    for names in PRESETS.values():
        assert set(names) <= set(OPS)
    assert OPS["dil_conv_5x5"].dilation == 2 and OPS["dil_group_conv_3x3"].dilation == 2
    assert OPS["group_conv_3x3"].grouped and not OPS["dil_conv_3x3"].grouped


def test_preset_lookup_error_names_the_fix():
    with pytest.raises(SpaceError, match="preset='darts'.*dcp"):
        ops.preset_ops("darts")


@pytest.mark.parametrize("channels, policy, expected", [
    (16, "lce", 1), (48, "lce", 1), (64, "lce", 2), (96, "lce", 3), (128, "lce", 4), (384, "lce", 12),
    (768, "lce", 12), (36, "paper", 12), (16, "paper", 8), (384, "paper", 12), (64, 4, 4),
])
def test_group_count(channels, policy, expected):
    groups = group_count(channels, policy)
    assert groups == expected
    assert channels % groups == 0
    if policy == "lce":
        assert ops.lce_binary(channels, groups)


def test_group_policy_errors():
    with pytest.raises(SpaceError, match="group_policy"):
        group_count(64, "fast")
    with pytest.raises(SpaceError, match="does not divide"):
        group_count(64, 3)


def _randomize(op):
    """Random latent weights in [-1, 1] and random BatchNorm statistics, so the comparison means something."""
    rng = np.random.default_rng(0)
    for v in op.op_weights():
        shape = v.shape.as_list()
        if "moving_variance" in v.name:
            v.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif "gamma" in v.name:
            v.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        else:
            v.assign(rng.uniform(-1.0, 1.0, shape).astype("float32"))


@pytest.mark.parametrize("binary", [True, False], ids=["child", "parent"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ALL_OPS)
def test_supernet_op_equals_child_op(name, stride, binary):
    # 64 channels: the grouped convs really are grouped (2 groups of 32 under the "lce" policy).
    channels, size = 64, 7
    x = tf.random.stateless_normal([2, size, size, channels], seed=(1, 2))
    search = make_search_op(name, channels, stride, binary=binary)
    search(x)  # build
    _randomize(search)
    inputs = tf.keras.Input((size, size, channels))
    y, layers = child_op(name, inputs, channels, stride, binary=binary, prefix="op")
    child = tf.keras.Model(inputs, y)
    transfer_weights(search, layers)
    want = child(x, training=False).numpy()
    got = search(x, training=False).numpy()
    assert got.shape == want.shape == (2, -(-size // stride), -(-size // stride), channels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # In training mode too (BatchNorm on batch statistics): each BatchNorm normalises the same outputs, also
    # a strided dilated conv's, whose Child keeps the pixels the conv reads before convolving them.
    np.testing.assert_allclose(search(x, training=True).numpy(), child(x, training=True).numpy(), rtol=1e-4,
                               atol=1e-4)
    if binary and OPS[name].kind == "conv":
        # A binary conv's pre-BN output is an integer: the child really is 1-bit.
        conv = layers[0]
        pre_bn = tf.keras.Model(inputs, conv.output)(x).numpy()
        np.testing.assert_array_equal(pre_bn, np.round(pre_bn))


def test_grouped_op_uses_grouped_kernel():
    op = make_search_op("group_conv_3x3", 128, 1)
    op(tf.zeros([1, 4, 4, 128]))
    assert op.conv.kernel.shape == (3, 3, 32, 128)  # 4 groups of 32 input channels
    inputs = tf.keras.Input((4, 4, 128))
    _, layers = child_op("group_conv_3x3", inputs, 128, 1)
    assert layers[0].groups == 4 and tuple(layers[0].kernel.shape) == (3, 3, 32, 128)


def test_binary_ops_train_latent_weights_through_ste():
    op = make_search_op("dil_conv_3x3", 16, 1)
    x = tf.random.stateless_normal([2, 6, 6, 16], seed=(3, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(op(x, training=True) ** 2)
    grads = tape.gradient(loss, op.trainable_variables)
    assert all(g is not None for g in grads)
    assert float(tf.reduce_sum(tf.abs(grads[0]))) > 0.0
    assert isinstance(op.conv.kernel.constraint, lq.constraints.WeightClip)


def test_both_modes_share_the_same_variables():
    op = make_search_op("sep_conv_5x5", 16, 2)
    x = tf.random.stateless_normal([2, 8, 8, 16], seed=(5, 6))
    child = op(x, binary=True)
    refs = [v.ref() for v in op.variables]
    parent = op(x, binary=False)
    assert [v.ref() for v in op.variables] == refs
    assert not np.allclose(child.numpy(), parent.numpy())


def test_edge_input_binarised_once_and_shared():
    op = make_search_op("dil_conv_5x5", 8, 1)
    x = tf.random.stateless_normal([1, 6, 6, 8], seed=(7, 8))
    shared = ops.quantize_input(x, True)
    np.testing.assert_array_equal(op(x, quantized=shared).numpy(), op(x).numpy())
    assert set(np.unique(shared.numpy())) <= {-1.0, 1.0}


def test_zero_op_and_unknown_ops():
    assert make_search_op("none", 8) is None
    inputs = tf.keras.Input((4, 4, 8))
    with pytest.raises(SpaceError, match="none"):
        child_op("none", inputs, 8)
    with pytest.raises(SpaceError, match="unknown"):
        make_search_op("conv_7x7", 8)


def test_transfer_weights_rejects_mismatched_ops():
    search = make_search_op("dil_conv_3x3", 8, 1)
    search(tf.zeros([1, 4, 4, 8]))
    _, layers = child_op("sep_conv_3x3", tf.keras.Input((4, 4, 8)), 8, 1)
    with pytest.raises(SpaceError, match="weights"):
        transfer_weights(search, layers)


def test_factorized_reduce_needs_even_channels():
    with pytest.raises(SpaceError, match="even"):
        make_search_op("skip_connect", 7, 2)


@pytest.mark.parametrize("cin, channels", [(24, 8), (20, 8), (8, 8), (48, 16)])
def test_fold_channels_is_the_mean_of_zero_padded_slices(cin, channels):
    """Values against a numpy reference; gradient: channel i*C + c of the input gets w[c] / k."""
    from tfbnas.space.ops import fold_channels

    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, 6, cin).astype(np.float32)
    k = -(-cin // channels)
    padded = np.concatenate([x, np.zeros((2, 5, 6, k * channels - cin), np.float32)], axis=-1)
    expected = np.mean([padded[..., i * channels:(i + 1) * channels] for i in range(k)], axis=0)
    w = rng.randn(channels).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fold_channels(xt, channels)
        loss = tf.reduce_sum(y * w)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)
    grad = tape.gradient(loss, xt).numpy()
    np.testing.assert_allclose(grad, np.broadcast_to(np.tile(w / k, k)[:cin], x.shape), rtol=1e-6)
