"""The Child's factorized reduce subsamples, then runs a stride-1 1x1 conv: the same values and gradients as the
stride-2 1x1 conv it replaces (whose training step on 56x56 maps crashes TensorFlow 2.18's oneDNN kernels)."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from conftest import trained_like
from tfbnas.space.ops import ShiftPixel, child_conv_bn, child_op

CHANNELS = 8


def _strided_form(x, binary, prefix="fr"):
    """The former Child layers: stride-2 1x1 convs on ``x`` and on ``ShiftPixel(x)``."""
    a, la = child_conv_bn(x, CHANNELS // 2, 1, 2, binary=binary, prefix=f"{prefix}_a")
    b, lb = child_conv_bn(ShiftPixel(name=f"{prefix}_shift")(x), CHANNELS // 2, 1, 2, binary=binary,
                          prefix=f"{prefix}_b")
    return tf.keras.layers.Concatenate(name=f"{prefix}_concat")([a, b]), la + lb


def _models(size, binary):
    inputs = tf.keras.Input((size, size, 6))
    y, layers = child_op("skip_connect", inputs, CHANNELS, 2, binary, prefix="fr")
    new = tf.keras.Model(inputs, y)
    y, old_layers = _strided_form(inputs, binary)
    old = tf.keras.Model(inputs, y)
    assert [layer.name for layer in layers] == [layer.name for layer in old_layers]
    assert [w.shape for w in new.weights] == [w.shape for w in old.weights]
    trained_like(new)
    old.set_weights(new.get_weights())
    return new, old


def _value_and_gradients(model, x, probe):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=True)
        loss = tf.reduce_sum(y * probe)
    return [y] + tape.gradient(loss, [x] + model.trainable_weights)


@pytest.mark.parametrize("size", [8, 7], ids=["even", "odd"])
@pytest.mark.parametrize("binary", [True, False], ids=["child", "parent"])
def test_subsampled_factorized_reduce_equals_the_strided_conv(size, binary):
    new, old = _models(size, binary)
    convs = [layer for layer in new.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert len(convs) == 2 and all(conv.strides == (1, 1) for conv in convs)
    assert [layer.__class__.__name__ for layer in new.layers].count("Subsample2D") == 2
    x = tf.random.stateless_normal([2, size, size, 6], seed=(size, 1))
    out = (size + 1) // 2
    assert new(x, training=False).shape == (2, out, out, CHANNELS)
    np.testing.assert_allclose(new(x, training=False).numpy(), old(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
    probe = tf.random.stateless_normal([2, out, out, CHANNELS], seed=(size, 2))
    got, want = _value_and_gradients(new, x, probe), _value_and_gradients(old, x, probe)
    assert len(got) == len(want) == 2 + len(new.trainable_weights)  # output, input gradient, weight gradients
    for g, w in zip(got, want):
        assert float(tf.reduce_max(tf.abs(w))) > 0
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
