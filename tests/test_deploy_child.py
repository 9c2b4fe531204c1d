"""Deploying searched Childs: a derived Child and its DNAL-pruned width variant, both trained on real
Fashion-MNIST, become flatbuffers whose every binary conv is an ``LceBconv2d`` and whose top-1 agrees
with Keras on 256 real test images."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfbnas import data
from tfbnas.deploy import convert as dc, flatbuffer as fbs
from tfbnas.models import build_child
from tfbnas.space import Genotype
from tfbnas.space.ops import binary_conv_layers
from tfbnas.width import dnal

# Every dcp op; two same-shape dilated convs read one state (the case Keras's dilated form breaks).
GENOTYPE = Genotype(
    "dcp", 2,
    normal=[("dil_conv_3x3", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2)],
    reduce=[("max_pool_3x3", 0), ("dil_conv_5x5", 1), ("avg_pool_3x3", 2), ("skip_connect", 1)],
)


@pytest.fixture(scope="module")
def fashion(fashion_arrays):
    (x, y), _ = fashion_arrays
    info = data.dataset_info("fashion_mnist")
    return data.normalize_numpy(x[:4000], info), y[:4000]


def _compile(model):
    model.compile(tf.keras.optimizers.Adam(2e-3), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    return model


@pytest.fixture(scope="module")
def child(fashion):
    tf.keras.utils.set_random_seed(0)
    x, y = fashion
    model = _compile(build_child(GENOTYPE, num_classes=10, input_shape=(28, 28, 1), init_channels=8, num_cells=3))
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def pruned_child(child, fashion):
    tf.keras.utils.set_random_seed(1)
    x, y = fashion
    result = dnal.run_dnal(child, (x, y), weight_epochs=0, gate_epochs=1, finetune_epochs=1, lambda_a=1e-3,
                           batch_size=64)
    return result.pruned, result.widths


def _deploy(model, tmp_path, name, use_float_twin=True):
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    out = str(tmp_path / f"{name}.tflite")
    return out, dc.convert_model_file(path, out, parity_examples=256, dataset="fashion_mnist",
                                      use_float_twin=use_float_twin)


def _check(model, out, report, min_accuracy):
    with open(out, "rb") as f:
        ops = fbs.op_histogram(f.read())
    binary = binary_conv_layers(model)
    assert ops["LceBconv2d"] == len(binary) == report["binarization"]["expected_binary_convs"] > 10
    # Float compute left: the real stem and the depthwise halves of the separable convs.
    assert ops["CONV_2D"] == 1 and "SPACE_TO_BATCH_ND" not in ops
    parity = report["parity"]
    assert parity["examples"] == 256
    assert parity["agreement"] == 1.0 and parity["disagreements"] == []
    assert parity["keras_accuracy"] > min_accuracy  # a trained model, not constant outputs (chance is 0.1)
    assert parity["tflite_accuracy"] == parity["keras_accuracy"]
    with open(os.path.splitext(out)[0] + ".json") as f:
        assert json.load(f)["parity"]["agreement"] == 1.0


@pytest.mark.slow
def test_derived_child_converts_binary_with_exact_parity(child, tmp_path):
    out, report = _deploy(child, tmp_path, "child")
    _check(child, out, report, 0.5)
    assert report["float_reference"]["binary_part_ratio"] <= 0.1


@pytest.mark.slow
def test_dnal_width_child_converts_binary_with_exact_parity(child, pruned_child, tmp_path):
    pruned, widths = pruned_child
    assert any(after < before for before, after in widths.values())  # DNAL removed channels
    assert pruned.count_params() < child.count_params()
    # (no float twin: this test checks the binary flatbuffer; the main-job test converts a narrowed Child's twin)
    out, report = _deploy(pruned, tmp_path, "pruned", use_float_twin=False)
    _check(pruned, out, report, 0.25)
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    loaded = tf.keras.models.load_model(str(tmp_path / "pruned.keras"))
    np.testing.assert_allclose(loaded(x).numpy(), pruned(x).numpy(), atol=1e-5)
