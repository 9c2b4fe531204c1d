"""Which quantizers are 1-bit: the one place tfbnas decides it, and the Parent's :class:`HardTanh`.

Two questions are asked of a Larq quantizer, and they have different answers for ``ste_heaviside``:

* :func:`quantizer_bits` — how many bits its output has (the cost model's question: a binary
  conv counts BOPs, not FLOPs). Every sign-like quantizer is 1 bit, ``ste_heaviside`` included.
* :func:`is_sign_quantizer` — whether it maps to {-1, +1}, which is what Larq Compute Engine
  bit-packs into ``LceBconv2d`` (the converter's and the training recipe's question).
  ``ste_heaviside`` maps to {0, 1}: 1 bit, but LCE runs it as a float conv.

Quantizers come as larq objects (``lq.quantizers.SteSign()``), as larq's functions
(``lq.quantizers.ste_sign``, ``lq.math.sign``) or as names (``"ste_sign"``, ``"SteSign"``)::

    from tfbnas.quantizers import is_sign_quantizer, quantizer_bits

    quantizer_bits("ste_heaviside"), is_sign_quantizer("ste_heaviside")   # (1, False)
    quantizer_bits(lq.quantizers.SteSign()), is_sign_quantizer("ste_sign")  # (1, True)
    quantizer_bits(None), quantizer_bits(HardTanh())                        # (32, 32)

:class:`HardTanh` is registered with Keras and as Larq's ``"hard_tanh"`` alias, so a layer can be
configured with ``input_quantizer="hard_tanh"`` and a saved Parent loads wherever tfbnas is imported.
"""

import larq as lq
import tensorflow as tf

# {-1, +1} quantizers, by function name and by class name.
SIGN_QUANTIZERS = ("ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign")
_SIGN_CLASSES = ("SteSign", "ApproxSign", "SwishSign", "MagnitudeAwareSign")
# 1-bit quantizers whose output is {0, 1}: 1 bit in the cost model, float in LCE.
UNSIGNED_1BIT_QUANTIZERS = ("ste_heaviside",)
_UNSIGNED_CLASSES = ("SteHeaviside",)


def _name(quantizer) -> str:
    """The larq name of a quantizer given as a name, a function, a class or an object."""
    if isinstance(quantizer, str):
        return quantizer
    if isinstance(quantizer, dict):  # a serialised quantizer (a layer's get_config)
        return str(quantizer.get("class_name", ""))
    return getattr(quantizer, "__name__", None) or type(quantizer).__name__


def quantizer_bits(quantizer) -> int:
    """Bits of a quantizer's output: 32 without one, its larq ``precision`` where it has one, 1 for
    larq's sign functions (which carry no ``precision``) and ``lq.math.sign``."""
    if quantizer is None:
        return 32
    precision = getattr(quantizer, "precision", None)
    if isinstance(precision, int):
        return precision
    if quantizer is lq.math.sign:
        return 1
    name = _name(quantizer)
    if name in SIGN_QUANTIZERS + _SIGN_CLASSES + UNSIGNED_1BIT_QUANTIZERS + _UNSIGNED_CLASSES:
        return 1
    return 32


def is_sign_quantizer(quantizer) -> bool:
    """True for the {-1, +1} quantizers LCE turns into bit-packing (``ste_sign``, ``approx_sign``, ...).

    ``ste_heaviside`` (``SteHeaviside``) is 1-bit too but maps to {0, 1}, which LCE does not bit-pack;
    ``NoOp(precision=1)`` (a latent kernel tagged 1-bit) quantizes nothing.
    """
    if quantizer is None or isinstance(quantizer, lq.quantizers.NoOp) or quantizer_bits(quantizer) != 1:
        return False
    return _name(quantizer) not in UNSIGNED_1BIT_QUANTIZERS + _UNSIGNED_CLASSES


@lq.utils.register_alias("hard_tanh")
@tf.keras.utils.register_keras_serializable(package="tfbnas")
class HardTanh(lq.quantizers.Quantizer):
    """``clip(x, -1, 1)``: the Parent's real-valued stand-in for the sign quantizer.

    Its gradient equals the straight-through estimator of ``ste_sign``, so the Parent and the
    1-bit Child train the same latent weights with the same backward pass.

    Example:
        >>> HardTanh()(tf.constant([-2.0, 0.5])).numpy()
        array([-1. ,  0.5], dtype=float32)
        >>> lq.layers.QuantConv2D(8, 3, input_quantizer="hard_tanh").input_quantizer
        <tfbnas.quantizers.HardTanh ...>
    """

    precision = None

    def call(self, inputs):
        return tf.clip_by_value(inputs, -1.0, 1.0)


__all__ = ["SIGN_QUANTIZERS", "UNSIGNED_1BIT_QUANTIZERS", "quantizer_bits", "is_sign_quantizer", "HardTanh"]
