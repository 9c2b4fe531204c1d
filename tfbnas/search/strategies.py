"""Search strategies: what each architecture/weight update optimises, and their schedules.

A strategy decides *what to try*: the losses of the two phases, how the architecture gradient is
formed, the temperature and binarisation schedules and what happens between epochs. *How* it is
run (tapes, optimisers, distribution, ``model.fit``) lives in :mod:`tfbnas.search.engine`.

Equations (``a`` the Child's architecture parameters, ``w`` its weights, ``p_C`` / ``p_P`` the
Child's / Parent's output distributions, ``y`` the labels; docs/search.md has the full derivation):

* every strategy: ``softmax(a / T)``; ``T`` is ``t_start`` during the ``warmup_epochs`` (which
  train weights only: no architecture variable moves), then geometric from ``t_start`` to
  ``t_end`` over the remaining epochs (:meth:`Strategy.temperature`, the one schedule).
* ``darts`` (first-order DARTS):  ``L_arch = CE(p_C(x_val), y)``, ``L_w = CE(p_C(x_train), y)``.
* ``bats``: the temperature schedule with ``bats_t_start``/``bats_t_end``; a binarisation schedule
  (the first ``bats_real_epochs`` epochs search the real-valued supernet, the rest the 1-bit one)
  and a real-valued teacher: ``L_w = CE + bats_kl_weight * KL(p_P || p_C)``.
* ``dcp`` (DCP-NAS): a real-valued Parent supernet ``(w_P, a_P)`` searched alongside the Child.

  1. Child objective ``G = CE(p_C, y) + kl_weight * KL(p_P || p_C)`` for the weights; the
     architecture objective keeps the KL only with ``kl_arch`` (the KL rewards ops that
     binarisation does not change, pooling and skip, so it is off by default).
  2. Tangent direction ``t = dL_P / da_P`` with ``L_P = CE(p_P(x_val), y)``: the architecture
     gradient of the Parent (the book's ``sum_n dp_n/da`` read through its objective; the literal
     sum of probabilities is constant, so its gradient is 0).
  3. Tangent propagation (book eq. 4.33): ``D(a) = ||g - t||^2`` with ``g = dG/da``;
     ``h = H (t - g)`` (the book's sign: towards the Parent's direction) with ``H = I`` (default) or
     the Gauss-Newton/Fisher matrix ``1/K sum_k g_k g_k^T`` of ``K`` micro-batch gradients
     (``H v = 1/K sum_k g_k (g_k . v)``, no matrix; it keeps ``h`` in the span of the ``g_k``, nearly
     parallel to ``g``, so it hardly changes the direction of the step).
     Scale-aware (default): ``grad = g + lambda * ||g|| * h / (||h|| + eps)``, so ``lambda`` is the
     term's size relative to ``g``; literal (``tangent_normalize=False``): ``grad = g + 2 lambda h``.
  4. Decoupled optimisation (book eqs. 4.44-4.52): after the optimiser step ``a' = a + s``, the
     entries of ops whose weights rank above ``tau`` in ``R(w_m) = ||w_m||^2`` within their edge are
     backtracked, ``a~ = a' + psi_e * c_e`` with a learnable per-edge ``psi``.
     Scale-aware (default): ``c_e = rho * ||s_e|| * u_e / ||u_e||`` with ``u_e = mask_e * (a_e -
     mean(a_e))`` (the correction is ``rho * psi`` times the edge's architecture step); ``psi`` takes
     RMS-normalised steps ``psi <- |psi - eta_psi * d / sqrt(E[d^2])|`` with ``d = dL/dpsi_e =
     sum_m g'_{e,m} c_{e,m}`` (``g'`` the next architecture gradient).
     Literal (``decoupled_normalize=False``): ``c_e = eta1 * eta2 * mask_e * a_e`` and
     ``psi <- |psi - eta_psi * d|``.
  5. Inheritance (Algorithm 10, "search process of DCP-NAS": Parent phase; the Child takes the
     Parent's architecture (the book's ``a_hat <- a``); Child phase; the Parent takes the Child's).
     Both phases run concurrently here (one Parent and one Child step per batch), so at each epoch
     begin after the first the two copies compose: ``a <- a_P + (a - a_0)``, ``a_P <- a`` (``a_P``
     the Parent's architecture, ``a_0`` the common architecture at the previous epoch begin): the
     Child takes the Parent's architecture of the epoch and keeps its own epoch of updates
     (``arch_from_parent``); without it the Parent takes the Child's architecture at each epoch end.
     The Child takes the Parent's weights too only with ``inherit_weights``.

Every ingredient has a switch (``dcp_kl``, ``dcp_kl_arch``, ``dcp_tangent``, ``dcp_ggn``,
``dcp_decoupled``, ``dcp_inherit``, ``dcp_arch_from_parent``, ``dcp_inherit_weights``) for ablations.
"""

from typing import Dict, Optional

import tensorflow as tf

from tfbnas.search.distribute import assign_variable
from tfbnas.space.ops import IdentityOp, PoolOp

STRATEGIES = ("darts", "bats", "dcp")


def cross_entropy(logits, labels):
    """Per-example sparse softmax cross-entropy."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def kl_divergence(teacher_logits, student_logits):
    """Per-example ``KL(softmax(teacher) || softmax(student))``; the teacher gets no gradient."""
    teacher_logits = tf.stop_gradient(teacher_logits)
    p = tf.nn.softmax(teacher_logits)
    return tf.reduce_sum(p * (tf.nn.log_softmax(teacher_logits) - tf.nn.log_softmax(student_logits)), axis=-1)


class Strategy(tf.Module):
    """Base strategy (first-order DARTS behaviour) and the one temperature/warm-up schedule.

    Args:
        epochs: total search epochs (schedules are defined over them).
        t_start, t_end: softmax temperature ``T`` of ``softmax(a / T)``: ``t_start`` during the
            warm-up, then geometric from ``t_start`` (first epoch after the warm-up) to ``t_end``
            (last epoch).
        warmup_epochs: leading epochs that train weights only (``--arch_frozen_epochs``): no
            architecture variable of the Child or of the Parent moves in them.

    Subclasses override the hooks below. Variables a strategy owns (e.g. DCP's ``psi``) are
    ``tf.Variable`` attributes, so checkpoints of the search include them.
    """

    name = "darts"
    uses_parent = False  # needs a real-valued Parent supernet
    parent_searches = False  # the Parent runs its own architecture step

    def __init__(self, epochs: int = 1, t_start: float = 1.0, t_end: float = 1.0, warmup_epochs: int = 0,
                 name: Optional[str] = None):
        super().__init__(name=name or self.name)
        self.epochs = int(epochs)
        if not (t_start > 0 and t_end > 0):
            raise ValueError(f"temperatures must be > 0 (got t_start={t_start}, t_end={t_end})")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.warmup_epochs = int(warmup_epochs)
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs} must be >= 0")

    # ---- schedules (per epoch, python values: a change rebuilds the train function)
    def temperature(self, epoch: int) -> float:
        """``t_start`` during the warm-up, then geometric to ``t_end`` at the last epoch."""
        searching = self.epochs - self.warmup_epochs  # epochs with an architecture step
        if epoch < self.warmup_epochs:
            return self.t_start
        if searching <= 1:
            return self.t_end
        fraction = min(max((epoch - self.warmup_epochs) / (searching - 1), 0.0), 1.0)
        return self.t_start * (self.t_end / self.t_start) ** fraction

    def arch_enabled(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` runs architecture steps (False during the warm-up)."""
        return epoch >= self.warmup_epochs

    def child_binary(self, epoch: int) -> bool:
        return True

    # ---- losses (per-example vectors; the engine averages them over the global batch)
    def child_arch_loss(self, logits, labels, teacher_logits=None) -> Dict[str, tf.Tensor]:
        return {"ce": cross_entropy(logits, labels)}

    def child_weight_loss(self, logits, labels, teacher_logits=None) -> Dict[str, tf.Tensor]:
        return {"ce": cross_entropy(logits, labels)}

    def arch_micro_batches(self) -> int:
        """Micro-batches of the architecture step (DCP's GGN samples); 1 = one tape."""
        return 1

    def transform_arch_gradients(self, grads, micro_grads, tangent):
        """The architecture gradient the optimiser applies, and extra logs.

        A strategy that adds a tangent term logs ``"tangent"``; the engine then logs
        ``tangent_ratio`` (the added term's size after the optimiser's preconditioning).
        """
        return grads, {}

    # ---- hooks around updates and epochs (eager or graph; see the engine)
    def after_arch_update(self, engine, grads, alphas_before):
        return {}

    def on_epoch_begin(self, engine, epoch: int):
        pass

    def on_epoch_end(self, engine, epoch: int):
        pass

    def get_config(self):
        return {"name": self.name, "epochs": self.epochs, "t_start": self.t_start, "t_end": self.t_end,
                "warmup_epochs": self.warmup_epochs}


class Darts(Strategy):
    """First-order DARTS on the 1-bit supernet: the baseline and the control of every comparison."""

    name = "darts"


class Bats(Strategy):
    """BATS: temperature-controlled softmax, binarisation schedule and a real-valued teacher.

    Args:
        epochs: total search epochs.
        t_start, t_end: softmax temperature at the first and last searching epoch (the base class's
            geometric schedule). A temperature below 1 sharpens ``softmax(a / T)`` so that the
            supernet is evaluated close to the discrete architecture it will yield, which keeps the
            search from drifting to parameter-free ops.
        real_epochs: leading epochs in which the supernet runs real-valued before the 1-bit search.
        teacher: add ``kl_weight * KL(p_P || p_C)`` from a real-valued Parent supernet (trained
            on the same batches, sharing the Child's architecture) to the weight loss.
        kl_weight: weight of that term.
        warmup_epochs: leading weight-only epochs (see :class:`Strategy`).
    """

    name = "bats"

    def __init__(self, epochs=1, t_start=1.0, t_end=0.2, real_epochs=0, teacher=True, kl_weight=1.0,
                 warmup_epochs=0, name=None):
        super().__init__(epochs, t_start=t_start, t_end=t_end, warmup_epochs=warmup_epochs, name=name)
        self.real_epochs, self.teacher, self.kl_weight = int(real_epochs), bool(teacher), float(kl_weight)
        self.uses_parent = self.teacher

    def child_binary(self, epoch):
        return epoch >= self.real_epochs

    def child_weight_loss(self, logits, labels, teacher_logits=None):
        terms = {"ce": cross_entropy(logits, labels)}
        if self.teacher and teacher_logits is not None:
            terms["kl"] = self.kl_weight * kl_divergence(teacher_logits, logits)
        return terms

    def get_config(self):
        return {**super().get_config(), "real_epochs": self.real_epochs, "teacher": self.teacher,
                "kl_weight": self.kl_weight}


EPS = 1e-12
PSI_RMS_DECAY = 0.9  # EMA decay of E[(dL/dpsi)^2] in the scale-aware psi update
PSI_MAX = 4.0  # cap of psi (scale-aware mode): the correction stays below PSI_MAX * rho architecture steps


class Dcp(Strategy):
    """DCP-NAS: the 1-bit Child searched under a real-valued Parent (see the module docstring).

    Args:
        epochs: total search epochs.
        kl: add the Parent-Child KL term to the Child's weight objective (``G``).
        kl_weight: its weight.
        kl_arch: keep the KL term in the architecture objective as well.
        tangent: tangent propagation (``D(a)`` term) with weight ``tangent_weight``.
        tangent_weight: ``lambda`` of the book's eq. 4.32/4.33; scale-aware: the term's norm
            relative to ``||g||``.
        tangent_normalize: scale-aware tangent term (``lambda ||g|| h/||h||``); off: the literal
            ``2 lambda h``.
        ggn: approximate the Hessian by the Gauss-Newton outer product of ``ggn_samples``
            micro-batch gradients; off (default): ``H = I``.
        ggn_samples: micro-batches per architecture step (the batch must divide by it).
        decoupled: the backtracking correction of the decoupled optimisation.
        decoupled_weight: ``rho``, the correction's norm relative to the architecture step (times
            ``psi``; scale-aware mode).
        decoupled_normalize: scale-aware correction and psi steps; off: the literal
            ``eta1 * eta2 * psi * a`` and plain gradient steps of psi.
        tau: rank threshold (0-1) of an op's weight norm within its edge for the correction.
        psi_lr: learning rate of the learnable ``psi``.
        inherit: Algorithm 10's inheritance between Parent and Child at epoch boundaries.
        arch_from_parent: at each epoch begin after the first the Child takes the Parent's
            architecture (composed with its own epoch of updates, see the module docstring); off:
            the Parent takes the Child's architecture at each epoch end (no Parent -> Child flow).
        inherit_weights: at each epoch begin after the first the Child also takes the Parent's
            weights and BatchNorm statistics (the book's weight inheritance).
        t_start, t_end, warmup_epochs: the base class's schedules.
    """

    name = "dcp"
    uses_parent = True
    parent_searches = True

    def __init__(self, epochs=1, kl=True, kl_weight=1.0, kl_arch=False, tangent=True, tangent_weight=0.5,
                 tangent_normalize=True, ggn=False, ggn_samples=4, decoupled=True, decoupled_weight=0.5,
                 decoupled_normalize=True, tau=0.5, psi_lr=0.01, inherit=True, arch_from_parent=True,
                 inherit_weights=False, t_start=1.0, t_end=1.0, warmup_epochs=0, name=None):
        super().__init__(epochs, t_start=t_start, t_end=t_end, warmup_epochs=warmup_epochs, name=name)
        self.kl, self.kl_weight, self.kl_arch = bool(kl), float(kl_weight), bool(kl_arch)
        self.tangent, self.tangent_weight = bool(tangent), float(tangent_weight)
        self.tangent_normalize = bool(tangent_normalize)
        self.ggn, self.ggn_samples = bool(ggn), int(ggn_samples)
        self.decoupled, self.decoupled_weight = bool(decoupled), float(decoupled_weight)
        self.decoupled_normalize = bool(decoupled_normalize)
        self.tau, self.psi_lr = float(tau), float(psi_lr)
        self.inherit, self.arch_from_parent = bool(inherit), bool(arch_from_parent)
        self.inherit_weights = bool(inherit_weights)
        if self.ggn_samples < 1:
            raise ValueError("dcp_ggn_samples must be >= 1")
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"dcp_tau={tau} must be in [0, 1)")
        self._state_built = False

    # ---- state of the decoupled optimisation and of the inheritance (created with the alphas' shapes)
    def build_state(self, alphas):
        if self._state_built:
            return
        self.psi = [tf.Variable(tf.ones([a.shape[0], 1]), trainable=False, name=f"psi_{i}")
                    for i, a in enumerate(alphas)]
        self.psi_sq = [tf.Variable(tf.zeros([a.shape[0], 1]), trainable=False, name=f"psi_sq_{i}")
                       for i, a in enumerate(alphas)]
        self.psi_steps = tf.Variable(0.0, trainable=False, name="psi_steps")
        self.prev_correction = [tf.Variable(tf.zeros(a.shape), trainable=False, name=f"prev_correction_{i}")
                                for i, a in enumerate(alphas)]
        self.masks = [tf.Variable(tf.zeros(a.shape), trainable=False, name=f"rank_mask_{i}") for i, a in enumerate(alphas)]
        # the common architecture of Parent and Child at the last epoch begin (Algorithm 10's composition)
        self.epoch_start_arch = [tf.Variable(tf.convert_to_tensor(a), trainable=False, name=f"epoch_start_arch_{i}")
                                 for i, a in enumerate(alphas)]
        self._state_built = True

    def child_arch_loss(self, logits, labels, teacher_logits=None):
        terms = {"ce": cross_entropy(logits, labels)}
        if self.kl and self.kl_arch and teacher_logits is not None:
            terms["kl"] = self.kl_weight * kl_divergence(teacher_logits, logits)
        return terms

    def child_weight_loss(self, logits, labels, teacher_logits=None):
        terms = {"ce": cross_entropy(logits, labels)}
        if self.kl and teacher_logits is not None:
            terms["kl"] = self.kl_weight * kl_divergence(teacher_logits, logits)
        return terms

    def arch_micro_batches(self):
        return self.ggn_samples if (self.tangent and self.ggn) else 1

    def transform_arch_gradients(self, grads, micro_grads, tangent):
        """``g + lambda ||g|| h/||h||`` (scale-aware) or ``g + 2 lambda h`` (literal), ``h = H (t - g)``;
        ``H v = 1/K sum_k g_k (g_k . v)`` (GGN) or ``v`` (``H = I``).

        The sign is the book's eq. 4.33 with its Fisher substitution for ``H_G`` (eq. 4.41): the term
        pulls the Child's step towards the Parent's direction ``t`` (``H = I``, literal:
        ``(1 - 2 lambda) g + 2 lambda t``). docs/search.md discusses it.
        """
        logs = {}
        if not self.tangent or tangent is None:
            return grads, logs
        diffs = [t - g for g, t in zip(grads, tangent)]  # the book's sign: towards the Parent's direction
        logs["tangent"] = self.tangent_weight * tf.add_n([tf.reduce_sum(tf.square(d)) for d in diffs])
        if self.ggn:
            k = len(micro_grads)
            dots = [tf.add_n([tf.reduce_sum(gk_i * d_i) for gk_i, d_i in zip(gk, diffs)]) for gk in micro_grads]
            hv = [tf.add_n([dots[j] * micro_grads[j][i] for j in range(k)]) / k for i in range(len(grads))]
        else:
            hv = diffs
        if self.tangent_normalize:
            scale = self.tangent_weight * tf.linalg.global_norm(grads) / (tf.linalg.global_norm(hv) + EPS)
        else:
            scale = tf.constant(2.0 * self.tangent_weight)
        terms = [scale * h for h in hv]
        out = [g + term for g, term in zip(grads, terms)]
        logs["tangent_grad_norm"] = tf.linalg.global_norm(terms)
        # agreement of the Child's and the Parent's architecture gradients
        norms = tf.linalg.global_norm(grads) * tf.linalg.global_norm(tangent)
        logs["tangent_cos"] = _dot(grads, tangent) / (norms + EPS)
        return out, logs

    def after_arch_update(self, engine, grads, alphas_before):
        """Decoupled optimisation: learn psi from the last correction, then backtrack selected entries."""
        if not self.decoupled:
            return {}
        alphas = engine.child.arch_variables
        norms = engine.child_edge_weight_norms()  # [num_edges, num_ops] per cell type
        if self.decoupled_normalize:
            steps = assign_variable(self.psi_steps, 1.0, add=True)
            bias = 1.0 - tf.pow(PSI_RMS_DECAY, tf.convert_to_tensor(steps))
        else:
            eta = engine.arch_lr() * engine.weight_lr()
        total, psi_grad, corrections, arch_steps, psis = 0.0, 0.0, [], [], []
        for i, alpha in enumerate(alphas):
            # dL/dpsi_e = sum_m g_{e,m} * c_{e,m}: this step's gradient at the corrected point, last correction.
            dpsi = tf.reduce_sum(grads[i] * self.prev_correction[i], axis=1, keepdims=True)
            if self.decoupled_normalize:
                sq = PSI_RMS_DECAY * self.psi_sq[i] + (1.0 - PSI_RMS_DECAY) * tf.square(dpsi)
                assign_variable(self.psi_sq[i], sq)
                step_psi = self.psi_lr * dpsi / (tf.sqrt(sq / bias) + EPS)
                new_psi = tf.minimum(tf.abs(self.psi[i] - step_psi), PSI_MAX)
            else:
                new_psi = tf.abs(self.psi[i] - self.psi_lr * dpsi)
            assign_variable(self.psi[i], new_psi)
            psi_grad += tf.reduce_sum(tf.abs(dpsi))
            mask = rank_mask(norms[i], self.tau)
            before = alphas_before[i]
            arch_step = tf.convert_to_tensor(alpha) - before  # the optimiser's step of this update
            if self.decoupled_normalize:
                direction = mask * (before - tf.reduce_mean(before, axis=1, keepdims=True))
                unit = direction / (tf.norm(direction, axis=1, keepdims=True) + EPS)
                base = self.decoupled_weight * tf.norm(arch_step, axis=1, keepdims=True) * unit
            else:
                base = eta * mask * before
            correction = new_psi * base
            assign_variable(alpha, correction, add=True)
            assign_variable(self.prev_correction[i], base)
            assign_variable(self.masks[i], mask)
            total += tf.reduce_sum(tf.abs(correction))
            corrections.append(correction)
            arch_steps.append(arch_step)
            psis.append(new_psi)
        ratio = tf.linalg.global_norm(corrections) / (tf.linalg.global_norm(arch_steps) + EPS)
        psi_mean = tf.reduce_mean(tf.concat(psis, axis=0))
        return {"decoupled": total, "decoupled_ratio": ratio, "psi_grad": psi_grad, "psi_mean": psi_mean}

    def on_epoch_begin(self, engine, epoch):
        """Algorithm 10 at an epoch boundary (eager, cross-replica context)."""
        child, parent = engine.child.arch_variables, engine.parent.arch_variables
        if self.inherit and epoch > 0:
            if self.inherit_weights:
                engine.child.copy_weights_from(engine.parent)
            if self.arch_from_parent:
                for mine, theirs, start in zip(child, parent, self.epoch_start_arch):
                    composed = theirs + (mine - start)  # a_hat <- a (line 7), plus the Child's epoch of updates
                    mine.assign(composed)
                    theirs.assign(composed)  # a <- a_hat (line 13)
        for start, mine in zip(self.epoch_start_arch, child):
            start.assign(mine)

    def on_epoch_end(self, engine, epoch):
        if self.inherit and not self.arch_from_parent:
            for mine, theirs in zip(engine.parent.arch_variables, engine.child.arch_variables):
                mine.assign(theirs)  # epoch end: cross-replica context

    def get_config(self):
        return {**super().get_config(), "kl": self.kl, "kl_weight": self.kl_weight, "kl_arch": self.kl_arch,
                "tangent": self.tangent, "tangent_weight": self.tangent_weight,
                "tangent_normalize": self.tangent_normalize, "ggn": self.ggn, "ggn_samples": self.ggn_samples,
                "decoupled": self.decoupled, "decoupled_weight": self.decoupled_weight,
                "decoupled_normalize": self.decoupled_normalize, "tau": self.tau, "psi_lr": self.psi_lr,
                "inherit": self.inherit, "arch_from_parent": self.arch_from_parent,
                "inherit_weights": self.inherit_weights}


def _dot(xs, ys):
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(xs, ys)])


def rank_mask(norms, tau: float):
    """1 where an op's weight norm ranks above ``tau`` (as a fraction 0-1) among the ops of its edge."""
    m = tf.shape(norms)[1]
    ranks = tf.argsort(tf.argsort(norms, axis=1), axis=1)  # 0 = smallest
    fraction = tf.cast(ranks, tf.float32) / tf.cast(tf.maximum(m - 1, 1), tf.float32)
    return tf.cast(fraction > tau, tf.float32)


def op_weight_norm(op) -> float:
    """``R(w_m) = ||w_m||^2`` of a supernet op; pooling counts as a 1/K^2 kernel, identity as 1, zero as 0."""
    if op is None:
        return 0.0
    if isinstance(op, PoolOp):
        return 1.0 / float(op.pool_size ** 2)
    if isinstance(op, IdentityOp):
        return 1.0
    return None  # weighted op: computed from its variables


def make_strategy(name: str, epochs: int, **kwargs) -> Strategy:
    """A strategy by name with its keyword arguments (``dcp_*`` / ``bats_*`` flags without prefix, and
    ``t_start``, ``t_end``, ``warmup_epochs`` for every strategy)."""
    if name == "darts":
        return Darts(epochs, **kwargs)
    if name == "bats":
        return Bats(epochs, **kwargs)
    if name == "dcp":
        return Dcp(epochs, **kwargs)
    raise ValueError(f"unknown search strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
