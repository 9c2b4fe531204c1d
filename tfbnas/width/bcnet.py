"""BCNet: a bilaterally coupled, width-sliceable supernet of the Channel-Bench-Macro MobileNet space.

One set of full-width variables serves every width vector. A layer of width ``c`` out of ``C``
channels is evaluated twice: with its **leftmost** ``c`` channels (``[0, c)``) and with its
**rightmost** ``c`` channels (``[C - c, C)``), every layer of a path taking the same side; the
width's loss (and its score in the search) is the average of the two paths,

    ``L(w, c) = 1/2 * (L(w, left(c)) + L(w, right(c)))``,

so channel ``i`` serves the same number of widths as channel ``C - 1 - i`` and every channel is
trained equally often (the one-sided "leftmost c" supernet trains channel 0 for every width and
channel ``C - 1`` only for the full one).

**Stochastic complementary training** (:meth:`BCNetSupernet.train_step`): each step samples a width
vector ``c`` (each layer uniformly from the grid) and also trains its complement ``C - c`` (the full
width ``C`` where ``C - c = 0``): with both sides of both widths, every channel of a layer is used
exactly twice per step (four times at full width).

Slicing uses ``tf.slice`` on the full variables inside one traced graph (widths are tensors), so no
layer is rebuilt per width. In training, BatchNorm normalises with batch statistics (the supernet keeps
no moving averages: one set of averages could not fit every width); :meth:`BCNetSupernet.extract`
copies one path's slices into a plain Keras model and calibrates its BatchNorm statistics on data.

**Scoring a width** (:meth:`BCNetSupernet.score_widths`) averages the accuracy of the two paths, or
takes the left path alone for the one-sided supernet (``bilateral=False``). By default each BatchNorm
normalises a scoring batch with that batch's own statistics. With ``calibration_x`` the statistics
are **recalibrated per width**: the width's path runs once on the calibration images
(:meth:`BCNetSupernet.calibration_statistics`), and the scoring batches are normalised with those
statistics, as the extracted model would be in inference mode. The statistics live in the call, not
in the supernet, so scoring one width never changes what another width sees.

While training, the supernet records the mean loss of the sampled widths per layer and multiplier;
:meth:`BCNetSupernet.width_prior` turns it into the per-layer probabilities the evolutionary search
draws its initial population (and mutations) from (BCNet's prior initial population).

``binary=True`` gives the 1-bit variant: the 1x1 convs (expand, project, head) binarise input and
kernel with ``ste_sign`` (Larq quantizers; ``QuantConv2D`` in extracted models, which LCE turns into
``LceBconv2d``); stem, depthwise convs and the classifier stay real, and no ReLU6 precedes a binary conv.

Example:
    >>> net = BCNetSupernet(input_shape=(28, 28, 1), width_scale=0.125)
    >>> net.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    >>> net.fit(train_ds, epochs=1)
    >>> net.score_widths((0.5,) * 7, [(x_val, y_val)], calibration_x=x_train[:512])
    {'score': ..., 'loss': ..., 'acc_left': ..., 'loss_left': ..., 'acc_right': ..., 'loss_right': ...}
    >>> small = net.extract((0.5,) * 7, calibration_x=x_val)
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import larq as lq
import numpy as np
import tensorflow as tf

from tfbnas.width import WidthSearchError
from tfbnas.width.channel_bench import GRID, LAYER_NAMES, MAX_WIDTHS, macro_channels, macro_cost

__all__ = ["BCNetSupernet", "build_macro_model", "scaled_max_widths"]

_L = tf.keras.layers
_BN_EPSILON = 1e-3  # Keras' BatchNormalization default, so extracted models match the supernet


def scaled_max_widths(scale: float = 1.0, max_widths: Sequence[int] = MAX_WIDTHS, multiple: int = 4) -> Tuple[int, ...]:
    """Full widths of the macro space times ``scale``, rounded to a multiple of ``multiple``.

    ``multiple=4`` keeps every multiplier of the 0.25 grid an integer channel count.

    Example:
        >>> scaled_max_widths(0.125)
        (16, 96, 96, 96, 32, 192, 128)
    """
    if scale <= 0:
        raise WidthSearchError(f"width scale must be positive, got {scale}")
    return tuple(max(multiple, int(round(c * scale / multiple)) * multiple) for c in max_widths)


def build_macro_model(widths: Sequence[float], input_shape=(32, 32, 3), num_classes: int = 10,
                      max_widths: Sequence[int] = MAX_WIDTHS, binary: bool = False,
                      name: Optional[str] = None) -> tf.keras.Model:
    """The plain Functional model of one width vector of the macro space.

    Args:
        widths: seven multipliers (see :mod:`tfbnas.width.channel_bench`).
        input_shape: image shape.
        num_classes: classifier outputs (logits).
        max_widths: full channel counts (e.g. :func:`scaled_max_widths`).
        binary: 1-bit variant (binary 1x1 ``QuantConv2D``).
        name: model name.

    Returns:
        A Functional model with layers ``stem``, ``mb{i}_expand``, ``mb{i}_dw``, ``mb{i}_project`` (each
        followed by ``<name>_bn``), ``head``, ``logits``.
    """
    s1, h1, h2, h3, s2, h4, head = macro_channels(widths, max_widths)

    def pw(x, filters, lname):
        if binary:
            return lq.layers.QuantConv2D(filters, 1, use_bias=False, input_quantizer="ste_sign",
                                         kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                                         name=lname)(x)
        return _L.Conv2D(filters, 1, use_bias=False, name=lname)(x)

    def bn(x, lname):
        return _L.BatchNormalization(epsilon=_BN_EPSILON, name=f"{lname}_bn")(x)

    def relu6(x, lname):
        return _L.ReLU(6.0, name=f"{lname}_relu")(x)

    def mb(x, i, hidden, out, stride):
        y = relu6(bn(pw(x, hidden, f"mb{i}_expand"), f"mb{i}_expand"), f"mb{i}_expand")
        y = bn(_L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"mb{i}_dw")(y), f"mb{i}_dw")
        if not binary:
            y = relu6(y, f"mb{i}_dw")
        y = bn(pw(y, out, f"mb{i}_project"), f"mb{i}_project")
        return _L.Add(name=f"mb{i}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y

    inputs = tf.keras.Input(input_shape, name="image")
    x = bn(_L.Conv2D(s1, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs), "stem")
    if not binary:
        x = relu6(x, "stem")
    x = mb(x, 1, h1, s1, 1)
    x = mb(x, 2, h2, s1, 1)
    x = mb(x, 3, h3, s2, 2)
    x = mb(x, 4, h4, s2, 1)
    x = relu6(bn(pw(x, head, "head"), "head"), "head")
    x = _L.GlobalAveragePooling2D(name="gap")(x)
    outputs = _L.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name or ("binary_macro" if binary else "macro"))


# ---------------------------------------------------------------------------- sliceable layers


def _slice(var, axis: int, start, size):
    """``var`` restricted to ``[start, start + size)`` along ``axis`` (tensors allowed)."""
    rank = len(var.shape)
    one_hot = tf.one_hot(axis, rank, dtype=tf.int32, on_value=1, off_value=0)
    begin = one_hot * tf.cast(start, tf.int32)
    sizes = tf.where(tf.cast(one_hot, tf.bool), tf.cast(size, tf.int32), -1)
    return tf.slice(var, begin, sizes)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class _SlimConv(tf.keras.layers.Layer):
    """A conv whose input/output channels are ranges of one full kernel."""

    def __init__(self, kernel_size, cin, cout, strides=1, binary=False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.cin, self.cout, self.strides, self.binary = kernel_size, cin, cout, strides, binary
        self.kernel = self.add_weight("kernel", (kernel_size, kernel_size, cin, cout),
                                      initializer="glorot_uniform" if binary else "he_normal",
                                      constraint=lq.constraints.WeightClip(1.0) if binary else None)

    def call(self, x, cin_range=None, cout_range=None):
        kernel = self.kernel
        if cin_range is not None:
            kernel = _slice(kernel, 2, *cin_range)
        if cout_range is not None:
            kernel = _slice(kernel, 3, *cout_range)
        if self.binary:
            x, kernel = lq.quantizers.ste_sign(x), lq.quantizers.ste_sign(kernel)
        return tf.nn.conv2d(x, kernel, self.strides, "SAME")

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "cin": self.cin, "cout": self.cout,
                "strides": self.strides, "binary": self.binary}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class _SlimDepthwise(tf.keras.layers.Layer):
    def __init__(self, channels, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.strides = channels, strides
        self.kernel = self.add_weight("depthwise_kernel", (3, 3, channels, 1), initializer="he_normal")

    def call(self, x, channel_range):
        kernel = _slice(self.kernel, 2, *channel_range)
        return tf.nn.depthwise_conv2d(x, kernel, [1, self.strides, self.strides, 1], "SAME")

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "strides": self.strides}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class _SlimBatchNorm(tf.keras.layers.Layer):
    """BatchNorm on a channel range of full-width scale and offset.

    ``call(x, channel_range)`` normalises with the batch statistics of ``x``; ``call(x, channel_range,
    mean, variance)`` with given statistics of the range (e.g. recalibrated ones), as inference does.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.gamma = self.add_weight("gamma", (channels,), initializer="ones")
        self.beta = self.add_weight("beta", (channels,), initializer="zeros")

    def call(self, x, channel_range, mean=None, variance=None):
        if mean is None or variance is None:
            mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        return tf.nn.batch_normalization(x, mean, variance, _slice(self.beta, 0, *channel_range),
                                         _slice(self.gamma, 0, *channel_range), _BN_EPSILON)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class _SlimDense(tf.keras.layers.Layer):
    def __init__(self, cin, units, **kwargs):
        super().__init__(**kwargs)
        self.cin, self.units = cin, units
        self.kernel = self.add_weight("kernel", (cin, units), initializer="glorot_uniform")
        self.bias = self.add_weight("bias", (units,), initializer="zeros")

    def call(self, x, cin_range):
        return tf.matmul(x, _slice(self.kernel, 0, *cin_range)) + self.bias

    def get_config(self):
        return {**super().get_config(), "cin": self.cin, "units": self.units}


# ---------------------------------------------------------------------------- the supernet


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class BCNetSupernet(tf.keras.Model):
    """Bilaterally coupled supernet of the macro MobileNet space (see the module docstring).

    Args:
        input_shape: image shape, e.g. ``(32, 32, 3)`` (CIFAR-10) or ``(28, 28, 1)``.
        num_classes: classes.
        max_widths: full channel counts of the seven layers; default the benchmark's, or use
            ``width_scale``.
        width_scale: multiplies the benchmark's full widths (:func:`scaled_max_widths`) when
            ``max_widths`` is not given.
        binary: 1-bit variant.
        grid: multipliers sampled in training.
        bilateral: average the left and right paths (``False``: left only, the one-sided supernet).
        complementary: also train the complement of each sampled width.

    Example:
        >>> net = BCNetSupernet((28, 28, 1), width_scale=0.125, binary=True)
        >>> logits = net.bilateral_logits(x, (0.5, 0.25, 1.0, 0.75, 0.5, 0.5, 1.0))
    """

    def __init__(self, input_shape=(32, 32, 3), num_classes: int = 10, max_widths: Optional[Sequence[int]] = None,
                 width_scale: float = 1.0, binary: bool = False, grid: Sequence[float] = GRID,
                 bilateral: bool = True, complementary: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in input_shape)
        if len(self.image_shape) != 3:
            raise WidthSearchError(f"input_shape must be (height, width, channels), got {input_shape}")
        self.num_classes = int(num_classes)
        self.max_widths = tuple(int(c) for c in (max_widths or scaled_max_widths(width_scale)))
        if len(self.max_widths) != len(LAYER_NAMES):
            raise WidthSearchError(f"max_widths needs {len(LAYER_NAMES)} entries ({LAYER_NAMES}), "
                                   f"got {self.max_widths}")
        self.width_scale = float(width_scale)
        self.binary = bool(binary)
        self.grid = tuple(sorted(float(g) for g in grid))
        self.bilateral = bool(bilateral)
        self.complementary = bool(complementary)
        table = [[max(1, int(round(g * c))) for g in self.grid] for c in self.max_widths]
        self._grid_counts = tf.constant(table, tf.int32)  # [layers, choices]
        self._full = tf.constant(self.max_widths, tf.int32)
        s1, h1, h2, h3, s2, h4, head = self.max_widths
        cin = self.image_shape[-1]
        b = self.binary
        self.stem = _SlimConv(3, cin, s1, strides=2, name="stem")
        self.stem_bn = _SlimBatchNorm(s1, name="stem_bn")
        self.blocks = []
        for i, (bin_, hidden, bout, stride) in enumerate([(s1, h1, s1, 1), (s1, h2, s1, 1), (s1, h3, s2, 2),
                                                          (s2, h4, s2, 1)], start=1):
            self.blocks.append({
                "expand": _SlimConv(1, bin_, hidden, binary=b, name=f"mb{i}_expand"),
                "expand_bn": _SlimBatchNorm(hidden, name=f"mb{i}_expand_bn"),
                "dw": _SlimDepthwise(hidden, strides=stride, name=f"mb{i}_dw"),
                "dw_bn": _SlimBatchNorm(hidden, name=f"mb{i}_dw_bn"),
                "project": _SlimConv(1, hidden, bout, binary=b, name=f"mb{i}_project"),
                "project_bn": _SlimBatchNorm(bout, name=f"mb{i}_project_bn"),
            })
        self.head = _SlimConv(1, s2, head, binary=b, name="head")
        self.head_bn = _SlimBatchNorm(head, name="head_bn")
        self.classifier = _SlimDense(head, self.num_classes, name="logits")
        shape = (len(self.max_widths), len(self.grid))
        self.prior_loss_sum = tf.Variable(tf.zeros(shape), trainable=False, name="prior_loss_sum")
        self.prior_count = tf.Variable(tf.zeros(shape), trainable=False, name="prior_count")
        self._ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._loss_tracker = tf.keras.metrics.Mean(name="loss")
        self._acc_tracker = tf.keras.metrics.Mean(name="accuracy")

    # ------------------------------------------------------------------ widths
    def counts(self, widths: Sequence[float]) -> tf.Tensor:
        """Channel counts (int32 ``[7]``) of multipliers ``widths``."""
        return tf.constant(macro_channels(tuple(widths), self.max_widths), tf.int32)

    def complement(self, counts: tf.Tensor) -> tf.Tensor:
        """``C - c`` per layer, or ``C`` where that is 0."""
        comp = self._full - tf.cast(counts, tf.int32)
        return tf.where(comp > 0, comp, self._full)

    def sample_counts(self) -> tf.Tensor:
        """A width vector with each layer's multiplier drawn uniformly from the grid, as channel counts."""
        idx = tf.random.uniform([len(self.max_widths)], 0, len(self.grid), dtype=tf.int32)
        return tf.gather(self._grid_counts, idx, batch_dims=1)

    def cost(self, widths: Sequence[float]) -> Dict[str, float]:
        """FLOPs / BOPs / OPs of the width vector's network (see :func:`macro_cost`)."""
        return macro_cost(widths, self.image_shape[0], self.image_shape[-1], self.num_classes, self.max_widths,
                          binary=self.binary)

    # ------------------------------------------------------------------ forward
    @property
    def batch_norms(self):
        """The 14 BatchNorm layers in path order (``stem_bn``, ``mb{i}_expand_bn``, ``mb{i}_dw_bn``,
        ``mb{i}_project_bn`` for i = 1..4, ``head_bn``); their names are those of the extracted model."""
        out = [self.stem_bn]
        for block in self.blocks:
            out += [block["expand_bn"], block["dw_bn"], block["project_bn"]]
        return out + [self.head_bn]

    def path_logits(self, x, counts, right, statistics=None) -> tf.Tensor:
        """Logits of one path: channels ``[0, c)`` (``right`` false) or ``[C - c, C)`` of every layer.

        Args:
            x: images.
            counts: channel counts (e.g. :meth:`counts`).
            right: which side.
            statistics: ``None`` (each BatchNorm uses the batch statistics of ``x``, as in training) or one
                full-width ``(mean, variance)`` pair per BatchNorm in :attr:`batch_norms` order (e.g. from
                :meth:`calibration_statistics`); the path reads its channel range of each.
        """
        return self._path(x, counts, right, statistics)[0]

    def _path(self, x, counts, right, statistics=None):
        """``(logits, [(mean, variance, start, count) of every BatchNorm, path order]``): the statistics each
        BatchNorm normalised with, over its channel range ``[start, start + count)``."""
        counts = tf.cast(counts, tf.int32)
        start = tf.cast(right, tf.int32) * (self._full - counts)
        r = [(start[i], counts[i]) for i in range(len(self.max_widths))]
        s1, h1, h2, h3, s2, h4, head = r
        used = []

        def bn(layer, y, rng):
            if statistics is None:
                mean, variance = tf.nn.moments(y, axes=[0, 1, 2])
            else:
                full_mean, full_variance = statistics[len(used)]
                mean, variance = _slice(full_mean, 0, *rng), _slice(full_variance, 0, *rng)
            used.append((mean, variance) + tuple(rng))
            return layer(y, rng, mean, variance)

        x = tf.cast(x, tf.float32)
        x = bn(self.stem_bn, self.stem(x, None, s1), s1)
        if not self.binary:
            x = tf.nn.relu6(x)
        for block, (cin, hidden, cout, skip) in zip(self.blocks, [(s1, h1, s1, True), (s1, h2, s1, True),
                                                                  (s1, h3, s2, False), (s2, h4, s2, True)]):
            y = tf.nn.relu6(bn(block["expand_bn"], block["expand"](x, cin, hidden), hidden))
            y = bn(block["dw_bn"], block["dw"](y, hidden), hidden)
            if not self.binary:
                y = tf.nn.relu6(y)
            y = bn(block["project_bn"], block["project"](y, hidden, cout), cout)
            x = x + y if skip else y
        x = tf.nn.relu6(bn(self.head_bn, self.head(x, s2, head), head))
        x = tf.reduce_mean(x, axis=[1, 2])
        return self.classifier(x, head), used

    def bilateral_logits(self, x, widths) -> tf.Tensor:
        """Average of the left and right paths' logits for multipliers (or a counts tensor) ``widths``."""
        counts = widths if tf.is_tensor(widths) else self.counts(widths)
        return 0.5 * (self.path_logits(x, counts, False) + self.path_logits(x, counts, True))

    def call(self, inputs, training=None):
        return self.path_logits(inputs, self._full, False)

    # ------------------------------------------------------------------ training
    def _width_loss(self, x, y, counts):
        left = self.path_logits(x, counts, False)
        loss_l = self._ce(y, left)
        if not self.bilateral:
            return loss_l, left
        right = self.path_logits(x, counts, True)
        return 0.5 * (loss_l + self._ce(y, right)), 0.5 * (left + right)

    def _record(self, counts, loss):
        match = tf.equal(self._grid_counts, tf.cast(counts, tf.int32)[:, None])  # [layers, choices]
        update = tf.cast(match, tf.float32)
        self.prior_loss_sum.assign_add(update * tf.cast(loss, tf.float32))
        self.prior_count.assign_add(update)

    def train_step(self, data):
        x, y = data[0], data[1]
        counts = self.sample_counts()
        with tf.GradientTape() as tape:
            loss_w, logits = self._width_loss(x, y, counts)
            loss = loss_w
            if self.complementary:
                comp = self.complement(counts)
                loss_c, _ = self._width_loss(x, y, comp)
                loss = 0.5 * (loss_w + loss_c)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self._record(counts, loss_w)
        if self.complementary:
            self._record(comp, loss_c)
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                              tf.cast(tf.reshape(y, [-1]), tf.int32)), tf.float32))
        self._loss_tracker.update_state(loss)
        self._acc_tracker.update_state(acc)
        return {"loss": self._loss_tracker.result(), "accuracy": self._acc_tracker.result()}

    @property
    def metrics(self):
        return [self._loss_tracker, self._acc_tracker]

    # ------------------------------------------------------------------ evaluation and prior
    @property
    def scored_sides(self) -> Tuple[str, ...]:
        """The paths a width is scored on: ``("left", "right")``, or ``("left",)`` for the one-sided supernet."""
        return ("left", "right") if self.bilateral else ("left",)

    @tf.function
    def _score_batch(self, x, y, counts, right, statistics=None):
        """``[accuracy, mean CE]`` of one path on one batch (``statistics``: see :meth:`path_logits`)."""
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        logits = self.path_logits(x, counts, right, statistics)
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        return tf.stack([acc, self._ce(y, logits)])

    @tf.function
    def _batch_moments(self, x, counts, right):
        """The batch statistics every BatchNorm of one path uses on ``x``: ``[(mean, variance, start, count)]``."""
        return self._path(x, counts, right)[1]

    def calibration_statistics(self, widths, calibration_x, side: str = "left") -> List[Tuple[np.ndarray, np.ndarray]]:
        """BatchNorm statistics of one path of ``widths``, recalibrated on ``calibration_x``.

        The path runs on the calibration images with batch statistics, as :func:`calibrate_batchnorm`
        does for a Keras model, and each BatchNorm's statistics become the moments of its input over
        all calibration images: for a single batch exactly that batch's ``tf.nn.moments`` (what the
        extracted model calibrated on the same images stores), for several batches their pooled mean
        and variance (within-batch plus between-batch variance). Nothing in the supernet changes.

        Args:
            widths: seven multipliers, or a channel-count tensor (:meth:`counts`).
            calibration_x: images, run as one batch (an array or tensor), or an iterable of image
                batches or ``(x, y)`` batches (e.g. a list or a ``tf.data.Dataset``) to bound memory.
            side: ``"left"`` or ``"right"``.

        Returns:
            One ``(mean, variance)`` pair per BatchNorm in :attr:`batch_norms` order, float32 arrays of the
            layer's full width, ready for :meth:`path_logits`; entries outside the path's channel range
            are 0 (mean) and 1 (variance) and are never read.
        """
        if side not in ("left", "right"):
            raise WidthSearchError(f"side must be 'left' or 'right', got '{side}'")
        counts = widths if tf.is_tensor(widths) else self.counts(widths)
        batches = []
        for xb in _image_batches(calibration_x):
            xb = tf.convert_to_tensor(xb)
            moments = [(m.numpy().astype(np.float64), v.numpy().astype(np.float64), int(start), int(size))
                       for m, v, start, size in self._batch_moments(xb, counts, side == "right")]
            batches.append((int(xb.shape[0]), moments))
        if not batches:
            raise WidthSearchError("calibration_x holds no images; pass an array of images or a non-empty list "
                                   "of batches")
        total = sum(n for n, _ in batches)
        out = []
        for k, layer in enumerate(self.batch_norms):
            mean = sum(n * moments[k][0] for n, moments in batches) / total
            variance = sum(n * (moments[k][1] + (moments[k][0] - mean) ** 2) for n, moments in batches) / total
            start, size = batches[0][1][k][2:]
            full_mean, full_variance = np.zeros(layer.channels, np.float32), np.ones(layer.channels, np.float32)
            full_mean[start:start + size], full_variance[start:start + size] = mean, variance
            out.append((full_mean, full_variance))
        return out

    def score_widths(self, widths: Sequence[float], data: Iterable, calibration_x=None) -> Dict[str, float]:
        """Scores a width vector without training: mean over ``data`` batches of its paths' accuracy.

        The paths are :attr:`scored_sides`: left and right for the bilateral supernet, the left one
        alone for the one-sided supernet (``bilateral=False``), which is what that supernet trains.

        Args:
            widths: seven multipliers.
            data: iterable of ``(x, y)`` batches (a list of arrays or a ``tf.data.Dataset``).
            calibration_x: ``None``: every BatchNorm normalises a scoring batch with that batch's own
                statistics (batches should then be large, >= 128). Otherwise images (or batches of
                them, see :meth:`calibration_statistics`) on which each path's BatchNorm statistics are
                recalibrated for this width first; the scoring batches are then normalised with those,
                as the extracted, calibrated model would be in inference mode. Use training images
                other than ``data``. The supernet is not changed.

        Returns:
            ``{"score", "loss", "acc_left", "loss_left"}`` and, if bilateral, ``"acc_right"``,
            ``"loss_right"``; ``score`` and ``loss`` are the mean accuracy and CE over the scored paths.
        """
        counts = self.counts(widths)
        statistics = {side: None for side in self.scored_sides}
        if calibration_x is not None:
            statistics = {side: [(tf.constant(m), tf.constant(v)) for m, v in
                                 self.calibration_statistics(counts, calibration_x, side)]
                          for side in self.scored_sides}
        totals, n = np.zeros((len(self.scored_sides), 2)), 0
        for batch in data:
            x, y = tf.convert_to_tensor(batch[0]), tf.convert_to_tensor(batch[1])
            totals += np.stack([self._score_batch(x, y, counts, side == "right", statistics[side]).numpy()
                                for side in self.scored_sides])
            n += 1
        if n == 0:
            raise WidthSearchError("score_widths got no batches; pass a non-empty list of (x, y)")
        totals /= n
        out = {}
        for side, (acc, loss) in zip(self.scored_sides, totals):
            out[f"acc_{side}"], out[f"loss_{side}"] = float(acc), float(loss)
        out["score"], out["loss"] = float(totals[:, 0].mean()), float(totals[:, 1].mean())
        return out

    def width_prior(self, temperature: float = 0.05) -> np.ndarray:
        """Per-layer probabilities over the grid from the recorded training losses.

        ``p[l, k] ∝ exp(-(mean_loss[l, k] - min_k mean_loss[l, k]) / temperature)``; a multiplier never
        sampled gets the layer's average loss. Uniform before any training.
        """
        if temperature <= 0:
            raise WidthSearchError(f"temperature must be positive, got {temperature}")
        total, count = self.prior_loss_sum.numpy(), self.prior_count.numpy()
        probs = np.ones_like(total)
        for layer in range(total.shape[0]):
            seen = count[layer] > 0
            if not seen.any():
                continue
            mean = np.where(seen, total[layer] / np.maximum(count[layer], 1), 0.0)
            mean[~seen] = mean[seen].mean()
            probs[layer] = np.exp(-(mean - mean.min()) / temperature)
        return probs / probs.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ extraction
    def build_model(self, widths: Sequence[float], name: Optional[str] = None) -> tf.keras.Model:
        """A freshly initialised plain model of ``widths`` (this supernet's input, classes, full widths and
        binary setting) with none of the supernet's weights: the network that BCNet's final protocol trains
        from scratch. :meth:`extract` builds the same model and fills in one path's weights.

        Example:
            >>> model = net.build_model((0.5,) * 7)   # then compile and fit as any Keras model
        """
        return build_macro_model(widths, self.image_shape, self.num_classes, self.max_widths, self.binary, name=name)

    def extract(self, widths: Sequence[float], side: str = "left", calibration_x=None,
                name: Optional[str] = None) -> tf.keras.Model:
        """A plain Keras model of ``widths`` with the weights of one path.

        Args:
            widths: seven multipliers.
            side: ``"left"`` (channels ``[0, c)``) or ``"right"`` (``[C - c, C)``).
            calibration_x: images whose batch statistics become the BatchNorm moving statistics
                (the supernet keeps none); without them the moving statistics stay at 0 / 1.
            name: model name.

        Returns:
            The Functional model of :func:`build_macro_model` (binary 1x1 convs are ``QuantConv2D``).
        """
        if side not in ("left", "right"):
            raise WidthSearchError(f"side must be 'left' or 'right', got '{side}'")
        model = self.build_model(widths, name=name)
        counts = [int(c) for c in self.counts(widths).numpy()]
        full = self.max_widths

        def rng(i):
            start = full[i] - counts[i] if side == "right" else 0
            return slice(start, start + counts[i])

        s1, h1, h2, h3, s2, h4, head = (rng(i) for i in range(7))

        def set_bn(lname, src, sl):
            layer = model.get_layer(lname)
            c = sl.stop - sl.start
            layer.set_weights([src.gamma.numpy()[sl], src.beta.numpy()[sl], np.zeros(c, np.float32),
                               np.ones(c, np.float32)])

        model.get_layer("stem").set_weights([self.stem.kernel.numpy()[:, :, :, s1]])
        set_bn("stem_bn", self.stem_bn, s1)
        for i, (block, (cin, hidden, cout)) in enumerate(zip(self.blocks, [(s1, h1, s1), (s1, h2, s1), (s1, h3, s2),
                                                                          (s2, h4, s2)]), start=1):
            model.get_layer(f"mb{i}_expand").set_weights([block["expand"].kernel.numpy()[:, :, cin, hidden]])
            set_bn(f"mb{i}_expand_bn", block["expand_bn"], hidden)
            model.get_layer(f"mb{i}_dw").set_weights([block["dw"].kernel.numpy()[:, :, hidden, :]])
            set_bn(f"mb{i}_dw_bn", block["dw_bn"], hidden)
            model.get_layer(f"mb{i}_project").set_weights([block["project"].kernel.numpy()[:, :, hidden, cout]])
            set_bn(f"mb{i}_project_bn", block["project_bn"], cout)
        model.get_layer("head").set_weights([self.head.kernel.numpy()[:, :, s2, head]])
        set_bn("head_bn", self.head_bn, head)
        model.get_layer("logits").set_weights([self.classifier.kernel.numpy()[head], self.classifier.bias.numpy()])
        if calibration_x is not None:
            calibrate_batchnorm(model, calibration_x)
        return model

    def get_config(self):
        return {"input_shape": self.image_shape, "num_classes": self.num_classes, "max_widths": self.max_widths,
                "width_scale": self.width_scale, "binary": self.binary, "grid": self.grid,
                "bilateral": self.bilateral, "complementary": self.complementary, "name": self.name}


def _image_batches(calibration_x):
    """Image batches of ``calibration_x``: one array/tensor is one batch; an iterable yields arrays or ``(x, y)``."""
    if isinstance(calibration_x, (np.ndarray, tf.Tensor)):
        yield calibration_x
        return
    for item in calibration_x:
        yield item[0] if isinstance(item, (tuple, list)) else item


def calibrate_batchnorm(model: tf.keras.Model, x) -> None:
    """Sets every BatchNorm's moving statistics to the batch statistics of ``x`` (one forward pass)."""
    bns = [layer for layer in model.submodules if isinstance(layer, _L.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(tf.convert_to_tensor(x), training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m


__all__.append("calibrate_batchnorm")
