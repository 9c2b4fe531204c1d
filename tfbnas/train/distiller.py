"""Knowledge distillation as an ordinary Keras model: a student learns from labels and a frozen teacher.

The loss of one batch with labels ``y``, student logits ``s`` and teacher logits ``t`` is

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

(Hinton et al.'s distillation loss: the ``T^2`` factor keeps the soft-target gradients on the scale
of the hard-target ones when the temperature ``T`` changes). This is the discrepancy term of DCP-NAS
and the distributional loss of ReActNet with a real-valued Parent as teacher.
"""

import tensorflow as tf

from tfbnas.errors import DistillerError  # noqa: F401  (importable from here)


def distillation_kl(teacher_logits, student_logits, temperature: float):
    """Per-example ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    Args:
        teacher_logits, student_logits: ``[batch, classes]`` logits.
        temperature: softening temperature ``T`` (> 0).

    Returns:
        A ``[batch]`` tensor.
    """
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    p_t = tf.nn.softmax(t)
    kl = tf.reduce_sum(p_t * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), axis=-1)
    return kl * (temperature ** 2)


@tf.keras.utils.register_keras_serializable(package="tfbnas")
class Distiller(tf.keras.Model):
    """Trains ``student`` with hard labels and the softened outputs of a frozen ``teacher``.

    Both models map the same inputs to logits over the same classes. The teacher is frozen
    (``trainable=False``) and always called in inference mode (its BatchNorm statistics never
    change); only the student's weights are in the optimizer. ``fit`` minimises the loss in the
    module docstring; ``evaluate`` and ``predict`` run the student alone (no teacher needed), so
    ``val_loss`` is the student's cross-entropy and the compiled metrics are the student's.

    Args:
        student: the model being trained (e.g. the 1-bit Child).
        teacher: the model it learns from (e.g. the real-valued Parent twin, already trained).
        alpha: weight of the distillation term (``1 - alpha`` weights the cross-entropy), in [0, 1].
        temperature: softening temperature ``T`` (> 0).
        student_loss: the hard-label loss on student logits (default: sparse categorical
            cross-entropy from logits).

    Training logs ``loss`` (the total), ``ce_loss`` (hard-label term) and ``kd_loss`` (the
    ``T^2``-scaled KL) besides the compiled metrics.

    Example:
        >>> teacher.fit(x, y)                                # a trained real-valued model
        >>> distiller = Distiller(student, teacher, alpha=0.9, temperature=4.0)
        >>> distiller.compile(tf.keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        >>> distiller.fit(x, y, epochs=10)
        >>> distiller.evaluate(x_test, y_test)               # the student's loss and accuracy
        >>> student.save("student.keras")                    # the student is an ordinary model
    """

    def __init__(self, student: tf.keras.Model, teacher: tf.keras.Model, alpha: float = 0.9,
                 temperature: float = 4.0, student_loss=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(student, tf.keras.Model) or not isinstance(teacher, tf.keras.Model):
            raise DistillerError("student and teacher must be tf.keras.Model instances "
                                 f"(got {type(student).__name__} and {type(teacher).__name__}).")
        if student is teacher:
            raise DistillerError("student and teacher are the same model; distil from a separate (trained) teacher.")
        if not 0.0 <= float(alpha) <= 1.0:
            raise DistillerError(f"alpha={alpha} must be in [0, 1] (weight of the distillation term).")
        if not float(temperature) > 0.0:
            raise DistillerError(f"temperature={temperature} must be > 0 (e.g. 4.0).")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        # per-example (reduction NONE: the one Keras allows under tf.distribute outside compile), averaged below
        self.student_loss = tf.keras.losses.get(student_loss) if student_loss is not None else \
            tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.ce_tracker = tf.keras.metrics.Mean(name="ce_loss")
        self.kd_tracker = tf.keras.metrics.Mean(name="kd_loss")
        # The steps return metric results, which are already global under tf.distribute: report one replica's
        # (Keras's default sums them over replicas, and test_step's logs are not replaced by metric results).
        self.distribute_reduction_method = "first"
        if student.built and getattr(student, "inputs", None):
            # A Functional student fixes the input shape: build now so save()/summary() see the weights.
            self.build(student.input_shape)

    def compile(self, optimizer="adam", metrics=None, **kwargs):
        """Configure training: the student's optimizer and the metrics reported on student outputs.

        Args:
            optimizer: optimizer (or its name) that updates the student.
            metrics: metrics of the student's logits, e.g. ``["accuracy"]``.
            **kwargs: other ``tf.keras.Model.compile`` arguments (``run_eagerly``, ``jit_compile``...).
                A ``loss`` is not accepted: the loss is defined by the constructor arguments.
        """
        if kwargs.get("loss") is not None:
            raise DistillerError("Distiller.compile takes no loss: set student_loss, alpha and temperature "
                                 "in the constructor.")
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Re-compile a loaded Distiller (used by ``tf.keras.models.load_model``)."""
        config = dict(tf.keras.saving.deserialize_keras_object(config))
        config.pop("loss", None)
        self.compile(**config)
        if self.built and isinstance(self.optimizer, tf.keras.optimizers.Optimizer):
            self.optimizer.build(self.student.trainable_variables)

    @property
    def metrics(self):
        metrics = [self.loss_tracker, self.ce_tracker, self.kd_tracker]
        if getattr(self, "compiled_metrics", None) is not None:
            metrics += self.compiled_metrics.metrics
        return metrics

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _unpack(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise DistillerError("Distiller.fit/evaluate need labels: pass (images, labels) batches.")
        return x, y, sample_weight

    def _hard_loss(self, y, logits, sample_weight):
        ce = tf.reduce_mean(self.student_loss(y, logits, sample_weight=sample_weight))
        return ce + tf.add_n(self.student.losses) if self.student.losses else ce

    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        teacher_logits = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            logits = self.student(x, training=True)
            ce = self._hard_loss(y, logits, sample_weight)
            kd_per_example = distillation_kl(teacher_logits, logits, self.temperature)
            if sample_weight is not None:
                kd = tf.reduce_sum(kd_per_example * tf.cast(sample_weight, tf.float32)) / tf.cast(
                    tf.shape(kd_per_example)[0], tf.float32)
            else:
                kd = tf.reduce_mean(kd_per_example)
            loss = self.alpha * kd + (1.0 - self.alpha) * ce
            # Under n replicas the optimizer sums their gradients of local-batch means: 1/n makes it the global mean.
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        # Batch means weighted by batch size, as Keras averages its compiled loss over an epoch.
        batch = tf.shape(logits)[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.ce_tracker.update_state(ce, sample_weight=batch)
        self.kd_tracker.update_state(kd, sample_weight=batch)
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        logits = self.student(x, training=False)
        ce = self._hard_loss(y, logits, sample_weight)
        batch = tf.shape(logits)[0]
        self.loss_tracker.update_state(ce, sample_weight=batch)
        self.ce_tracker.update_state(ce, sample_weight=batch)
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics if m is not self.kd_tracker}

    def predict_step(self, data):
        x, _, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    def get_config(self):
        return {
            "student": tf.keras.saving.serialize_keras_object(self.student),
            "teacher": tf.keras.saving.serialize_keras_object(self.teacher),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "student_loss": tf.keras.losses.serialize(self.student_loss),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        student = tf.keras.saving.deserialize_keras_object(config.pop("student"), custom_objects=custom_objects)
        teacher = tf.keras.saving.deserialize_keras_object(config.pop("teacher"), custom_objects=custom_objects)
        loss = config.pop("student_loss", None)
        loss = tf.keras.losses.deserialize(loss) if loss is not None else None
        return cls(student, teacher, student_loss=loss, **config)


__all__ = ["Distiller", "DistillerError", "distillation_kl"]
