"""The search model: a ``keras.Model`` whose ``train_step`` runs one decoupled search step.

Each step takes a batch of the search-train split and one of the search-validation split and

1. (strategies with a searching Parent) updates the real-valued Parent: an architecture tape on
   the validation batch, whose gradient is also the *tangent direction* handed to the Child, then
   a weight tape on the training batch; the Parent's outputs serve as the Child's teacher;
2. updates the Child's architecture variables only (a tape that watches nothing else) on the
   validation batch, with the strategy's loss and gradient transform, and the arch optimiser;
3. updates the Child's weights only on the training batch with the weight optimiser
   (global-norm clipping, weight decay on real-valued weights only).

Because it is an ordinary ``model.fit`` step, progress bars, callbacks, TensorBoard and
``tf.distribute`` work unchanged. Under several replicas each replica's loss is its local mean;
gradients are all-reduced explicitly to the global mean *before* the strategy combines them (the
tangent/GGN terms are products of gradients, so they must see global gradients), then applied with
``skip_gradients_aggregation=True``; the logged values are means over replicas too.
"""

from typing import Dict, List, Optional

import tensorflow as tf

from tfbnas.search.distribute import assign_variable, replica_mean
from tfbnas.search.strategies import Strategy, op_weight_norm
from tfbnas.space.ops import FusedEdgeOps, SearchConvBN
from tfbnas.space.supernet import SuperNet


def _mean_terms(terms: Dict[str, tf.Tensor]):
    """Sum of the per-example loss terms, averaged over the local batch; and the per-term means."""
    means = {k: tf.reduce_mean(v) for k, v in terms.items()}
    return tf.add_n(list(means.values())), means


def latent_binary_kernels(model: tf.keras.Model) -> List[tf.Variable]:
    """The latent kernels of binary convs (no weight decay: only their sign matters)."""
    kernels = []
    for m in model.submodules:
        if isinstance(m, SearchConvBN) and hasattr(m, "kernel"):
            kernels.append(m.kernel)
        elif isinstance(m, FusedEdgeOps) and m.built:
            kernels.extend(m.binary_kernels)
    return kernels


class SearchModel(tf.keras.Model):
    """Runs a search strategy on a 1-bit Child supernet (and its real-valued Parent) under ``model.fit``.

    Args:
        child: the 1-bit :class:`~tfbnas.space.supernet.SuperNet` being searched.
        strategy: a :class:`~tfbnas.search.strategies.Strategy`.
        parent: the real-valued Parent supernet (same configuration, ``binary=False``) when the
            strategy uses one.
        weight_decay: L2 weight decay of real-valued weights (latent binary kernels are exempt).
        arch_weight_decay: L2 decay of the architecture parameters (DARTS: 1e-3).
        grad_clip: global-norm clip of the weight gradients (DARTS: 5).

    ``compile(arch_optimizer, weight_optimizer, parent_arch_optimizer=None, parent_weight_optimizer=None)``
    takes one optimiser per variable set. ``fit`` expects batches ``((x_train, y_train), (x_val, y_val))``.

    Example:
        >>> child = SuperNet(10, init_channels=8, num_cells=3)
        >>> search = SearchModel(child, Darts(epochs=1))
        >>> search.compile(tf.keras.optimizers.Adam(3e-4, beta_1=0.5), tf.keras.optimizers.SGD(0.025, 0.9))
        >>> search.fit(tf.data.Dataset.zip((splits.search_train, splits.search_val)), steps_per_epoch=10)
    """

    def __init__(self, child: SuperNet, strategy: Strategy, parent: Optional[SuperNet] = None,
                 weight_decay: float = 3e-4, arch_weight_decay: float = 1e-3, grad_clip: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        if strategy.uses_parent and parent is None:
            raise ValueError(f"strategy '{strategy.name}' needs a real-valued Parent supernet")
        self.child, self.parent, self.strategy = child, parent, strategy
        self.weight_decay, self.arch_weight_decay, self.grad_clip = weight_decay, arch_weight_decay, grad_clip
        # python-level switches of the current epoch (a change rebuilds the train function)
        self.child_binary = True
        self.arch_enabled = True
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        # train_step returns logs that every replica shares (their means over replicas): report one of them
        # instead of Keras's default sum over replicas.
        self.distribute_reduction_method = "first"

    @property
    def arch_frozen_epochs(self) -> int:
        """Leading weight-only epochs (the strategy's ``warmup_epochs``)."""
        return self.strategy.warmup_epochs

    # ------------------------------------------------------------------ set-up

    def compile(self, arch_optimizer, weight_optimizer, parent_arch_optimizer=None, parent_weight_optimizer=None,
                **kwargs):
        super().compile(**kwargs)
        self.arch_optimizer, self.weight_optimizer = arch_optimizer, weight_optimizer
        self.parent_arch_optimizer, self.parent_weight_optimizer = parent_arch_optimizer, parent_weight_optimizer
        if self.parent is not None and parent_weight_optimizer is None:
            raise ValueError("a search with a Parent needs parent_weight_optimizer (and parent_arch_optimizer "
                             "when the Parent searches)")

    def build_supernets(self, input_shape):
        """Creates every variable (both supernets, strategy state) from an input shape ``(H, W, C)``."""
        x = tf.zeros((2,) + tuple(input_shape))
        self.child(x, training=False)
        if self.parent is not None:
            self.parent(x, training=False)
            self.parent.copy_weights_from(self.child)  # start from the same point
            for mine, theirs in zip(self.parent.arch_variables, self.child.arch_variables):
                mine.assign(theirs)
        if hasattr(self.strategy, "build_state"):
            self.strategy.build_state(self.child.arch_variables)
        # Optimiser slots now, not inside the first trace: a tf.function that creates variables traces twice.
        nets = [(self.child, self.arch_optimizer, self.weight_optimizer)]
        if self.parent is not None:
            nets.append((self.parent, self.parent_arch_optimizer, self.parent_weight_optimizer))
        for net, arch_optimizer, weight_optimizer in nets:
            for optimizer, variables in ((arch_optimizer, net.arch_variables), (weight_optimizer, net.weight_variables)):
                if optimizer is not None and hasattr(optimizer, "build"):
                    optimizer.build(variables)
        self._decay_vars = self._real_weights(self.child)
        if self.parent is not None:
            self._parent_decay_vars = self._real_weights(self.parent)

    @staticmethod
    def _real_weights(net):
        binary = {v.ref() for v in latent_binary_kernels(net)}
        return {v.ref() for v in net.weight_variables if v.ref() not in binary and "kernel" in v.name}

    def call(self, inputs, training=None):
        return self.child(inputs, training=training, binary=self.child_binary)

    # ------------------------------------------------------------------ helpers for strategies

    def arch_lr(self):
        return _current_lr(self.arch_optimizer)

    def weight_lr(self):
        return _current_lr(self.weight_optimizer)

    def child_edge_weight_norms(self):
        """``R(w_m) = ||w_m||^2`` per (edge, op), averaged over the cells sharing the parameters."""
        out = []
        for reduction in (False, True):
            norms = [cell.edge_weight_norms(op_weight_norm) for cell in self.child.cells if cell.reduction == reduction]
            out.append(tf.add_n(norms) / len(norms))
        return out

    # ------------------------------------------------------------------ the step

    def _weight_update(self, net, optimizer, x, y, loss_fn, decay_vars, binary):
        variables = net.weight_variables
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            logits = net(x, training=True, binary=binary)
            loss, terms = loss_fn(logits)
            l2 = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables if v.ref() in decay_vars])
            loss = loss + 0.5 * self.weight_decay * l2
        grads = replica_mean(tape.gradient(loss, variables))
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        if self.grad_clip:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip)
        optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
        return logits, terms

    def _arch_gradients(self, net, x, y, loss_fn, micro_batches, binary):
        """Mean architecture gradient over ``micro_batches`` slices of the batch, plus the slices' gradients."""
        alphas = net.arch_variables
        xs, ys = tf.split(x, micro_batches), tf.split(y, micro_batches)
        micro, logits_all, term_sums = [], [], {}
        for xk, yk in zip(xs, ys):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(alphas)
                logits = net(xk, training=True, binary=binary)
                loss, terms = loss_fn(logits, yk, len(logits_all))
                loss = loss + 0.5 * self.arch_weight_decay * tf.add_n([tf.reduce_sum(tf.square(a)) for a in alphas])
            micro.append(replica_mean(tape.gradient(loss, alphas)))
            logits_all.append(logits)
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v / micro_batches
        grads = [tf.add_n([g[i] for g in micro]) / micro_batches for i in range(len(alphas))]
        return grads, micro, tf.concat(logits_all, 0), term_sums

    def parent_phase(self, x_train, y_train, x_val, y_val):
        """Parent architecture step (its gradient is the tangent direction) and weight step.

        Returns:
            ``(tangent, teacher_val_logits, teacher_train_logits, logs)``.
        """
        parent, strategy, logs = self.parent, self.strategy, {}
        tangent, teacher_val = None, None
        if strategy.parent_searches:
            if self.arch_enabled:  # warm-up: the Parent's architecture stays where it is, like the Child's
                def parent_arch_loss(logits, labels, _):
                    return _mean_terms({"ce": strategy_ce(logits, labels)})
                tangent, _, teacher_val, parent_terms = self._arch_gradients(
                    parent, x_val, y_val, parent_arch_loss, 1, binary=False)
                self.parent_arch_optimizer.apply_gradients(zip(tangent, parent.arch_variables),
                                                           skip_gradients_aggregation=True)
                logs["parent_val_ce"] = parent_terms["ce"]
        else:
            for mine, theirs in zip(parent.arch_variables, self.child.arch_variables):
                assign_variable(mine, theirs)  # a teacher-only Parent shares the Child's architecture
            if self.arch_enabled:
                teacher_val = parent(x_val, training=False, binary=False)
        teacher_train, parent_terms = self._weight_update(
            parent, self.parent_weight_optimizer, x_train, y_train,
            lambda logits: _mean_terms({"ce": strategy_ce(logits, y_train)}), self._parent_decay_vars, binary=False)
        logs["parent_ce"] = parent_terms["ce"]
        return tangent, teacher_val, teacher_train, logs

    def arch_phase(self, x_val, y_val, teacher_val=None, tangent=None):
        """One update of the Child's architecture variables (and nothing else) on a validation batch."""
        strategy = self.strategy
        k = strategy.arch_micro_batches()
        teachers = tf.split(teacher_val, k) if teacher_val is not None else None

        def child_arch_loss(logits, labels, index):
            teacher = teachers[index] if teachers is not None else None
            return _mean_terms(strategy.child_arch_loss(logits, labels, teacher))

        alphas = self.child.arch_variables
        plain, micro, val_logits, arch_terms = self._arch_gradients(
            self.child, x_val, y_val, child_arch_loss, k, binary=self.child_binary)
        grads, extra = strategy.transform_arch_gradients(plain, micro, tangent)
        before = [tf.identity(a) for a in alphas]
        self.arch_optimizer.apply_gradients(zip(grads, alphas), skip_gradients_aggregation=True)
        if "tangent" in extra:
            # The added term's size after the optimiser's preconditioning: ||P (grad - g)|| / ||P g||.
            # tangent_perp_ratio: the same for the part of P (grad - g) orthogonal to P g (a part parallel to
            # P g only rescales the step, which Adam's normalisation largely undoes).
            p = optimizer_preconditioner(self.arch_optimizer, alphas)
            added = [pi * (gr - g) for pi, gr, g in zip(p, grads, plain)]
            base = [pi * g for pi, g in zip(p, plain)]
            base_sq = tf.add_n([tf.reduce_sum(tf.square(b)) for b in base]) + 1e-24
            along = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(added, base)]) / base_sq
            base_norm = tf.sqrt(base_sq)
            extra["tangent_ratio"] = tf.linalg.global_norm(added) / base_norm
            perp = [a - along * b for a, b in zip(added, base)]
            extra["tangent_perp_ratio"] = tf.linalg.global_norm(perp) / base_norm
        extra.update(strategy.after_arch_update(self, grads, before))
        logs = {f"arch_{name}": v for name, v in arch_terms.items()}
        logs.update(extra)
        logs["val_accuracy_step"] = _accuracy(val_logits, y_val)
        return logs

    def weight_phase(self, x_train, y_train, teacher_train=None):
        """One update of the Child's weights (and nothing else) on a training batch."""
        logits, terms = self._weight_update(
            self.child, self.weight_optimizer, x_train, y_train,
            lambda out: _mean_terms(self.strategy.child_weight_loss(out, y_train, teacher_train)),
            self._decay_vars, binary=self.child_binary)
        logs = {f"w_{name}": v for name, v in terms.items()}
        logs["loss"] = tf.add_n(list(terms.values()))
        logs["accuracy"] = _accuracy(logits, y_train)
        return logs

    @tf.autograph.experimental.do_not_convert  # Python control flow only: no need for AutoGraph
    def train_step(self, data):
        (x_train, y_train), (x_val, y_val) = data
        logs = {}
        tangent, teacher_val, teacher_train = None, None, None
        if self.parent is not None:
            tangent, teacher_val, teacher_train, parent_logs = self.parent_phase(x_train, y_train, x_val, y_val)
            logs.update(parent_logs)
            # One supernet pass at a time: nothing ties the Child's passes to the Parent's, so the executor
            # would run them side by side and keep both tapes' activations alive (peak memory).
            x_val, x_train = _after_update(self.parent.weight_variables, x_val, x_train)
        if self.arch_enabled:
            logs.update(self.arch_phase(x_val, y_val, teacher_val, tangent))
            (x_train,) = _after_update(self.child.arch_variables, x_train)
        logs.update(self.weight_phase(x_train, y_train, teacher_train))
        logs["temperature"] = tf.convert_to_tensor(self.child.temperature)
        return _replica_mean_logs(logs)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        x, y = data
        logits = self.child(x, training=False, binary=self.child_binary)
        return _replica_mean_logs({"loss": tf.reduce_mean(strategy_ce(logits, y)), "accuracy": _accuracy(logits, y)})


def _after_update(variables, *tensors):
    """``tensors``, available to later ops only once the update of ``variables[0]`` written so far is done
    (a read of a variable is ordered after its writes). That update waits for the end of the backward pass:
    the first weight (the stem's) gets its gradient last, and a global-norm clip needs every gradient; an
    architecture variable's gradient collects every cell's."""
    with tf.control_dependencies([variables[0].read_value()]):
        return tuple(tf.identity(t) for t in tensors)


def _replica_mean_logs(logs):
    """Every log (a local-batch mean) as its mean over replicas, so all replicas and workers report the
    global batch's value."""
    names = list(logs)
    return dict(zip(names, replica_mean([tf.cast(logs[k], tf.float32) for k in names])))


def strategy_ce(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def _accuracy(logits, labels):
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64)), tf.float32))


def optimizer_preconditioner(optimizer, variables):
    """Per-coordinate preconditioner ``P`` of the optimiser's last step, one tensor per variable.

    Adam (tf_keras) steps ``-lr_t * m / (sqrt(v) + eps)``: ``P = 1 / (sqrt(v) + eps)`` read from its
    second-moment slot ``v`` (call after ``apply_gradients``; the bias correction ``lr_t`` is one scalar
    and cancels in ratios). Optimisers without a second moment: ``P = 1``.
    """
    velocities = getattr(optimizer, "_velocities", None)
    index = getattr(optimizer, "_index_dict", None)
    if not velocities or index is None or not hasattr(optimizer, "_var_key"):
        return [tf.ones_like(v) for v in variables]
    epsilon = getattr(optimizer, "epsilon", 1e-7)
    return [1.0 / (tf.sqrt(tf.convert_to_tensor(velocities[index[optimizer._var_key(v)]])) + epsilon)
            for v in variables]


def _current_lr(optimizer):
    lr = optimizer.learning_rate
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        return tf.cast(lr(optimizer.iterations), tf.float32)
    return tf.cast(tf.convert_to_tensor(lr), tf.float32)
