"""The numeric primitives both op forms share: the sign / hard-tanh activations with their
straight-through gradient, "same" padding with a chosen value, the stride-2 shortcut and the channel fold
of the real-valued path.

    >>> ste_sign(tf.constant([-0.5, 0.0, 2.0])).numpy()
    array([-1.,  1.,  1.], dtype=float32)
    >>> fold_channels(tf.ones([1, 4, 4, 24]), 8).shape
    TensorShape([1, 4, 4, 8])
"""

import tensorflow as tf

from tfbnas.errors import SpaceError



# --------------------------------------------------------------------------- activations


def _inside_unit(x, dy):
    """The straight-through gradient of both activations: ``dy`` where ``|x| <= 1``, else 0."""
    return tf.where(tf.abs(x) <= 1.0, dy, 0.0)


@tf.custom_gradient
def ste_sign(x):
    """larq's ``ste_sign``: sign with ``sign(0) = +1``, straight-through gradient ``dy`` where ``|x| <= 1``.

    The same values and gradients as ``lq.quantizers.ste_sign``; its gradient selects against a
    scalar zero instead of a zeros tensor as large as ``x`` (one pass over memory fewer).

    Example:
        >>> ste_sign(tf.constant([-0.5, 0.0, 2.0])).numpy()
        array([-1.,  1.,  1.], dtype=float32)
    """

    return tf.sign(tf.sign(x) + 0.1), lambda dy: _inside_unit(x, dy)


@tf.custom_gradient
def hard_tanh(x):
    """``clip(x, -1, 1)`` with the gradient of ``tf.clip_by_value`` (``dy`` where ``|x| <= 1``, else 0),
    in one select instead of two."""

    return tf.clip_by_value(x, -1.0, 1.0), lambda dy: _inside_unit(x, dy)


def quantize_input(x, binary: bool):
    """Sign with STE gradient (Child) or hard tanh (Parent): the activation before every binary conv."""
    return ste_sign(x) if binary else hard_tanh(x)


def _pad_value(binary: bool) -> float:
    # Child: LCE pads binarised inputs with +1; Parent: the usual zero padding.
    return 1.0 if binary else 0.0


def _same_pads(size, kernel_size: int, stride: int, dilation: int):
    """TensorFlow 'SAME' padding (before, after) along one axis."""
    effective = (kernel_size - 1) * dilation + 1
    if isinstance(size, int):
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_size(x):
    """``(height, width)`` of an NHWC tensor: Python ints when static, else scalar tensors."""
    return tuple(x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in (1, 2))


def _pad_same(x, kernel_size: int, stride: int, dilation: int, value: float):
    """Pad ``x`` explicitly as TensorFlow's 'SAME' would for this conv, with ``value``."""
    if kernel_size == 1:
        return x
    h, w = _spatial_size(x)
    ph, pw = _same_pads(h, kernel_size, stride, dilation), _same_pads(w, kernel_size, stride, dilation)
    return tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]], constant_values=value)


def shortcut(x, stride: int = 1):
    """The real-valued shortcut of a ``bireal`` op: ``x`` at stride 1, the 3x3 "same" max pool at stride 2.

    Example:
        >>> shortcut(tf.ones([1, 7, 7, 4]), 2).shape
        TensorShape([1, 4, 4, 4])
    """
    return x if stride == 1 else tf.nn.max_pool2d(x, 3, stride, "SAME")


def channel_shuffle(x, groups: int):
    """Interleave ``groups`` equal channel slices: channel ``g * (C / groups) + i`` goes to ``i * groups + g``
    (PC-DARTS's shuffle after a partial-channel edge, so the next edge's sampled slice mixes both parts).

    Example:
        >>> channel_shuffle(tf.reshape(tf.range(6.0), [1, 1, 1, 6]), 2).numpy().ravel()
        array([0., 3., 1., 4., 2., 5.], dtype=float32)
    """
    c = int(x.shape[-1])
    if groups == 1:
        return x
    shape = tf.shape(x)
    y = tf.reshape(x, tf.concat([shape[:-1], [groups, c // groups]], 0))
    return tf.reshape(tf.transpose(y, [0, 1, 2, 4, 3]), shape)


def partial_edge_output(y, bypass, groups: int):
    """A partial-channel edge's output: its mixed ops' output ``y`` (the sampled ``C / groups`` channels)
    beside the channels that skipped the ops, shuffled (PC-DARTS). ``bypass`` is already at ``y``'s
    resolution (see :func:`partial_bypass`)."""
    return channel_shuffle(tf.concat([y, bypass], -1), groups)


def partial_bypass(x, sampled: int, stride: int = 1):
    """The channels of ``x`` after the first ``sampled`` ones, which a partial-channel edge does not send
    through its ops: as they are at stride 1, 2x2-max-pooled at stride 2 (PC-DARTS)."""
    rest = x[..., sampled:]
    return rest if stride == 1 else tf.nn.max_pool2d(rest, 2, stride, "SAME")


def fold_channels(x, channels: int):
    """Parameter-free real-valued map of ``x``'s channels onto ``channels``: the mean of its consecutive
    ``channels``-wide slices (zero-padded to whole slices); ``x`` itself when the counts are equal.

    The real path around a ``bireal`` cell's binary 1x1 preprocessing: a cell output (its nodes
    concatenated) becomes the mean of its nodes.

    Example:
        >>> fold_channels(tf.reshape(tf.range(6.0), [1, 1, 1, 6]), 2).numpy().ravel()
        array([2., 3.], dtype=float32)
    """
    cin = int(x.shape[-1])
    if cin == channels:
        return x
    k = -(-cin // channels)
    if k * channels != cin:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, k * channels - cin]])
    # One reshape to [..., k, channels] and a sum over the slices: the same values as adding k strided
    # slices, ~6x faster forward + backward on CPU (no StridedSliceGrad per slice).
    shape = [-1] + [d if d is not None else -1 for d in x.shape[1:-1]] + [k, channels]
    if sum(d == -1 for d in shape) > 1:  # unknown spatial size: take it from the tensor
        shape = tf.concat([tf.shape(x)[:-1], [k, channels]], axis=0)
    return tf.reduce_sum(tf.reshape(x, shape), axis=-2) * (1.0 / k)


def _shift_pixel(x, value):
    """Drop the first row and column and pad one row and column at the end (same shape)."""
    return tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]], constant_values=value)


def _check_even_channels(channels: int):
    """Factorized reduce halves the channels: raise :class:`SpaceError` for an odd count."""
    if channels % 2:
        raise SpaceError(f"factorized reduce needs an even channel count, got {channels}; use even widths.")


def _factorized_reduce(xq, kernel_a, kernel_b, edges: int, value: float):
    """``[conv_a(xq)[::2, ::2], conv_b(shift(xq))[::2, ::2]]`` of ``edges`` edges as one 2x2 stride-2 conv.

    ``kernel_a``, ``kernel_b``: ``(1, 1, C, edges * C/2)`` (already quantized). Output channels are
    ordered (edge, [a, b], C/2). Tap (0, 0) of the 2x2 window is pixel ``(2i, 2j)`` (path a), tap
    (1, 1) is ``(2i+1, 2j+1)``, the shifted pixel of path b (the pad value past the border), so no
    strided slices are needed (their gradients are slow on CPU).
    """
    c = int(kernel_a.shape[2])
    half = int(kernel_a.shape[3]) // edges
    a, b = (tf.reshape(k, [c, edges, 1, half]) for k in (kernel_a, kernel_b))
    zeros = tf.zeros_like(a)
    top, bottom = tf.concat([a, zeros], 2), tf.concat([zeros, b], 2)  # (C, edges, 2, half)
    none = tf.zeros_like(top)
    kernel = tf.reshape(tf.stack([tf.stack([top, none]), tf.stack([none, bottom])]), [2, 2, c, edges * 2 * half])
    h, w = _spatial_size(xq)
    x = tf.pad(xq, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]], constant_values=value)
    return tf.nn.conv2d(x, kernel, strides=2, padding="VALID")
