"""Hand-designed 1-bit CNNs: the controls every searched Child is compared against.

The baseline is a small binary ResNet in the Bi-Real style: a real-valued stem, binary 3x3
``QuantConv2D`` (sign input and kernel, ``weight_clip``) each followed by BatchNorm and, where the
shape allows, a real-valued identity shortcut around it; downsampling by max pooling; a real-valued
classifier. Every binary conv converts to one ``LceBconv2d``.
"""

from typing import Sequence

import larq as lq
import tensorflow as tf

from tfbnas.errors import WidthSearchError

_L = tf.keras.layers

BINARY_CONV_ARGS = dict(
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    use_bias=False,
    padding="same",
    pad_values=1.0,
)


def binary_resnet(input_shape=(28, 28, 1), num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                  blocks_per_stage: int = 2, name: str = "binary_resnet") -> tf.keras.Model:
    """A small binary ResNet (Functional).

    Args:
        input_shape: image shape ``(H, W, C)``.
        num_classes: classifier outputs (logits).
        widths: channels of each stage; stages after the first halve the resolution.
        blocks_per_stage: binary conv blocks per stage.
        name: model name.

    Returns:
        A ``tf.keras.Model`` mapping normalised float images to logits.

    Example:
        >>> model = binary_resnet((28, 28, 1), 10, widths=(16, 32))
        >>> model.output_shape
        (None, 10)
    """
    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    for stage, width in enumerate(widths):
        if stage > 0:
            x = tf.keras.layers.MaxPool2D(2, name=f"pool{stage}")(x)
        for block in range(blocks_per_stage):
            prefix = f"s{stage}b{block}"
            y = lq.layers.QuantConv2D(width, 3, name=f"{prefix}_bconv", **BINARY_CONV_ARGS)(x)
            y = tf.keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(y)
            x = tf.keras.layers.Add(name=f"{prefix}_add")([x, y]) if x.shape[-1] == width else y
    x = tf.keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="classifier")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def example_cnn(kind: str = "vgg", input_shape=(28, 28, 1), num_classes: int = 10, widths=(16, 32, 64),
                binary: bool = False) -> tf.keras.Model:
    """A small Conv-BN-ReLU network to try DNAL on.

    Args:
        kind: ``"vgg"`` (conv pairs + max-pool per stage) or ``"resnet"`` (a stride-2 conv per stage
            and a residual block whose two BN outputs are added).
        input_shape, num_classes: data shape and classes.
        widths: channels per stage.
        binary: Larq ``QuantConv2D`` (ste_sign input and kernel, weight clip, ``pad_values=1``)
            for every conv but the first, and no ReLU before them (sign follows).

    Returns:
        A Functional model that outputs logits.
    """
    if kind not in ("vgg", "resnet"):
        raise WidthSearchError(f"example_cnn kind must be 'vgg' or 'resnet', got '{kind}'")

    def conv(x, filters, name, strides=1, first=False):
        if binary and not first:
            return lq.layers.QuantConv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                         input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                         kernel_constraint="weight_clip", pad_values=1.0, name=name)(x)
        return _L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)

    def act(x, name):
        return x if binary else _L.ReLU(name=name)(x)

    inputs = tf.keras.Input(input_shape, name="image")
    x = inputs
    for i, c in enumerate(widths):
        if kind == "vgg":
            x = conv(x, c, f"conv{i}a", first=i == 0)
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}a")(x), f"relu{i}a")
            x = conv(x, c, f"conv{i}b")
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}b")(x), f"relu{i}b")
            x = _L.MaxPooling2D(name=f"pool{i}")(x)
        else:
            x = conv(x, c, f"conv{i}", strides=1 if i == 0 else 2, first=i == 0)
            x = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}")(x), f"relu{i}")
            y = conv(x, c, f"conv{i}r1")
            y = act(_L.BatchNormalization(momentum=0.9, name=f"bn{i}r1")(y), f"relu{i}r1")
            y = conv(y, c, f"conv{i}r2")
            y = _L.BatchNormalization(momentum=0.9, name=f"bn{i}r2")(y)
            x = act(_L.Add(name=f"add{i}")([x, y]), f"relu{i}out")
    x = _L.GlobalAveragePooling2D(name="gap")(x)
    outputs = _L.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=f"{'binary_' if binary else ''}{kind}_example")
