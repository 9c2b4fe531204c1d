"""The derived Child: Functional model, Parent twin, .keras files, training on Fashion-MNIST, LCE conversion."""

import collections

import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from conftest import trained_like
from tfbnas.models import build_child, build_parent, custom_objects, inherit_supernet_weights
from tfbnas.space import Genotype, SpaceError
from tfbnas.space.ops import NativeQuantConv2D, binary_conv_layers, lce_binary

# Every op of each preset appears in some cell, and reduction cells use stride-2 skip/dilated/grouped ops.
DCP = Genotype(
    "dcp", 4,
    normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
            ("max_pool_3x3", 1), ("dil_conv_5x5", 3), ("avg_pool_3x3", 0), ("sep_conv_3x3", 4)],
    reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 0), ("dil_conv_5x5", 2), ("skip_connect", 0), ("sep_conv_5x5", 1)],
)
BATS = Genotype(
    "bats", 2,
    normal=[("group_conv_3x3", 0), ("dil_group_conv_5x5", 1), ("skip_connect", 2), ("group_conv_5x5", 1)],
    reduce=[("dil_group_conv_3x3", 0), ("skip_connect", 1), ("group_conv_5x5", 0), ("max_pool_3x3", 2)],
)

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_counts(flatbuffer: bytes) -> collections.Counter:
    """Operator histogram of a TFLite flatbuffer (custom ops by their custom code, e.g. ``LceBconv2d``)."""
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        names.append(code.CustomCode().decode() if builtin == schema.BuiltinOperator.CUSTOM else _BUILTIN_NAMES[builtin])
    counts = collections.Counter()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for j in range(subgraph.OperatorsLength()):
            counts[names[subgraph.Operators(j).OpcodeIndex()]] += 1
    return counts


@pytest.fixture(scope="module")
def dcp_child():
    """The DCP genotype's Child at C=8, 3 cells, 28x28x1 (several tests read it; the conversion test gives it
    trained-like weights, which none of the others depends on)."""
    return build_child(DCP, num_classes=10, input_shape=(28, 28, 1), init_channels=8, num_cells=3)


def _images(shape, batch=4, seed=0):
    return tf.random.stateless_normal([batch, *shape], seed=(seed, 7)).numpy()


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)], ids=["fashion_mnist", "cifar"])
def test_build_child_shapes_and_widths(shape, request):
    child = (request.getfixturevalue("dcp_child") if shape == (28, 28, 1) else
             build_child(DCP, num_classes=10, input_shape=shape, init_channels=8, num_cells=3))
    assert child.output_shape == (None, 10)
    assert child(_images(shape)).shape == (4, 10)
    assert child.get_layer("stem_conv").filters == 24  # real-valued stem, stem_multiplier 3
    assert not isinstance(child.get_layer("classifier"), lq.layers.QuantDense)
    # Cells: normal (C), reduction (2C), reduction (4C); channels follow the width multipliers.
    narrow = build_child(DCP, input_shape=shape, init_channels=8, num_cells=3, widths=[0.5, 1.0, 0.75])
    assert [narrow.get_layer(f"cell{i}_pre1_qconv").filters for i in range(3)] == [4, 16, 24]
    assert narrow.count_params() < child.count_params()


def test_bad_widths_and_genotype_inputs(tmp_path, dcp_child):
    with pytest.raises(SpaceError, match="widths"):
        build_child(DCP, init_channels=8, num_cells=3, widths=[1.0, 1.0])
    with pytest.raises(SpaceError, match="widths"):
        build_child(DCP, init_channels=8, num_cells=3, widths=[1.0, -0.5, 1.0])
    with pytest.raises(SpaceError, match="genotype"):
        build_child(42)
    path = DCP.save(str(tmp_path / "genotype.json"))
    assert build_child(path, init_channels=8, num_cells=3).count_params() == dcp_child.count_params()


def test_parent_twin_shares_weight_shapes(dcp_child):
    child = dcp_child
    parent = build_parent(DCP, init_channels=8, num_cells=3)
    assert [w.shape for w in child.get_weights()] == [w.shape for w in parent.get_weights()]
    assert [type(layer) for layer in child.layers] == [type(layer) for layer in parent.layers]
    parent.set_weights(child.get_weights())
    binary = binary_conv_layers(child)
    assert binary and not binary_conv_layers(parent)
    assert all(layer.pad_values == 1.0 for layer in binary)
    x = _images((28, 28, 1))
    assert not np.allclose(child(x).numpy(), parent(x).numpy())


@pytest.mark.parametrize("genotype, binary", [(DCP, True), (BATS, False)], ids=["dcp-child", "bats-parent"])
def test_keras_file_round_trip(tmp_path, genotype, binary):
    model = build_child(genotype, input_shape=(32, 32, 3), init_channels=16, num_cells=3, binary=binary)
    x = _images((32, 32, 3))
    trained_like(model)
    path = str(tmp_path / "child.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects: tfbnas layers are registered
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
    assert [layer.__class__.__name__ for layer in loaded.layers] == [layer.__class__.__name__ for layer in model.layers]
    assert {"Subsample2D", "ShiftPixel", "HardTanh"} <= set(custom_objects())


@pytest.mark.slow
def test_a_saved_child_loads_after_import_tfbnas_alone(tmp_path):
    """As a user loads it: a fresh process, ``import tfbnas`` and nothing else from tfbnas."""
    import subprocess
    import sys

    model = build_child(BIREAL, input_shape=(28, 28, 1), init_channels=8, num_cells=3)
    x = _images((28, 28, 1))
    model.save(tmp_path / "child.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model(x, training=False).numpy())
    program = ("import numpy as np, sys, tfbnas, tensorflow as tf\n"
               "m = tf.keras.models.load_model(sys.argv[1] + '/child.keras')\n"
               "np.testing.assert_array_equal(m(np.load(sys.argv[1] + '/x.npy'), training=False).numpy(), "
               "np.load(sys.argv[1] + '/y.npy'))\n"
               "print('keras_tuner' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"  # keras-tuner (Keras 3) is not pulled in


@pytest.mark.slow
def test_child_trains_on_fashion_mnist(fashion_arrays):
    tf.keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = fashion_arrays

    def scale(images):
        return ((images.astype("float32") / 255.0) - 0.2860) / 0.3530

    child = build_child(DCP, num_classes=10, input_shape=(28, 28, 1), init_channels=8, num_cells=3)
    child.compile(tf.keras.optimizers.Adam(3e-3), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    # two passes: after one (63 steps) a 1-bit Child was at 0.23-0.62 over ten seeds, after two at 0.58-0.60
    # over three
    child.fit(scale(x_train[:1000]), y_train[:1000], batch_size=16, epochs=2, verbose=0)
    _, accuracy = child.evaluate(scale(x_test[:500]), y_test[:500], verbose=0)
    assert accuracy > 0.3, accuracy  # chance is 0.1


def _convert_and_count(model):
    flatbuffer = lce.convert_keras_model(model)
    return flatbuffer, op_counts(flatbuffer)


@pytest.mark.slow
def test_dcp_child_converts_every_binary_conv_to_lce_bconv(dcp_child):
    child = dcp_child
    trained_like(child)
    flatbuffer, counts = _convert_and_count(child)
    binary = binary_conv_layers(child)
    assert counts["LceBconv2d"] == len(binary) > 20
    assert counts["LceQuantize"] > 0
    # Float ops that remain are visible: one real-valued stem conv, the depthwise parts of separable convs
    # (cell 0 is a normal cell, cells 1 and 2 are reduction cells).
    sep_convs = {cell: sum(op.startswith("sep_conv") for op, _ in DCP.cell(cell)) for cell in ("normal", "reduce")}
    assert counts["CONV_2D"] == 1
    assert counts["DEPTHWISE_CONV_2D"] == sep_convs["normal"] + 2 * sep_convs["reduce"]
    # The flatbuffer computes what the Keras model computes.
    interpreter = lce.testing.Interpreter(flatbuffer, num_threads=1)
    x = _images((28, 28, 1), batch=4, seed=3)
    lite = np.concatenate([interpreter.predict(x[i:i + 1]) for i in range(len(x))])
    keras = child(x, training=False).numpy()
    assert np.array_equal(lite.argmax(1), keras.argmax(1))
    np.testing.assert_allclose(lite, keras, atol=1e-3 * np.max(np.abs(keras)))


@pytest.mark.slow
def test_bats_child_with_32_channels_per_group_converts_to_lce_bconv():
    child = build_child(BATS, input_shape=(16, 16, 3), init_channels=64, num_cells=3)
    grouped = [layer for layer in binary_conv_layers(child) if layer.groups > 1]
    assert {layer.groups for layer in grouped} >= {2, 4}  # 64 -> 2 groups, 128 -> 4 groups (32 channels each)
    assert all(layer.input_spec.axes[-1] // layer.groups == 32 for layer in grouped)
    _, counts = _convert_and_count(child)
    assert counts["LceBconv2d"] == len(binary_conv_layers(child))
    assert counts["CONV_2D"] == 1  # only the real-valued stem


@pytest.mark.slow
def test_bats_paper_groups_at_small_width_fall_back_to_float_conv():
    # BATS's fixed group count at C=16 leaves 2 channels per group: LCE emits a float CONV_2D instead.
    child = build_child(BATS, input_shape=(16, 16, 3), init_channels=16, num_cells=3, group_policy="paper")
    binary = binary_conv_layers(child)
    not_binary = [layer for layer in binary if not lce_binary(layer.input_spec.axes[-1], layer.groups)]
    assert not_binary
    _, counts = _convert_and_count(child)
    assert counts["LceBconv2d"] == len(binary) - len(not_binary)
    assert counts["CONV_2D"] == 1 + len(not_binary)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=5, dilation_rate=2), dict(kernel_size=3, groups=2),
                                    dict(kernel_size=3, strides=2), dict(kernel_size=1)],
                         ids=["dilated", "grouped", "strided", "pointwise"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "real"])
def test_native_quant_conv_equals_larq_quant_conv(kwargs, binary):
    quantizer = "ste_sign" if binary else None
    args = dict(filters=64, padding="same", pad_values=1.0 if binary else 0.0, use_bias=False,
                input_quantizer=quantizer, kernel_quantizer=quantizer, **kwargs)
    larq_conv, native = lq.layers.QuantConv2D(**args), NativeQuantConv2D(**args)
    x = tf.random.stateless_normal([2, 9, 9, 64], seed=(1, 2))
    larq_conv(x)
    native(x)
    native.set_weights(larq_conv.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        want, got = larq_conv(x), native(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    for a, b in zip(tape.gradient(got, [x, native.kernel]), tape.gradient(want, [x, larq_conv.kernel])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    assert NativeQuantConv2D.from_config(native.get_config()).get_config() == native.get_config()


@pytest.mark.slow
def test_dilated_convs_sharing_an_input_still_convert_to_lce_bconv():
    # Two edges with the same dilated op read the same state: Keras's space-to-batch form of a dilated
    # conv would share one SpaceToBatchND between them and LCE would emit float CONV_2Ds.
    cell = [("dil_conv_5x5", 0), ("dil_conv_5x5", 1), ("dil_conv_3x3", 0), ("dil_conv_3x3", 2)]
    genotype = Genotype("dcp", 2, normal=cell, reduce=cell)
    child = build_child(genotype, input_shape=(28, 28, 1), init_channels=8, num_cells=3)
    trained_like(child)
    flatbuffer, counts = _convert_and_count(child)
    assert counts["LceBconv2d"] == len(binary_conv_layers(child)) > 15
    assert counts["CONV_2D"] == 1 and "SPACE_TO_BATCH_ND" not in counts
    # The same model built from stock Larq layers converts alike (the converter rewrites them).
    from tfbnas.deploy.convert import convert_keras

    def stock(layer):
        config = layer.get_config()
        return (lq.layers.QuantConv2D if isinstance(layer, NativeQuantConv2D) else layer.__class__).from_config(config)

    larq_child = tf.keras.models.clone_model(child, clone_function=stock)
    larq_child.set_weights(child.get_weights())
    assert not any(isinstance(layer, NativeQuantConv2D) for layer in larq_child.layers)
    assert op_counts(convert_keras(larq_child))["LceBconv2d"] == counts["LceBconv2d"]


BIREAL = Genotype(
    "bireal", 1,
    normal=[("bireal_conv_3x3", 0), ("bireal_dil_conv_5x5", 1)],
    reduce=[("bireal_conv_5x5", 0), ("bireal_dil_conv_3x3", 1)],
)


BIREAL_2 = Genotype(
    "bireal", 2,
    normal=[("bireal_conv_3x3", 0), ("bireal_dil_conv_5x5", 1), ("max_pool_3x3", 0), ("bireal_conv_5x5", 2)],
    reduce=[("bireal_conv_5x5", 0), ("skip_connect", 1), ("bireal_dil_conv_3x3", 2), ("skip_connect", 0)],
)


def _selecting_supernet(genotype, shape, args, **kwargs):
    """A built supernet with random weights and BatchNorm statistics whose alphas select ``genotype`` (every
    other edge "none")."""
    from tfbnas.space import SuperNet, edge_index
    from tfbnas.space.ops import PRESETS

    supernet = SuperNet(nodes=genotype.nodes, preset=genotype.preset, **args, **kwargs)
    supernet(tf.zeros((1,) + shape))
    rng = np.random.default_rng(1)
    for v in supernet.weight_variables + [v for v in supernet.variables if "moving" in v.name]:
        low = 0.5 if ("gamma" in v.name or "variance" in v.name) else -1.0
        v.assign(rng.uniform(low, 1.5, v.shape).astype("float32"))
    ops = PRESETS[genotype.preset]
    for alphas, cell in ((supernet.alphas_normal, "normal"), (supernet.alphas_reduce, "reduce")):
        values = np.zeros(alphas.shape, np.float32)
        values[:, 0] = 40.0  # "none" everywhere ...
        edges = genotype.cell(cell)
        for node in range(genotype.nodes):  # ... except the kept edges
            for op, source in edges[2 * node:2 * node + 2]:
                row = edge_index(node, source)
                values[row] = 0.0
                values[row, ops.index(op)] = 40.0
        alphas.assign(values)
    return supernet


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("binary", [True, False], ids=["child", "parent"])
@pytest.mark.parametrize("genotype", [BIREAL, BIREAL_2], ids=["one-node", "two-nodes"])
def test_derived_network_with_inherited_weights_computes_the_supernet_with_the_genotype_selected(
        genotype, binary, fused):
    """The Child form of the real paths (op shortcuts, folded and normalised preprocessing inputs, strided
    max pool, nodes as means, the factorized reduce) computes what the supernet computes when its alphas
    select the genotype, once ``inherit_supernet_weights`` has copied the kept ops' weights; the Parent twin
    likewise from the real-valued supernet."""
    shape, args = (10, 10, 1), dict(num_classes=5, init_channels=8, num_cells=3)
    supernet = _selecting_supernet(genotype, shape, args, fused=fused, binary=binary)
    x = tf.random.stateless_normal((4,) + shape, seed=(3, 3))
    child = build_child(genotype, input_shape=shape, binary=binary, **args)
    want = supernet(x, training=False).numpy()
    assert np.abs(child(x, training=False).numpy() - want).max() > 1e-2  # not yet: its own initial weights
    assert inherit_supernet_weights(child, supernet, genotype) is child
    assert any(layer.name.endswith("_fold") for layer in child.layers)
    assert any(layer.name.endswith("_shortcut_pool") for layer in child.layers)
    np.testing.assert_allclose(child(x, training=False).numpy(), want, rtol=1e-4, atol=1e-4)


def test_inheritance_refuses_a_model_or_supernet_that_does_not_fit():
    from tfbnas.space import SuperNet

    shape, args = (10, 10, 1), dict(num_classes=5, init_channels=8, num_cells=3)
    supernet = _selecting_supernet(BIREAL, shape, args)
    with pytest.raises(SpaceError, match="num_cells=3"):
        inherit_supernet_weights(build_child(BIREAL, input_shape=shape, **{**args, "num_cells": 4}), supernet, BIREAL)
    with pytest.raises(SpaceError, match="build the model with the supernet's sizes"):
        inherit_supernet_weights(build_child(BIREAL, input_shape=shape, **{**args, "num_classes": 3}), supernet, BIREAL)
    with pytest.raises(SpaceError, match="weight shape"):
        inherit_supernet_weights(build_child(BIREAL, input_shape=shape, widths=[1, 0.5, 1], **args), supernet, BIREAL)
    with pytest.raises(SpaceError, match="not the derived network"):
        other = Genotype("bireal", 1, [("bireal_conv_5x5", 0)] + list(BIREAL.normal[1:]), BIREAL.reduce)
        inherit_supernet_weights(build_child(BIREAL, input_shape=shape, **args), supernet, other)
    partial = SuperNet(nodes=1, preset="bireal", partial_channels=2, **args)
    partial(tf.zeros((1,) + shape))
    with pytest.raises(SpaceError, match="partial_channels=2"):
        inherit_supernet_weights(build_child(BIREAL, input_shape=shape, **args), partial, BIREAL)


@pytest.mark.slow
def test_bireal_child_converts_every_binary_conv_to_lce_bconv(tmp_path):
    child = build_child(BIREAL, input_shape=(28, 28, 1), init_channels=8, num_cells=3)
    trained_like(child)
    counts = op_counts(lce.convert_keras_model(child))
    assert counts["LceBconv2d"] == len(binary_conv_layers(child)) > 0
    assert counts["CONV_2D"] == 1  # the real-valued stem only
    path = tmp_path / "child.keras"
    child.save(path)
    again = tf.keras.models.load_model(path)
    x = _images((28, 28, 1))
    np.testing.assert_allclose(again(x).numpy(), child(x).numpy(), rtol=1e-5, atol=1e-5)
