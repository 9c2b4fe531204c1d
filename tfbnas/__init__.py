"""tfbnas: search, train and deploy 1-bit (binary) CNNs with TensorFlow, Larq and LCE.

Importing :mod:`tfbnas` selects Keras 2 (``tf_keras``) for TensorFlow before TensorFlow is
first imported: Larq's layers and quantizers are written for Keras 2, and TensorFlow >= 2.16
otherwise hands out Keras 3 as ``tf.keras``. It also turns on TensorFlow's oneDNN CPU kernels
(``TF_ENABLE_ONEDNN_OPTS=1``), which TensorFlow enables by default only on some x86 CPUs: without
them the gradient of a dilated convolution (the ``dil_*`` ops) fails on CPU with "Current CPU
implementations do not yet support dilation rates larger than 1" (seen on AMD EPYC).

It registers every Keras layer and schedule a saved Child, Parent or supernet uses, so loading a
run's model needs nothing else:

    import tfbnas
    import tensorflow as tf

    child = tf.keras.models.load_model("runs/<run>/train/child.keras")
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "tensorflow" not in _sys.modules:
    _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_keras_2():
    import tensorflow as tf

    # With TF_USE_LEGACY_KERAS=1, tf.keras is a lazy loader of tf_keras (Keras 2); otherwise Keras 3.
    module = tf.keras.layers.Layer.__module__
    if not module.startswith("tf_keras."):
        raise ImportError(
            f"tfbnas needs Keras 2 but tf.keras is Keras 3 ({module}): TensorFlow was imported before "
            "tfbnas; import tfbnas first or set TF_USE_LEGACY_KERAS=1, and `pip install tf-keras`."
        )


_check_keras_2()

# Every Keras layer and schedule a saved Child, Parent, supernet or width model uses is registered on import,
# so that ``import tfbnas; tf.keras.models.load_model("RUN/train/child.keras")`` is all a user needs.
from tfbnas import models as _models  # noqa: E402,F401
from tfbnas.train import distiller as _distiller, schedules as _schedules  # noqa: E402,F401
from tfbnas.width import bcnet as _bcnet, gates as _gates  # noqa: E402,F401
