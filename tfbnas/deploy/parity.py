"""Parity check: the same real images through Keras and through LCE's interpreter.

A converted binary model must compute what the Keras model computes: LCE folds BatchNorm into the
binary conv's output transform and bit-packs activations, which is exact up to float rounding, so
top-1 predictions should agree on (nearly) every image. Binary nets can still flip a rare near-tie
(two logits within rounding distance, amplified by a later ``sign``), which is why the threshold is
an agreement rate and not equality.

Example:
    >>> x, y = parity_batch("fashion_mnist", 256, model)
    >>> result = parity_check(model, flatbuffer, x, y)
    >>> result.agreement, result.max_abs_error
    (1.0, 3.1e-05)
"""

import dataclasses
from typing import Callable, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfbnas.errors import DeployError, ParityError  # noqa: F401  (ParityError: importable from here)

PREPROCESS_CHOICES = ("auto", "mean_std", "unit", "raw")


@dataclasses.dataclass
class ParityResult:
    """Keras vs LCE-interpreter outputs on the same batch.

    Attributes:
        examples: number of images compared.
        agreement: fraction of images whose top-1 class is the same in both.
        disagreements: indices (into the batch) of images whose top-1 differs.
        max_abs_error: largest absolute difference of the model outputs (logits or probabilities).
        max_abs_prob_error: largest absolute difference after softmax (equal to ``max_abs_error``
            when the model already outputs probabilities).
        output_kind: ``"logits"`` or ``"probabilities"`` (judged from the Keras outputs).
        keras_accuracy, tflite_accuracy: top-1 accuracy against the labels, when labels were given.
        interpreter: how the flatbuffer was run.
        preprocess: how the images were scaled before both models saw them.
    """

    examples: int
    agreement: float
    disagreements: list
    max_abs_error: float
    max_abs_prob_error: float
    output_kind: str
    keras_accuracy: Optional[float] = None
    tflite_accuracy: Optional[float] = None
    interpreter: str = ""
    preprocess: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _input_layer_kind(model) -> Optional[str]:
    """Name of a scaling layer the model applies to raw pixels itself, if it starts with one."""
    scaling = (tf.keras.layers.Rescaling, tf.keras.layers.Normalization)
    for layer in model.layers[:3]:
        if isinstance(layer, scaling):
            return type(layer).__name__
    return None


def resolve_preprocess(preprocess: Union[str, Callable], model, dataset: str = "fashion_mnist",
                       data_dir: Optional[str] = None) -> Tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Turns a ``preprocess`` choice into a function ``uint8 images -> float32 model inputs``.

    Args:
        preprocess: a callable, or one of
            ``"auto"``: ``"raw"`` when the model starts with a ``Rescaling``/``Normalization`` layer
            (it scales pixels itself), else ``"mean_std"`` (what tfbnas models are trained on);
            ``"mean_std"``: ``(x/255 - mean) / std`` with the dataset's statistics (tfbnas.data);
            ``"unit"``: ``x/255``; ``"raw"``: pixels as float in [0, 255].
        model: the Keras model (read by ``"auto"``).
        dataset: dataset name whose mean/std ``"mean_std"`` uses.
        data_dir: passed to tfbnas.data for datasets it must look up.

    Returns:
        ``(function, description)``.

    Raises:
        DeployError: unknown choice.
    """
    if callable(preprocess):
        return preprocess, getattr(preprocess, "__name__", "custom")
    if preprocess not in PREPROCESS_CHOICES:
        raise DeployError(f"unknown preprocess '{preprocess}'; use one of {', '.join(PREPROCESS_CHOICES)}")
    if preprocess == "auto":
        layer = _input_layer_kind(model)
        preprocess = "raw" if layer else "mean_std"
    if preprocess == "raw":
        return (lambda x: np.asarray(x, np.float32)), "raw pixels in [0, 255]"
    if preprocess == "unit":
        return (lambda x: np.asarray(x, np.float32) / 255.0), "x / 255"
    from tfbnas import data

    info = data.dataset_info(dataset, data_dir)
    return (lambda x: data.normalize_numpy(np.asarray(x), info)), f"(x/255 - {info.mean}) / {info.std}"


def parity_batch(dataset: str, examples: int, model, preprocess: Union[str, Callable] = "auto",
                 data_dir: Optional[str] = None):
    """The first ``examples`` images of a dataset's test split, scaled for ``model``.

    Args:
        dataset: dataset name (``tfbnas.data.load_arrays``).
        examples: how many test images.
        model: the Keras model (its input shape is checked, ``preprocess="auto"`` reads it).
        preprocess: see :func:`resolve_preprocess`.
        data_dir: where the data lives.

    Returns:
        ``(x float32 [N, H, W, C], y int64 [N], preprocess description)``.

    Raises:
        DeployError: the data is missing or its image shape differs from the model's input.
    """
    from tfbnas import data

    try:
        _, (x_test, y_test) = data.load_arrays(dataset, data_dir)
    except (OSError, ValueError) as e:
        raise DeployError(f"parity data: {str(e).splitlines()[0]}") from None
    x_test, y_test = x_test[:examples], y_test[:examples]
    expected = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if expected is not None and None not in expected and tuple(x_test.shape[1:]) != expected:
        raise DeployError(
            f"the model expects inputs of shape {expected} but '{dataset}' test images are "
            f"{tuple(x_test.shape[1:])}; pass --dataset=<the dataset the model was trained on>"
        )
    fn, description = resolve_preprocess(preprocess, model, dataset, data_dir)
    return np.asarray(fn(x_test), np.float32), y_test, description


def _lce_outputs(flatbuffer: bytes, x: np.ndarray, num_threads: int, use_indirect_bgemm: bool) -> np.ndarray:
    import larq_compute_engine as lce

    interpreter = lce.testing.Interpreter(flatbuffer, num_threads=num_threads,
                                          use_indirect_bgemm=use_indirect_bgemm)
    if len(interpreter.input_shapes) != 1:
        raise DeployError(f"parity check supports one model input, this model has {len(interpreter.input_shapes)}")
    in_type, out_type = interpreter.input_types[0], interpreter.output_types[0]
    inputs = x
    if np.issubdtype(in_type, np.integer):  # int8 I/O: quantise with the input tensor's own scale
        scale, zero = interpreter.input_scales[0], interpreter.input_zero_points[0]
        info = np.iinfo(in_type)
        inputs = np.clip(np.round(x / scale + zero), info.min, info.max).astype(in_type)
    out = interpreter.predict(inputs)
    if isinstance(out, list):
        out = out[0]
    if np.issubdtype(out_type, np.integer):
        out = (out.astype(np.float32) - interpreter.output_zero_points[0]) * interpreter.output_scales[0]
    return np.asarray(out, np.float32)


def parity_check(model, flatbuffer: bytes, x: np.ndarray, y: Optional[np.ndarray] = None, *,
                 num_threads: int = 1, use_indirect_bgemm: bool = True, preprocess: str = "") -> ParityResult:
    """Runs ``x`` through the Keras model and through ``lce.testing.Interpreter`` and compares.

    Args:
        model: the Keras model that was converted.
        flatbuffer: the converted ``.tflite`` bytes (float or int8 I/O).
        x: float32 model inputs ``[N, H, W, C]`` (already preprocessed).
        y: optional labels, to report both accuracies.
        num_threads: interpreter threads.
        use_indirect_bgemm: LCE's fastest portable binary kernel (what the host benchmark times).
        preprocess: description stored in the result.

    Returns:
        A :class:`ParityResult`.
    """
    keras_out = model.predict(x, batch_size=64, verbose=0)
    if isinstance(keras_out, (list, tuple)):
        keras_out = keras_out[0]
    keras_out = np.asarray(keras_out, np.float32).reshape(len(x), -1)
    lce_out = _lce_outputs(flatbuffer, x, num_threads, use_indirect_bgemm).reshape(len(x), -1)
    if keras_out.shape != lce_out.shape:
        raise DeployError(f"output shapes differ: Keras {keras_out.shape} vs TFLite {lce_out.shape}")
    is_prob = bool(np.all(keras_out >= 0) and np.all(keras_out <= 1)
                   and np.allclose(keras_out.sum(-1), 1.0, atol=1e-3))
    top_keras, top_lce = keras_out.argmax(-1), lce_out.argmax(-1)
    prob_keras = keras_out if is_prob else _softmax(keras_out)
    prob_lce = lce_out if is_prob else _softmax(lce_out)
    result = ParityResult(
        examples=int(len(x)),
        agreement=float(np.mean(top_keras == top_lce)),
        disagreements=[int(i) for i in np.flatnonzero(top_keras != top_lce)],
        max_abs_error=float(np.max(np.abs(keras_out - lce_out))),
        max_abs_prob_error=float(np.max(np.abs(prob_keras - prob_lce))),
        output_kind="probabilities" if is_prob else "logits",
        interpreter=f"lce.testing.Interpreter(num_threads={num_threads}, use_indirect_bgemm={use_indirect_bgemm})",
        preprocess=preprocess,
    )
    if y is not None:
        y = np.asarray(y).reshape(-1)
        result.keras_accuracy = float(np.mean(top_keras == y))
        result.tflite_accuracy = float(np.mean(top_lce == y))
    return result


def looks_untrained(model) -> bool:
    """True when every BatchNorm still has its initial statistics (moving mean 0, variance 1, beta 0).

    In such a model a binary conv's integer output of exactly 0 reaches the next sign unchanged, and
    Keras (``sign(0) = +1``) and LCE's fused bit-packing may resolve that tie differently; the flips
    cascade, so parity is only meaningful after training.
    """
    norms = [layer for layer in model.submodules if isinstance(layer, tf.keras.layers.BatchNormalization)]
    if not norms:
        return False
    for layer in norms:
        stats = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}
        if (np.any(stats.get("moving_mean", 0) != 0) or np.any(stats.get("moving_variance", 1) != 1)
                or np.any(stats.get("beta", 0) != 0)):
            return False
    return True


def require_agreement(result: ParityResult, min_agreement: float, model=None):
    """Raises :class:`ParityError` when ``result.agreement < min_agreement``.

    Args:
        result: from :func:`parity_check`.
        min_agreement: the threshold.
        model: the Keras model, to say so when it looks untrained (see :func:`looks_untrained`).
    """
    if result.agreement < min_agreement:
        hint = ("check the preprocessing (--normalize) and the op histogram")
        if model is not None and looks_untrained(model):
            hint = ("the model looks untrained (every BatchNorm at its initial values), so exact-zero ties before "
                    "a sign resolve differently in Keras and LCE; train it first")
        raise ParityError(
            f"parity check failed: top-1 agreement {result.agreement:.2%} on {result.examples} images is below "
            f"--min_agreement={min_agreement} (max |error| {result.max_abs_error:.3g}); {hint}"
        )
