"""``tfbnas.quantizers``: the one rule for which quantizers are 1-bit, and the users that must agree with it."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from tfbnas.cost import model_cost
from tfbnas.deploy.convert import binarization_issues, expected_binary_convs
from tfbnas.quantizers import HardTanh, is_sign_quantizer, quantizer_bits
from tfbnas.space.ops import binary_conv_layers

# (quantizer in one of the forms larq accepts, bits of its output, whether LCE bit-packs it)
CASES = [
    (None, 32, False),
    ("ste_sign", 1, True),
    ("SteSign", 1, True),
    (lq.quantizers.SteSign(), 1, True),
    (lq.quantizers.ste_sign, 1, True),
    (lq.math.sign, 1, True),
    (lq.quantizers.ApproxSign(), 1, True),
    ("swish_sign", 1, True),
    (lq.quantizers.MagnitudeAwareSign(), 1, True),
    ({"class_name": "SteSign", "config": {}}, 1, True),
    ("ste_heaviside", 1, False),
    (lq.quantizers.SteHeaviside(), 1, False),
    (lq.quantizers.NoOp(precision=1), 1, False),
    (lq.quantizers.SteTern(), 2, False),
    (HardTanh(), 32, False),
    ("hard_tanh", 32, False),
]


def _case_id(value):
    """A test id that is the same in every process (pytest-xdist compares them): no object addresses."""
    if callable(value) and not isinstance(value, type) and hasattr(value, "__name__"):
        return f"function:{value.__name__}"
    if not isinstance(value, (str, int, float, bool, dict, type(None))):
        return type(value).__name__
    return repr(value)[:40]


@pytest.mark.parametrize("quantizer,bits,sign", CASES, ids=_case_id)
def test_bits_and_sign_of_every_form(quantizer, bits, sign):
    assert quantizer_bits(quantizer) == bits
    assert is_sign_quantizer(quantizer) is sign


def _conv_model(input_quantizer, kernel_quantizer):
    x = tf.keras.Input((8, 8, 32))
    y = lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0, use_bias=False, input_quantizer=input_quantizer,
                              kernel_quantizer=kernel_quantizer, kernel_constraint="weight_clip")(x)
    return tf.keras.Model(x, y)


@pytest.mark.parametrize("quantizer", ["ste_sign", "approx_sign", "ste_heaviside"])
def test_cost_model_converter_and_space_agree_on_a_conv(quantizer):
    """The cost model counts any 1-bit conv as binary; the converter, the Child's conv list and the recipe
    count only the {-1, +1} ones that LCE bit-packs (an ste_heaviside conv deploys as a float conv)."""
    model = _conv_model(quantizer, quantizer)
    cost = model_cost(model)
    assert cost.binary_params == 3 * 3 * 32 * 32  # 1-bit weights either way
    packs = quantizer != "ste_heaviside"
    assert expected_binary_convs(model) == int(packs)
    assert len(binary_conv_layers(model)) == int(packs)
    assert binarization_issues(model) == []


def test_a_half_binary_conv_is_one_issue_for_the_converter():
    issues = binarization_issues(_conv_model(None, "ste_sign"))
    assert len(issues) == 1 and "binary kernel but no binary input quantizer" in issues[0].problem


def test_hard_tanh_is_a_larq_quantizer_name_and_round_trips(tmp_path):
    model = _conv_model("hard_tanh", None)
    layer = model.layers[-1]
    assert isinstance(layer.input_quantizer, HardTanh)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 32)).astype("float32") * 3
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded.layers[-1].input_quantizer, HardTanh)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
