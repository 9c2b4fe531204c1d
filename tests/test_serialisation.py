"""Saved width models load after ``import tfbnas`` alone, in a fresh process, without keras-tuner (Keras 3)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfbnas.width import BCNetSupernet, insert_gates
from tfbnas.baselines import example_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (0.5, 0.25, 1.0, 0.75, 0.5, 0.5, 1.0)


@pytest.mark.slow
def test_bcnet_supernet_and_a_gated_model_load_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=True)
    net(x)
    net.save(str(tmp_path / "bcnet.keras"))
    np.save(str(tmp_path / "x.npy"), x)
    np.save(str(tmp_path / "bcnet.npy"), net.bilateral_logits(x, WIDTHS).numpy())
    gated = insert_gates(example_cnn("resnet", widths=(8, 16), binary=True), mode="soft")
    for i, gate in enumerate(g for g in gated.layers if type(g).__name__ == "ChannelGate"):
        gate.s.assign(np.linspace(-1, 1, int(gate.s.shape[0])) * (i + 1))
    gated.save(str(tmp_path / "gated.keras"))
    np.save(str(tmp_path / "gated.npy"), gated(x).numpy())

    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tfbnas
        import tensorflow as tf
        d = {str(tmp_path)!r}
        x = np.load(d + "/x.npy")
        net = tf.keras.models.load_model(d + "/bcnet.keras")
        np.testing.assert_allclose(net.bilateral_logits(x, {WIDTHS!r}).numpy(), np.load(d + "/bcnet.npy"),
                                   rtol=1e-5, atol=1e-5)
        gated = tf.keras.models.load_model(d + "/gated.keras")
        np.testing.assert_allclose(gated(x).numpy(), np.load(d + "/gated.npy"), rtol=1e-5, atol=1e-5)
        assert type(net).__name__ == "BCNetSupernet"
        assert "keras_tuner" not in sys.modules, "loading a model imported keras-tuner"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_the_searches_still_load_from_the_width_package_on_first_use():
    import tfbnas.width as width

    assert width.WidthTuner.__name__ == "WidthTuner" and width.SurrogateWidthOracle.__module__.endswith("surrogate")
    assert "WidthTuner" in width.__all__
    try:
        width.NoSuchThing
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("unknown names must raise AttributeError")
    assert tf.keras.utils.get_registered_object("tfbnas>BCNetSupernet") is BCNetSupernet
