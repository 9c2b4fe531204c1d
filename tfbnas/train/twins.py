"""The models a 1-bit network trains beside: its real-valued twin (the Parent teacher), the stage-1
network of two-stage training, and a trained Parent loaded from a file.

All three keep the 1-bit model's layers, names and weight shapes, so weights move between them with
``get_weights``/``set_weights``:

    >>> from tfbnas.baselines import binary_resnet
    >>> model = binary_resnet((28, 28, 1), 10)
    >>> teacher = real_twin(model)                    # hard-tanh activations, real kernels
    >>> stage1 = stage1_model(model, "activations")   # binary activations, real kernels
    >>> model.set_weights(stage1.get_weights())
"""

import os
from typing import Callable

import tensorflow as tf

from tfbnas import data
from tfbnas.config import STAGE1_MODES
from tfbnas.errors import ConfigError, ModelFileError
from tfbnas.quantizers import HardTanh, is_sign_quantizer


def _requantize(model: tf.keras.Model, update: Callable[[dict], dict], name: str) -> tf.keras.Model:
    """Clone ``model`` with ``update`` applied to the config of every Larq quantized conv/dense
    layer whose input and kernel quantizers are binary, and copy the weights."""
    from tfbnas.models import clone_layers

    def rebuild(layer, config):
        if "input_quantizer" in config and "kernel_quantizer" in config and \
                is_sign_quantizer(getattr(layer, "input_quantizer", None)) and \
                is_sign_quantizer(getattr(layer, "kernel_quantizer", None)):
            return layer.__class__.from_config(update(config))
        return None

    return clone_layers(model, rebuild, name=name)


def stage1_model(model: tf.keras.Model, binary: str = "activations") -> tf.keras.Model:
    """The stage-1 network of two-stage training: ``model`` with one side of each binary conv real.

    Args:
        model: a 1-bit model (binary ``QuantConv2D``/``QuantDense`` layers).
        binary: ``"activations"``: binary activations and real weights (Real-to-Binary and ReActNet's
            first step); ``"weights"``: binary weights and real activations (input quantizer off).

    Returns:
        A new model with the same layers, names and weight shapes and ``model``'s weights, so
        ``model.set_weights(stage1.get_weights())`` starts stage 2 from it.

    Example:
        >>> stage1 = stage1_model(child, "activations")
        >>> stage1.fit(x, y); child.set_weights(stage1.get_weights())
    """
    if binary == "activations":
        def update(config):
            return {**config, "kernel_quantizer": None}
    elif binary == "weights":
        def update(config):
            return {**config, "input_quantizer": None}
    else:
        raise ConfigError(f"stage-1 mode {binary!r} is unknown; use one of {list(STAGE1_MODES)}")
    return _requantize(model, update, f"{model.name}_stage1")


def real_twin(model: tf.keras.Model) -> tf.keras.Model:
    """A real-valued twin of a 1-bit model, to train as its teacher.

    Every binary conv gets hard-tanh activations (the sign's straight-through gradient), a real
    kernel and zero padding, as :func:`tfbnas.models.build_parent` does for a Child.

    Args:
        model: a Functional or Sequential 1-bit model (binary Larq conv/dense layers).

    Returns:
        A new model with the same layers and weight shapes, holding ``model``'s current weights.

    Example:
        >>> model = binary_resnet((28, 28, 1), 10)
        >>> teacher = real_twin(model)
        >>> train_model(model, teacher, TrainConfig(epochs=5), "runs/baseline")
    """
    def update(config):
        return {**config, "input_quantizer": HardTanh(), "kernel_quantizer": None,
                **({"pad_values": 0.0} if "pad_values" in config else {})}

    return _requantize(model, update, f"{model.name}_real")



def check_same_shapes(source: tf.keras.Model, target: tf.keras.Model,
                      message: str = "--init_from_parent needs a Parent with the Child's weight shapes (build_parent "
                                     "of the same genotype, widths and space flags)"):
    """Raise :class:`ConfigError` with ``message`` unless ``source`` and ``target`` hold weights of the same shapes."""
    src, dst = source.get_weights(), target.get_weights()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
        raise ConfigError(message)


def copy_weights(source: tf.keras.Model, target: tf.keras.Model):
    check_same_shapes(source, target)
    target.set_weights(source.get_weights())


def inherit_from_search(model: tf.keras.Model, role: str, folder: str) -> bool:
    """Start ``model`` (the Child or its Parent twin, by ``role``) from the weights a search inherited.

    ``folder`` holds the search run's ``inherited_child.keras`` / ``inherited_parent.keras``
    (:func:`tfbnas.search.run_search.write_inherited_models`): the derived network of its genotype holding
    the supernet's weights of the kept ops.

    Returns:
        False when the search wrote no such file for ``role`` (a strategy without a Parent supernet has no
        ``inherited_parent.keras``): ``model`` keeps its initial weights.

    Raises:
        ConfigError: no ``inherited_child.keras`` (a Child always needs one), or the file's weights do not fit
            ``model`` (other widths or sizes than the search's).
    """
    from tfbnas.search.run_search import INHERITED_FILES

    path = os.path.join(folder, INHERITED_FILES[role])
    if not os.path.exists(path):
        if role == "child":
            raise ConfigError(f"--init_from_search needs {path}: a search run writes it beside its genotype.json "
                              "(with --partial_channels=1); pass that genotype or --noinit_from_search")
        return False
    import tfbnas.models  # noqa: F401  (registers the custom layers of .keras Child/Parent files)

    source = tf.keras.models.load_model(path, compile=False)
    check_same_shapes(source, model, f"--init_from_search: {path} does not fit the {role} (other --widths or sizes "
                                     "than the search's); train with the search's space flags, no --widths and no "
                                     "--child_init_channels / --child_num_cells, or pass --noinit_from_search")
    model.set_weights(source.get_weights())
    return True


def load_parent(path: str, info: data.DatasetInfo) -> tf.keras.Model:
    """A trained Parent from ``path``, checked against the dataset's input shape and classes."""
    import tfbnas.models  # noqa: F401  (registers the custom layers of .keras Child/Parent files)

    if not os.path.exists(path):
        raise ModelFileError(f"--parent={path} does not exist; pass a parent.keras written by a training run")
    try:
        parent = tf.keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as e:
        raise ModelFileError(f"--parent={path} is not a loadable Keras model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]})") from None
    want_in, want_out = (None, *info.image_shape), (None, info.num_classes)
    if tuple(parent.input_shape) != want_in or tuple(parent.output_shape) != want_out:
        raise ModelFileError(f"--parent={path} maps {parent.input_shape} to {parent.output_shape} but {info.name} "
                             f"needs {want_in} to {want_out}")
    return parent


__all__ = ["stage1_model", "real_twin", "load_parent", "check_same_shapes", "copy_weights", "inherit_from_search"]
