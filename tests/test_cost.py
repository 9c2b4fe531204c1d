"""Tests of tfbnas.cost: hand-counted costs, larq cross-check, nesting, uncounted layers."""

import json
import math
import warnings

import larq as lq
import pytest
import tensorflow as tf

from tfbnas import cost
from tfbnas.cost import CostModelError, UncountedLayerWarning, conv_macs, model_cost

BINARY = dict(
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    use_bias=False,
)


def _rows(report):
    return {row.name: row for row in report.layers}


def _hand_model():
    """28x28x1 -> real stem -> BN -> binary strided conv -> BN -> binary dilated grouped conv
    -> BN -> real depthwise -> max pool -> global avg pool -> dense."""
    x = tf.keras.Input((28, 28, 1))
    y = tf.keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)
    y = tf.keras.layers.BatchNormalization(name="bn0")(y)
    y = lq.layers.QuantConv2D(
        32, 3, strides=2, padding="same", pad_values=1.0, name="bconv_strided", **BINARY
    )(y)
    y = tf.keras.layers.BatchNormalization(name="bn1")(y)
    y = lq.layers.QuantConv2D(
        32, 3, dilation_rate=2, groups=2, padding="same", name="bconv_grouped", **BINARY
    )(y)
    y = tf.keras.layers.BatchNormalization(name="bn2")(y)
    y = tf.keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = tf.keras.layers.MaxPool2D(2, name="pool")(y)
    y = tf.keras.layers.GlobalAveragePooling2D(name="gap")(y)
    y = tf.keras.layers.Dense(10, name="fc")(y)
    return tf.keras.Model(x, y, name="hand")


def test_conv_macs_helpers():
    assert conv_macs(3, 16, 16, 14) == 3 * 3 * 16 * 16 * 14 * 14
    assert conv_macs((3, 5), 16, 32, (14, 7), groups=4) == 3 * 5 * (16 // 4) * 32 * 14 * 7
    assert conv_macs((3,), 8, 8, (20,)) == 3 * 8 * 8 * 20
    assert cost.depthwise_macs(5, 32, 7, depth_multiplier=2) == 5 * 5 * 32 * 2 * 7 * 7
    assert cost.dense_macs(128, 10, positions=3) == 128 * 10 * 3
    assert cost.total_ops(6400, 10) == 6400 / 64 + 10
    with pytest.raises(CostModelError, match="groups=3"):
        conv_macs(3, 16, 16, 14, groups=3)
    with pytest.raises(CostModelError, match="kernel_size"):
        conv_macs((3, 3, 3), 16, 16, (14, 14))


def test_hand_counted_model():
    report = model_cost(_hand_model())
    rows = _rows(report)

    # Shapes: stem 28x28x16; strided binary conv 14x14x32; everything after stays 14x14x32
    # until the 2x2 max pool (7x7x32); global pool -> 32; dense -> 10.
    stem_flops = 3 * 3 * 1 * 16 * 28 * 28
    strided_bops = 3 * 3 * 16 * 32 * 14 * 14
    grouped_bops = 3 * 3 * (32 // 2) * 32 * 14 * 14  # dilation changes only the receptive field
    dw_flops = 3 * 3 * 32 * 14 * 14
    fc_flops = 32 * 10

    assert rows["stem"].flops == stem_flops and rows["stem"].bops == 0
    assert rows["bconv_strided"].bops == strided_bops and rows["bconv_strided"].flops == 0
    assert rows["bconv_grouped"].bops == grouped_bops and rows["bconv_grouped"].flops == 0
    assert rows["dw"].flops == dw_flops and rows["dw"].bops == 0
    assert rows["fc"].flops == fc_flops
    assert report.bops == strided_bops + grouped_bops
    assert report.flops == stem_flops + dw_flops + fc_flops
    assert report.ops == (strided_bops + grouped_bops) / 64 + stem_flops + dw_flops + fc_flops

    # Parameters: binary = latent kernels of the two binary convs; BN = 2 per channel (folded).
    binary_params = 3 * 3 * 16 * 32 + 3 * 3 * (32 // 2) * 32
    real_params = (
        3 * 3 * 1 * 16  # stem kernel
        + 2 * 16 + 2 * 32 + 2 * 32  # bn0, bn1, bn2
        + 3 * 3 * 32 + 32  # depthwise kernel + bias
        + 32 * 10 + 10  # dense kernel + bias
    )
    assert rows["bconv_strided"].binary_params == 3 * 3 * 16 * 32
    assert rows["bconv_strided"].real_params == 0
    assert rows["bn1"].real_params == 2 * 32
    assert report.binary_params == binary_params
    assert report.real_params == real_params
    assert report.memory_bytes == (binary_params * 1 + real_params * 32) / 8

    # Minor ops, per output element unless noted.
    assert rows["bn0"].minor_ops == 28 * 28 * 16
    assert rows["bconv_strided"].minor_ops == 28 * 28 * 16  # sign of each input element
    assert rows["dw"].minor_ops == 14 * 14 * 32  # bias add
    assert rows["pool"].minor_ops == 2 * 2 * 7 * 7 * 32
    assert rows["gap"].minor_ops == 7 * 7 * 32  # one accumulate per input element
    assert rows["fc"].minor_ops == 10
    assert report.minor_ops == sum(row.minor_ops for row in report.layers)
    assert report.minor_ops not in (0, None) and report.ops == report.bops / 64 + report.flops

    # LCE keeps the ungrouped binary conv binary; 16 input channels per group is not a multiple
    # of 32, so the grouped one runs as a float conv after conversion.
    assert rows["bconv_strided"].lce_binary is True
    assert rows["bconv_grouped"].lce_binary is False
    assert report.lce_float_bops == grouped_bops
    assert report.lce_ops == strided_bops / 64 + stem_flops + dw_flops + fc_flops + grouped_bops
    assert report.complete and report.uncounted == ()


def _larq_layer_profiles(profile, prefix=""):
    out = {}
    for lp in profile.layer_profiles:
        if isinstance(lp, lq.models.ModelProfile):
            out.update(_larq_layer_profiles(lp, prefix + lp.name + "/"))
        else:
            out[prefix + lp.name] = lp
    return out


def _crosscheck_model():
    """Covers what larq profiles: binary convs, a binary dense, a binary-input real-kernel conv,
    float, grouped, separable and depthwise convs, BN, and a nested Sequential."""
    x = tf.keras.Input((16, 16, 3))
    y = tf.keras.layers.Conv2D(32, 3, strides=2, name="stem")(x)
    y = tf.keras.layers.BatchNormalization(scale=False, name="bn_noscale")(y)
    y = lq.layers.QuantConv2D(32, 3, padding="same", name="bconv", **BINARY)(y)
    y = lq.layers.QuantConv2D(
        64, 1, groups=2, name="bconv_grouped", **{**BINARY, "use_bias": True}
    )(y)
    y = lq.layers.QuantConv2D(
        32, 3, input_quantizer="ste_sign", kernel_quantizer=None, name="binput_realkernel"
    )(y)
    block = tf.keras.Sequential(
        [
            tf.keras.Input(y.shape[1:]),
            tf.keras.layers.SeparableConv2D(16, 3, padding="same", name="sep"),
            tf.keras.layers.Conv2D(16, 3, groups=4, name="conv_g4"),
            tf.keras.layers.BatchNormalization(name="bn_inner"),
        ],
        name="block",
    )
    y = block(y)
    y = tf.keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)
    y = tf.keras.layers.Flatten(name="flat")(y)
    y = lq.layers.QuantDense(20, name="bdense", **BINARY)(y)
    y = tf.keras.layers.Dense(10, name="fc")(y)
    return tf.keras.Model(x, y, name="crosscheck")


@pytest.mark.parametrize("builder", [_crosscheck_model, _hand_model])
def test_agrees_with_larq_model_profile(builder):
    model = builder()
    report = model_cost(model)
    profile = lq.models.ModelProfile(model)

    # Totals: parameter counts per bit width, memory (bits) and MACs per precision.
    assert report.binary_params == profile.weight_count(bitwidth=1)
    assert report.real_params == profile.weight_count(bitwidth=32)
    assert report.params == profile.weight_count()
    assert report.memory_bits == profile.memory
    assert report.bops == profile.op_count("mac", 1)
    assert report.flops == profile.op_count("mac", 32)
    assert report.bops > 0 and report.flops > 0

    # Per layer, wherever larq computes a MAC count.
    larq_layers = _larq_layer_profiles(profile)
    rows = _rows(report)
    checked = 0
    for name, lp in larq_layers.items():
        if lp.weight_count() == 0 and lp.op_count("mac") is None:
            continue  # input layers and layers larq does not profile
        row = rows[name]
        assert (row.binary_params, row.real_params) == (lp.weight_count(1), lp.weight_count(32))
        assert row.memory_bits == lp.memory, name
        if lp.op_count("mac") is not None:
            assert row.bops == lp.op_count("mac", 1), name
            assert row.flops == lp.op_count("mac", 32), name
            checked += 1
    assert checked >= 8


def test_real_input_binary_kernel_counts_as_flops():
    x = tf.keras.Input((8, 8, 16))
    y = lq.layers.QuantConv2D(
        16, 3, padding="same", input_quantizer=None, kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False, name="realin",
    )(x)
    y = lq.layers.QuantConv2D(16, 3, padding="same", name="bin", **BINARY)(y)
    y = lq.layers.QuantDepthwiseConv2D(
        3, padding="same", input_quantizer="ste_sign", depthwise_quantizer="ste_sign",
        use_bias=False, name="bdw",
    )(y)
    model = tf.keras.Model(x, y)
    rows = _rows(model_cost(model))
    macs = 3 * 3 * 16 * 16 * 8 * 8

    realin = rows["realin"]
    assert (realin.bops, realin.flops) == (0, macs)
    assert realin.binary_params == 0 and realin.real_params == 3 * 3 * 16 * 16
    assert "real input" in realin.note
    assert (rows["bin"].bops, rows["bin"].flops) == (macs, 0)
    # A binary depthwise conv is real arithmetic here (LCE runs it in float).
    assert (rows["bdw"].bops, rows["bdw"].flops) == (0, 3 * 3 * 16 * 8 * 8)

    # larq agrees on the MAC precision but stores the ±1 kernel as 1 bit; tfbnas counts it as
    # 32-bit because a real-input layer is deployed as a float conv.
    larq = _larq_layer_profiles(lq.models.ModelProfile(model))
    assert larq["realin"].op_count("mac", 32) == macs
    assert larq["realin"].weight_count(1) == 3 * 3 * 16 * 16


def test_larq_sign_functions_count_as_binary():
    x = tf.keras.Input((6, 6, 8))
    y = lq.layers.QuantConv2D(
        8, 3, input_quantizer=lq.quantizers.ste_sign, kernel_quantizer=lq.quantizers.approx_sign,
        use_bias=False, name="fn_quant",
    )(x)
    y = lq.layers.QuantConv2D(
        8, 3, input_quantizer="swish_sign", kernel_quantizer="magnitude_aware_sign",
        use_bias=False, name="obj_quant",
    )(y)
    rows = _rows(model_cost(tf.keras.Model(x, y)))
    assert rows["fn_quant"].bops == 3 * 3 * 8 * 8 * 4 * 4
    assert rows["fn_quant"].binary_params == 3 * 3 * 8 * 8
    assert rows["obj_quant"].bops == 3 * 3 * 8 * 8 * 2 * 2


def test_nested_models_are_flattened_and_shared_calls_counted():
    inner = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 4)),
            lq.layers.QuantConv2D(4, 3, padding="same", name="bconv", **BINARY),
            tf.keras.layers.BatchNormalization(name="bn"),
        ],
        name="inner",
    )
    mid_in = tf.keras.Input((8, 8, 4))
    mid_out = tf.keras.layers.Add(name="add")([inner(mid_in), mid_in])
    mid = tf.keras.Model(mid_in, mid_out, name="mid")

    x = tf.keras.Input((8, 8, 4))
    y = mid(mid(x))  # the same nested block twice, sharing weights
    y = tf.keras.layers.Conv2D(2, 1, name="head")(y)
    outer = tf.keras.Sequential([tf.keras.Input((8, 8, 4)), tf.keras.Model(x, y, name="body")])
    report = model_cost(outer)
    rows = _rows(report)

    assert set(rows) == {"body/mid/inner/bconv", "body/mid/inner/bn", "body/mid/add", "body/head"}
    bconv = rows["body/mid/inner/bconv"]
    assert bconv.calls == 2
    assert bconv.bops == 2 * (3 * 3 * 4 * 4 * 8 * 8)
    assert bconv.binary_params == 3 * 3 * 4 * 4  # shared weights counted once
    assert rows["body/mid/add"].minor_ops == 2 * (8 * 8 * 4)
    assert rows["body/head"].flops == 4 * 2 * 8 * 8
    for field in ("binary_params", "real_params", "bops", "flops", "minor_ops", "memory_bits"):
        assert getattr(report, field) == sum(getattr(row, field) for row in report.layers)


class _Mystery(tf.keras.layers.Layer):
    """A layer type the cost model has no rule for."""

    def build(self, input_shape):
        self.w = self.add_weight("w", shape=(input_shape[-1], 3))

    def call(self, x):
        return tf.tensordot(x, self.w, axes=1)


def _mystery_model():
    x = tf.keras.Input((5, 5, 4))
    y = tf.keras.layers.Conv2D(4, 1, name="conv")(x)
    y = _Mystery(name="mystery")(y)
    return tf.keras.Model(x, y, name="with_mystery")


def test_unknown_layer_is_listed_as_uncounted_with_a_warning():
    with pytest.warns(UncountedLayerWarning, match="mystery"):
        report = model_cost(_mystery_model())
    row = _rows(report)["mystery"]
    assert row.bops is None and row.flops is None and row.minor_ops is None and not row.counted
    assert row.real_params == 4 * 3  # its weights still count
    assert report.uncounted == ("mystery",)
    assert not report.complete
    assert report.flops == 4 * 4 * 5 * 5  # only the conv
    assert report.real_params == 4 * 4 + 4 + 4 * 3
    assert "UNCOUNTED" in report.summary_line()
    assert "Uncounted layers" in report.to_markdown() and "| ? |" in report.to_markdown()
    assert json.loads(report.to_json())["uncounted"] == ["mystery"]

    with pytest.raises(CostModelError, match="register_layer_cost"):
        model_cost(_mystery_model(), strict=True)


def test_registered_cost_function_counts_custom_layer():
    class _Counted(_Mystery):
        pass

    @cost.register_layer_cost(_Counted)
    def _counted_cost(layer, input_shapes, output_shapes):
        return cost.OpCount(flops=math.prod(input_shapes[0][1:]) * 3)

    x = tf.keras.Input((5, 5, 4))
    y = _Counted(name="counted")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedLayerWarning)
        report = model_cost(tf.keras.Model(x, y))
    assert report.flops == 5 * 5 * 4 * 3 and report.complete
    with pytest.raises(CostModelError, match="Layer class"):
        cost.register_layer_cost(int)


def test_tf_ops_in_functional_models():
    x = tf.keras.Input((4, 4, 2))
    a = tf.keras.layers.Conv2D(2, 1, use_bias=False, name="a")(x)
    y = tf.concat([a + x, tf.nn.relu(x)], axis=-1)
    report = model_cost(tf.keras.Model(x, y))
    assert report.complete
    # a + x and relu(x): one op per output element each; concat is free.
    assert report.minor_ops == 4 * 4 * 2 + 4 * 4 * 2
    assert report.flops == 2 * 2 * 4 * 4


def test_bad_models_raise_clear_errors():
    with pytest.raises(CostModelError, match="tf.keras.Model"):
        model_cost(tf.keras.layers.Dense(3))
    with pytest.raises(CostModelError, match="not a built"):
        model_cost(tf.keras.Sequential([tf.keras.layers.Dense(3)]))
    x = tf.keras.Input((None, None, 3))
    y = tf.keras.layers.Conv2D(4, 3, name="conv")(x)
    with pytest.raises(CostModelError, match="fixed input shape"):
        model_cost(tf.keras.Model(x, y))


def test_report_serialisation():
    report = model_cost(_hand_model())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["bops"] == report.bops
    assert data["totals"]["ops"] == pytest.approx(report.ops)
    assert len(data["layers"]) == len(report.layers)
    assert data["layers"][0]["output_shape"] == [None, 28, 28, 16]
    assert "bops / 64 + flops" in data["conventions"]["ops"]
    md = report.to_markdown()
    assert f"| BOPs (binary MACs) | {report.bops:,} |" in md
    assert md.count("\n| ") >= len(report.layers) + 7
    line = report.summary_line()
    assert line.startswith("hand: OPs") and "binary" in line and "real" in line


def test_other_conv_kinds():
    x = tf.keras.Input((12, 12, 8))
    y = tf.keras.layers.SeparableConv2D(
        16, 3, strides=2, depth_multiplier=2, use_bias=False, name="sep"
    )(x)  # 5x5 output
    y = tf.keras.layers.Conv2DTranspose(4, 3, strides=2, use_bias=False, name="tconv")(y)
    y = tf.keras.layers.Reshape((11 * 11, 4))(y)
    y = lq.layers.QuantConv1D(6, 5, name="bconv1d", **BINARY)(y)  # 117 positions
    y = tf.keras.layers.Dense(3, name="fc_seq")(y)  # dense applied at each of 117 positions
    rows = _rows(model_cost(tf.keras.Model(x, y)))
    assert rows["sep"].flops == 3 * 3 * 8 * 2 * 5 * 5 + 8 * 2 * 16 * 5 * 5
    assert rows["tconv"].output_shape == (None, 11, 11, 4)
    assert rows["tconv"].flops == 3 * 3 * 16 * 4 * 5 * 5  # each input pixel scatters a kernel
    assert rows["bconv1d"].bops == 5 * 4 * 6 * 117 and rows["bconv1d"].lce_binary is False
    assert rows["fc_seq"].flops == 6 * 3 * 117


def _tiny_genotype():
    from tfbnas.space.genotype import Genotype

    return Genotype(
        "dcp",
        2,
        normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
        reduce=[("max_pool_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("sep_conv_5x5", 2)],
    )


def test_child_model_cost():
    from tfbnas import models
    kwargs = dict(input_shape=(16, 16, 1), init_channels=8, num_cells=3)
    child = models.build_child(_tiny_genotype(), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedLayerWarning)
        report = model_cost(child)
    assert report.complete
    # The reduction cells' strided dilated conv and factorized reduce use tfbnas's data-movement
    # layers; they are counted (as free), not left uncounted.
    assert {"Subsample2D", "ShiftPixel"} <= {row.class_name for row in report.layers}
    for field in ("binary_params", "real_params", "bops", "flops", "minor_ops", "memory_bits"):
        assert getattr(report, field) == sum(getattr(row, field) for row in report.layers)
    assert report.bops > 0 and report.flops > 0

    rows = _rows(report)
    quant_convs = [layer for layer in child.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert quant_convs
    for layer in quant_convs:
        row = rows[layer.name]
        _, h, w, _ = layer.output_shape
        cin = layer.input_shape[-1]
        expected = conv_macs(layer.kernel_size, cin, layer.filters, (h, w), layer.groups)
        assert layer.input_quantizer.precision == 1 and layer.kernel.precision == 1
        assert (row.bops, row.flops) == (expected, 0), layer.name
        assert row.binary_params == math.prod(layer.kernel.shape) and row.real_params == 0

    # Every real MAC sits in the stem, the depthwise convs and the classifier.
    real_mac_layers = (
        tf.keras.layers.DepthwiseConv2D, tf.keras.layers.Dense, tf.keras.layers.Conv2D
    )
    assert report.flops == sum(
        rows[layer.name].flops
        for layer in child.layers
        if isinstance(layer, real_mac_layers) and not isinstance(layer, lq.layers.QuantConv2D)
    )

    # larq agrees on the Child, and the real-valued Parent twin does the same MACs in float.
    profile = lq.models.ModelProfile(child)
    assert (report.binary_params, report.real_params) == (
        profile.weight_count(1), profile.weight_count(32)
    )
    assert (report.bops, report.flops) == (profile.op_count("mac", 1), profile.op_count("mac", 32))
    parent = model_cost(models.build_parent(_tiny_genotype(), **kwargs))
    assert parent.bops == 0 and parent.binary_params == 0
    assert parent.flops == report.flops + report.bops
    assert parent.params == report.params
