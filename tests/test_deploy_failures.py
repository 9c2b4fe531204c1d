"""The converter's failure paths: each is one clear error, and what could be written is written.

Real LCE and real Fashion-MNIST throughout; the only switch-off is tfbnas's own dilated-conv rewrite, to
expose what LCE does without it.
"""

import json
import os
import subprocess
import sys

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from tfbnas.deploy import DeployError, convert as dc
from tfbnas.errors import EXIT_ERROR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
              use_bias=False, padding="same", pad_values=1.0)


def _dilated_pair():
    """Two dilated binary convs of Larq's stock QuantConv2D reading the same tensor."""
    inputs = tf.keras.Input((16, 16, 32))
    a = lq.layers.QuantConv2D(32, 3, dilation_rate=2, name="dil_a", **BINARY)(inputs)
    b = lq.layers.QuantConv2D(32, 3, dilation_rate=2, name="dil_b", **BINARY)(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Add()([a, b]))


def test_unknown_target_is_one_line():
    with pytest.raises(DeployError) as e:
        dc.convert_keras(_dilated_pair(), target="mips")
    assert str(e.value).startswith("unknown target 'mips'; use one of ") and "\n" not in str(e.value)


def test_binary_convs_lce_leaves_in_float_are_refused_unless_allowed(tmp_path, monkeypatch):
    """Without the rewrite to native convs, LCE turns dilated convs that share an input into float ops: the
    count of LceBconv2d falls short of the binary convs and the conversion stops, naming both numbers."""
    path = str(tmp_path / "pair.keras")
    _dilated_pair().save(path)
    report = dc.convert_model_file(path, str(tmp_path / "ok.tflite"), parity_examples=0, use_float_twin=False)
    assert report["flatbuffer"]["ops"]["LceBconv2d"] == 2  # with the rewrite: both binary

    monkeypatch.setattr(dc, "with_native_convs", lambda model: model)
    with pytest.raises(DeployError) as e:
        dc.convert_model_file(path, str(tmp_path / "short.tflite"), parity_examples=0, use_float_twin=False)
    message = str(e.value)
    assert "LceBconv2d for 2 binary QuantConv2D layers" in message and "--allow_float_fallback" in message
    assert "\n" not in message
    allowed = dc.convert_model_file(path, str(tmp_path / "allowed.tflite"), parity_examples=0,
                                    use_float_twin=False, allow_float_fallback=True)
    assert allowed["flatbuffer"]["ops"].get("LceBconv2d", 0) < 2
    assert any("became float ops" in note for note in allowed["notes"])


def test_a_layer_nobody_registered_names_the_fix(tmp_path, monkeypatch):
    module = tmp_path / "my_layers_for_test.py"
    module.write_text(
        "import tensorflow as tf\n\n"
        "@tf.keras.utils.register_keras_serializable(package='mine')\n"
        "class Twice(tf.keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2.0 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_layers_for_test

    inputs = tf.keras.Input((8, 8, 1))
    path = str(tmp_path / "twice.keras")
    tf.keras.Model(inputs, my_layers_for_test.Twice()(inputs)).save(path)
    # As in a fresh process that never imported the module: not registered, not importable by name.
    tf.keras.utils.get_custom_objects().pop("mine>Twice")
    monkeypatch.delitem(sys.modules, "my_layers_for_test")
    with pytest.raises(DeployError) as e:
        dc.load_keras_model(path)
    assert str(e.value).endswith("uses mine>Twice, not registered in this process; import the module that defines "
                                 "it (--custom_modules=my_layers_for_test)")
    model = dc.load_keras_model(path, custom_modules=("my_layers_for_test",))
    assert float(model(np.ones((1, 8, 8, 1), np.float32)).numpy().max()) == 2.0


@pytest.mark.slow
def test_failed_parity_exits_1_and_still_writes_the_reports(tmp_path):
    """int8 output tensors over a range of +-3 cannot hold logits in the hundreds: many classes saturate at the
    same value, the interpreter's top-1 differs from Keras's, and the check fails after writing every report."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((28, 28, 1))
    x = tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(32, 3, **BINARY)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.BatchNormalization()(x))
    dense = tf.keras.layers.Dense(10, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=100.0))
    path = str(tmp_path / "loud.keras")
    tf.keras.Model(inputs, dense(x)).save(path)
    out = tmp_path / "out" / "loud.tflite"
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, os.path.join(REPO, "deploy", "convert.py"), f"--model={path}",
                             f"--output={out}", "--int8_io", "--int8_default_range=-3,3", "--parity_examples=64",
                             "--nofloat_twin"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == EXIT_ERROR, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("convert.py: error: ") and "--min_agreement=0.99" in last
    with open(str(out).replace(".tflite", ".json")) as f:
        report = json.load(f)
    assert report["parity"]["agreement"] < 0.99 and report["parity"]["examples"] == 64
    assert os.path.getsize(out) > 0 and os.path.getsize(str(out).replace(".tflite", ".md")) > 0
