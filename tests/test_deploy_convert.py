"""Deploy conversion: a small Larq model trained on real Fashion-MNIST → LCE flatbuffer, parity, reports, errors."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from conftest import BackgroundRun
from tfbnas import data
from tfbnas.cost import model_cost
from tfbnas.deploy import DeployError, ParityError, convert as dc, flatbuffer as fbs, parity as par

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
              use_bias=False, padding="same", pad_values=1.0)
NUM_BINARY_CONVS = 3


def small_binary_model(width: int = 64, seed: int = 0) -> tf.keras.Model:
    """Real stem conv, three binary QuantConv2D + BatchNorm, global pool, real dense classifier."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((28, 28, 1))
    x = tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = tf.keras.layers.BatchNormalization(momentum=0.9)(x)
    for i, stride in enumerate((1, 2, 1)):
        x = lq.layers.QuantConv2D(width, 3, strides=stride, name=f"bconv{i}", **BINARY)(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(10, name="classifier")(x)
    return tf.keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def fmnist(fashion_arrays):
    return fashion_arrays


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist):
    """The small model after one short epoch (6000 real training images), saved as .keras. (With the
    conversion below, ~20 s on 2 cores: the tests of the trained model are marked slow.)"""
    (x, y), _ = fmnist
    info = data.dataset_info("fashion_mnist")
    model = small_binary_model()
    model.compile(tf.keras.optimizers.Adam(2e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(data.normalize_numpy(x[:6000], info), y[:6000], batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("trained") / "child.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def converted(trained, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "child.tflite")
    report = dc.convert_model_file(trained, out, parity_examples=256, dataset="fashion_mnist")
    return out, report


def save(model, tmp_path, name):
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    return path


def analyzer_histogram(flatbuffer: bytes) -> dict:
    """Op counts from TensorFlow's own model analyzer (an independent parser of the same file)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer)
    counts = {}
    for name in re.findall(r"Op#\d+ (\w+)\(", text.getvalue()):
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.slow
def test_every_binary_conv_becomes_lce_bconv2d(converted):
    out, report = converted
    with open(out, "rb") as f:
        flatbuffer = f.read()
    ops = fbs.op_histogram(flatbuffer)
    assert ops == analyzer_histogram(flatbuffer)
    assert ops["LceBconv2d"] == NUM_BINARY_CONVS
    assert report["binarization"]["expected_binary_convs"] == NUM_BINARY_CONVS
    assert ops["LceQuantize"] >= 1
    # Only the real stem conv and the classifier stay float; nothing binary fell back.
    assert ops["CONV_2D"] == 1 and ops["FULLY_CONNECTED"] == 1
    assert report["flatbuffer"]["binary_ops"] == NUM_BINARY_CONVS
    assert report["flatbuffer"]["float_compute_ops"] == 2
    assert report["flatbuffer"]["size_bytes"] == os.path.getsize(out)


@pytest.mark.slow
def test_parity_is_exact_on_real_test_images(converted):
    _, report = converted
    p = report["parity"]
    assert p["examples"] == 256
    assert p["agreement"] == 1.0 and p["disagreements"] == []
    assert p["max_abs_error"] < 1e-3
    assert p["tflite_accuracy"] == p["keras_accuracy"]
    assert p["keras_accuracy"] > 0.3  # one short epoch is far above chance (0.1): the model is trained
    assert "0.286" in p["preprocess"]  # tfbnas models take (x/255 - mean) / std inputs


@pytest.mark.slow
def test_reports_next_to_the_output(converted):
    out, report = converted
    stem = os.path.splitext(out)[0]
    with open(stem + ".json") as f:
        saved = json.load(f)
    assert saved["flatbuffer"]["ops"] == report["flatbuffer"]["ops"]
    assert saved["parity"]["agreement"] == report["parity"]["agreement"]
    with open(stem + ".md") as f:
        markdown = f.read()
    assert "| LceBconv2d | 3 | binary |" in markdown and "top-1 agreement" in markdown


@pytest.mark.slow
def test_binary_parts_are_at_most_a_tenth_of_float(converted):
    out, report = converted
    ref = report["float_reference"]
    assert ref["size_ratio"] < 0.2
    assert ref["binary_part_ratio"] <= 0.1
    with open(ref["output"], "rb") as f:
        float_ops = fbs.op_histogram(f.read())
    assert not any(name.startswith("Lce") for name in float_ops)
    assert float_ops["CONV_2D"] == 1 + NUM_BINARY_CONVS


@pytest.mark.slow
def test_cost_fields_are_the_cost_models_totals(converted, trained):
    _, report = converted
    assert report["cost"] == model_cost(dc.load_keras_model(trained)).totals()
    assert report["cost"]["bops"] > 0 and report["cost"]["flops"] > 0
    assert report["cost_note"].startswith("from tfbnas.cost.model_cost")


def test_a_model_the_cost_model_cannot_count_still_gets_a_note():
    inputs = tf.keras.Input((None, None, 1))  # unknown spatial size: no op count
    model = tf.keras.Model(inputs, tf.keras.layers.GlobalAveragePooling2D()(
        lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign", use_bias=False)(inputs)))
    cost, note = dc._cost(model)
    assert cost is None and "unknown dimensions" in note and note.endswith("BOPs/FLOPs/OPs left out")


@pytest.mark.slow
def test_parity_detects_a_different_model(trained, fmnist):
    model = dc.load_keras_model(trained)
    flatbuffer = dc.convert_keras(model)
    other = tf.keras.models.clone_model(model)  # same architecture, perturbed kernels
    other.set_weights(model.get_weights())
    rng = np.random.RandomState(1)
    for variable in other.weights:
        if "kernel" in variable.name:
            variable.assign(variable + rng.normal(0, 0.5, variable.shape).astype(np.float32))
    x, y, _ = par.parity_batch("fashion_mnist", 64, model)
    result = par.parity_check(other, flatbuffer, x, y)
    assert result.agreement < 0.99 and result.disagreements
    with pytest.raises(ParityError, match="below --min_agreement=0.99"):
        par.require_agreement(result, 0.99)


def test_missing_file(tmp_path):
    with pytest.raises(DeployError, match="model file not found"):
        dc.convert_model_file(str(tmp_path / "nope.keras"), str(tmp_path / "out.tflite"))


def test_not_a_keras_model(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("this is not a model\n")
    with pytest.raises(DeployError, match="is not a Keras model"):
        dc.load_keras_model(str(path))


def grouped_model(channels_per_group: int):
    inputs = tf.keras.Input((28, 28, 1))
    x = tf.keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = lq.layers.QuantConv2D(32, 3, groups=32 // channels_per_group, name="grouped_bconv", **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x))


def test_grouped_conv_with_8_channels_per_group_is_refused(tmp_path):
    path = save(grouped_model(8), tmp_path, "grouped")
    with pytest.raises(DeployError) as e:
        dc.convert_model_file(path, str(tmp_path / "g.tflite"), parity_examples=0)
    message = str(e.value)
    assert "'grouped_bconv'" in message and "8 input channels per group" in message and "multiple of 32" in message
    assert "\n" not in message
    assert not (tmp_path / "g.tflite").exists()


def test_float_fallback_is_allowed_and_visible(tmp_path, capfd):
    path = save(grouped_model(8), tmp_path, "grouped")
    report = dc.convert_model_file(path, str(tmp_path / "g.tflite"), parity_examples=0, allow_float_fallback=True,
                                   use_float_twin=False)
    ops = report["flatbuffer"]["ops"]
    assert ops.get("LceBconv2d", 0) == 0  # the grouped conv became a float CONV_2D
    assert ops["CONV_2D"] >= 2
    assert any("grouped_bconv" in n for n in report["notes"])
    assert any("multiple of 32" in m for m in report["binarization"]["converter_messages"])
    assert "warning: layer 'grouped_bconv'" in capfd.readouterr().err


def test_grouped_conv_with_32_channels_per_group_converts(tmp_path):
    inputs = tf.keras.Input((8, 8, 64))
    x = lq.layers.QuantConv2D(64, 3, groups=2, **BINARY)(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.BatchNormalization()(x))
    assert dc.binarization_issues(model) == []
    assert fbs.op_histogram(dc.convert_keras(model))["LceBconv2d"] == 1


def test_binary_depthwise_is_refused(tmp_path):
    inputs = tf.keras.Input((28, 28, 1))
    x = tf.keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = lq.layers.QuantDepthwiseConv2D(3, padding="same", input_quantizer="ste_sign", depthwise_quantizer="ste_sign",
                                       name="bin_dw")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    path = save(tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x)), tmp_path, "dw")
    with pytest.raises(DeployError, match=r"'bin_dw'.*QuantDepthwiseConv2D.*DepthwiseConv2D"):
        dc.convert_model_file(path, str(tmp_path / "dw.tflite"), parity_examples=0)


def test_binary_kernel_without_input_quantizer_is_refused():
    inputs = tf.keras.Input((8, 8, 32))
    x = lq.layers.QuantConv2D(32, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                              name="half_binary")(inputs)
    issues = dc.binarization_issues(tf.keras.Model(inputs, x))
    assert len(issues) == 1 and issues[0].layer == "half_binary"
    assert "input_quantizer" in issues[0].fix


@pytest.mark.slow
def test_the_flatbuffer_equals_lce_convert_keras_model(trained):
    """The converter writes its own minimal SavedModel (no Keras export of every layer's functions); the
    flatbuffer is LCE's own, byte for byte."""
    import larq_compute_engine as lce

    model = dc.with_native_convs(dc.load_keras_model(trained))
    assert dc.convert_keras(model) == lce.convert_keras_model(model)


def test_int8_io_needs_quantisation_statistics(trained, tmp_path):
    model = dc.load_keras_model(trained)
    with pytest.raises(DeployError, match="int8-quantised model"):
        dc.convert_keras(model, int8_io=True)
    flatbuffer = dc.convert_keras(model, int8_io=True, int8_default_range=(-3.0, 3.0))
    summary = fbs.summarize_flatbuffer(flatbuffer)
    assert summary.inputs[0].dtype == "int8" and summary.outputs[0].dtype == "int8"
    assert summary.ops["LceBconv2d"] == NUM_BINARY_CONVS
    x, y, _ = par.parity_batch("fashion_mnist", 32, model)
    result = par.parity_check(model, flatbuffer, x, y)  # int8 inputs are quantised with the model's own scale
    # int8 logits are clipped to the default range (-3, 3), so ties cost some agreement (0.81 measured);
    # a wrong input scale or zero point would leave it near chance (0.1)
    assert result.examples == 32 and result.agreement >= 0.5


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "deploy", "convert.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_cli_end_to_end(trained, tmp_path):
    out = str(tmp_path / "cli" / "child.tflite")
    result = run_cli(f"--model={trained}", f"--output={out}", "--parity_examples=256", "--dataset=fashion_mnist",
                     "--target=arm64")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top-1 agreement 100.00%" in result.stdout
    assert "LceBconv2d 3" in result.stdout
    for suffix in (".tflite", ".json", ".md", "_float.tflite"):
        assert os.path.getsize(str(tmp_path / "cli" / "child") + suffix) > 0
    with open(str(tmp_path / "cli" / "child.json")) as f:
        assert json.load(f)["parity"]["agreement"] == 1.0


def _bad_model_command(folder, case):
    model = folder / "model.keras"
    if case == "not_keras":
        model.write_bytes(b"\x00\x01 not a model")
    return [sys.executable, os.path.join(REPO, "deploy", "convert.py"), f"--model={model}",
            f"--output={folder / 'o.tflite'}"]


# Each program pays TensorFlow's import: they run beside the in-process tests (conftest.BackgroundRun).
for _case in ("missing", "not_keras"):
    BackgroundRun(__name__, "bad_model_run", f"convert-{_case}", lambda folder, c=_case: _bad_model_command(folder, c),
                  param=_case)


@pytest.fixture
def bad_model_run(request):
    return BackgroundRun.for_test(request)[0]


@pytest.mark.parametrize("case", ["missing", "not_keras"])
def test_cli_errors_are_one_line(case, bad_model_run):
    result = bad_model_run
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if line.startswith("convert.py:")]
    assert len(ours) == 1 and ours[0] == result.stderr.strip().splitlines()[-1]
    assert ("model file not found" if case == "missing" else "is not a Keras model") in ours[0]


@pytest.mark.slow
def test_stripped_names_keep_the_graph_and_shrink_the_file(trained, converted, tmp_path):
    out, report = converted  # the default strips names
    assert report["names_stripped"]
    kept = str(tmp_path / "named.tflite")
    named = dc.convert_model_file(trained, kept, parity_examples=0, use_float_twin=False, strip_names=False)
    assert not named["names_stripped"]
    with open(out, "rb") as f:
        stripped_bytes = f.read()
    with open(kept, "rb") as f:
        named_bytes = f.read()
    assert len(stripped_bytes) < len(named_bytes)
    assert fbs.op_histogram(stripped_bytes) == fbs.op_histogram(named_bytes)
    assert b"StatefulPartitionedCall" in named_bytes and b"StatefulPartitionedCall" not in stripped_bytes
    import larq_compute_engine as lce

    x = np.random.default_rng(0).normal(size=(1, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(lce.testing.Interpreter(stripped_bytes).predict(x),
                                  lce.testing.Interpreter(named_bytes).predict(x))
