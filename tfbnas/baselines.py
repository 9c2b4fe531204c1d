"""Hand-designed 1-bit CNNs: the controls every searched Child is compared against.

The baseline is a small binary ResNet in the Bi-Real style: a real-valued stem, binary 3x3
``QuantConv2D`` (sign input and kernel, ``weight_clip``) each followed by BatchNorm and, where the
shape allows, a real-valued identity shortcut around it; downsampling by max pooling; a real-valued
classifier. Every binary conv converts to one ``LceBconv2d``.
"""

from typing import Sequence

import larq as lq
import tensorflow as tf

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
