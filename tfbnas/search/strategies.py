"""Search strategies: what each architecture/weight update optimises, and their schedules.

A strategy decides *what to try*: the losses of the two phases, how the architecture gradient is
formed, the temperature and binarisation schedules and what happens between epochs. *How* it is
run (tapes, optimisers, distribution, ``model.fit``) lives in :mod:`tfbnas.search.engine`.

Equations (``a`` the Child's architecture parameters, ``w`` its weights, ``p_C`` / ``p_P`` the
Child's / Parent's output distributions, ``y`` the labels):

* ``darts`` (first-order DARTS):  ``L_arch = CE(p_C(x_val), y)``, ``L_w = CE(p_C(x_train), y)``.
* ``bats``: ``softmax(a / T)`` with ``T`` annealed geometrically from ``bats_t_start`` to
  ``bats_t_end``; a binarisation schedule (the first ``bats_real_epochs`` epochs search the
  real-valued supernet, the rest the 1-bit one) and a real-valued teacher:
  ``L_w = CE + bats_kl_weight * KL(p_P || p_C)``.
* ``dcp`` (DCP-NAS): a real-valued Parent supernet ``(w_P, a_P)`` searched alongside the Child.

  1. Child objective ``G = CE(p_C, y) + dcp_kl_weight * KL(p_P || p_C)`` (the Child learns the
     Parent's distribution).
  2. Tangent direction ``t = dL_P / da_P`` with ``L_P = CE(p_P(x_val), y)``: the architecture
     gradient of the Parent (the book's ``sum_n dp_n/da`` read through its objective
     ``f = sum_n y_n log p_n``; the literal sum of probabilities is constant, so its gradient is 0).
  3. Tangent propagation: ``D(a) = ||dG/da - t||^2`` is minimised with ``G``; its gradient is
     ``2 H (g - t)`` with ``g = dG/da`` and ``H`` the Hessian of ``G``, approximated by the
     Generalized Gauss-Newton / Fisher matrix ``H ~ 1/K sum_k g_k g_k^T`` from the gradients ``g_k``
     of ``K`` micro-batches (``dcp_ggn_samples``), so
     ``grad_a = g + 2 * dcp_tangent_weight * H (g - t)`` and no Hessian is formed
     (``H v = 1/K sum_k g_k (g_k . v)``).
  4. Decoupled optimisation (book eqs. 4.44-4.52): after the optimiser step ``a' = a - eta1 * grad``,
     the entries of edges whose op weights rank above ``tau`` in squared norm ``R(w_m) = ||w_m||^2``
     are backtracked, ``a~ = a' + eta * psi_e * a`` with ``eta = eta1 * eta2`` (architecture lr times
     weight lr) and a learnable per-edge ``psi`` updated as ``psi <- |psi - eta_psi * dL/dpsi|``,
     ``dL/dpsi_e = sum_m g'_{e,m} * eta * a_{e,m}`` (``g'`` the next architecture gradient).
  5. Inheritance: at each epoch start after the first the Child takes the Parent's weights; at
     each epoch end the Parent takes the Child's architecture (Algorithm "search process of
     DCP-NAS": alternate ``a_hat <- a`` / ``a <- a_hat``).

Every ingredient has a switch (``dcp_kl``, ``dcp_tangent``, ``dcp_ggn``, ``dcp_decoupled``,
``dcp_inherit``) for ablations.
"""

import math
from typing import Dict, Optional

import numpy as np
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
    """Base strategy (first-order DARTS behaviour).

    Args:
        epochs: total search epochs (schedules are defined over them).

    Subclasses override the hooks below. Variables a strategy owns (e.g. DCP's ``psi``) are
    ``tf.Variable`` attributes, so checkpoints of the search include them.
    """

    name = "darts"
    uses_parent = False  # needs a real-valued Parent supernet
    parent_searches = False  # the Parent runs its own architecture step

    def __init__(self, epochs: int = 1, name: Optional[str] = None):
        super().__init__(name=name or self.name)
        self.epochs = int(epochs)

    # ---- schedules (per epoch, python values: a change rebuilds the train function)
    def temperature(self, epoch: int) -> float:
        return 1.0

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
        """The architecture gradient the optimiser applies, and extra logs."""
        return grads, {}

    # ---- hooks around updates and epochs (eager or graph; see the engine)
    def after_arch_update(self, engine, grads, alphas_before):
        return {}

    def on_epoch_begin(self, engine, epoch: int):
        pass

    def on_epoch_end(self, engine, epoch: int):
        pass

    def get_config(self):
        return {"name": self.name, "epochs": self.epochs}


class Darts(Strategy):
    """First-order DARTS on the 1-bit supernet: the baseline and the control of every comparison."""

    name = "darts"


class Bats(Strategy):
    """BATS: temperature-controlled softmax, binarisation schedule and a real-valued teacher.

    Args:
        epochs: total search epochs.
        t_start, t_end: softmax temperature at the first and last epoch (geometric schedule). A
            temperature below 1 sharpens ``softmax(a / T)`` so that the supernet is evaluated
            close to the discrete architecture it will yield, which keeps the search from drifting
            to parameter-free ops.
        real_epochs: leading epochs in which the supernet runs real-valued before the 1-bit search.
        teacher: add ``kl_weight * KL(p_P || p_C)`` from a real-valued Parent supernet (trained
            on the same batches, sharing the Child's architecture) to the weight loss.
        kl_weight: weight of that term.
    """

    name = "bats"

    def __init__(self, epochs=1, t_start=1.0, t_end=0.2, real_epochs=0, teacher=True, kl_weight=1.0, name=None):
        super().__init__(epochs, name)
        if not (t_start > 0 and t_end > 0):
            raise ValueError(f"bats temperatures must be > 0 (got {t_start}, {t_end})")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.real_epochs, self.teacher, self.kl_weight = int(real_epochs), bool(teacher), float(kl_weight)
        self.uses_parent = self.teacher

    def temperature(self, epoch):
        if self.epochs <= 1:
            return self.t_end
        fraction = min(max(epoch / (self.epochs - 1), 0.0), 1.0)
        return self.t_start * (self.t_end / self.t_start) ** fraction

    def child_binary(self, epoch):
        return epoch >= self.real_epochs

    def child_weight_loss(self, logits, labels, teacher_logits=None):
        terms = {"ce": cross_entropy(logits, labels)}
        if self.teacher and teacher_logits is not None:
            terms["kl"] = self.kl_weight * kl_divergence(teacher_logits, logits)
        return terms

    def get_config(self):
        return {**super().get_config(), "t_start": self.t_start, "t_end": self.t_end,
                "real_epochs": self.real_epochs, "teacher": self.teacher, "kl_weight": self.kl_weight}


class Dcp(Strategy):
    """DCP-NAS: the 1-bit Child searched under a real-valued Parent (see the module docstring).

    Args:
        epochs: total search epochs.
        kl: add the Parent-Child KL term to the Child's objective (``G``).
        kl_weight: its weight.
        tangent: tangent propagation (``D(a)`` term) with weight ``tangent_weight``.
        tangent_weight: ``lambda`` of the book's eq. 4.32/4.33.
        ggn: approximate the Hessian by the Gauss-Newton outer product of ``ggn_samples``
            micro-batch gradients; off: ``H = I``.
        ggn_samples: micro-batches per architecture step (the batch must divide by it).
        decoupled: the backtracking correction of the decoupled optimisation.
        tau: rank threshold (0-1) of an op's weight norm within its edge for the correction.
        psi_lr: learning rate of the learnable ``psi``.
        inherit: Child inherits Parent weights each epoch, Parent takes the Child's architecture.
    """

    name = "dcp"
    uses_parent = True
    parent_searches = True

    def __init__(self, epochs=1, kl=True, kl_weight=1.0, tangent=True, tangent_weight=0.5, ggn=True,
                 ggn_samples=4, decoupled=True, tau=0.5, psi_lr=0.01, inherit=True, name=None):
        super().__init__(epochs, name)
        self.kl, self.kl_weight = bool(kl), float(kl_weight)
        self.tangent, self.tangent_weight = bool(tangent), float(tangent_weight)
        self.ggn, self.ggn_samples = bool(ggn), int(ggn_samples)
        self.decoupled, self.tau, self.psi_lr = bool(decoupled), float(tau), float(psi_lr)
        self.inherit = bool(inherit)
        if self.ggn_samples < 1:
            raise ValueError("dcp_ggn_samples must be >= 1")
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"dcp_tau={tau} must be in [0, 1)")
        self._state_built = False

    # ---- state of the decoupled optimisation (created with the shapes of the alphas)
    def build_state(self, alphas):
        if self._state_built:
            return
        self.psi = [tf.Variable(tf.ones([a.shape[0], 1]), trainable=False, name=f"psi_{i}")
                    for i, a in enumerate(alphas)]
        self.prev_correction = [tf.Variable(tf.zeros(a.shape), trainable=False, name=f"prev_correction_{i}")
                                for i, a in enumerate(alphas)]
        self.masks = [tf.Variable(tf.zeros(a.shape), trainable=False, name=f"rank_mask_{i}") for i, a in enumerate(alphas)]
        self._state_built = True

    def child_arch_loss(self, logits, labels, teacher_logits=None):
        terms = {"ce": cross_entropy(logits, labels)}
        if self.kl and teacher_logits is not None:
            terms["kl"] = self.kl_weight * kl_divergence(teacher_logits, logits)
        return terms

    child_weight_loss = child_arch_loss

    def arch_micro_batches(self):
        return self.ggn_samples if (self.tangent and self.ggn) else 1

    def transform_arch_gradients(self, grads, micro_grads, tangent):
        """``g + 2 lambda H (g - t)``; ``H v = 1/K sum_k g_k (g_k . v)`` (GGN) or ``v`` (``H = I``)."""
        logs = {}
        if not self.tangent or tangent is None:
            return grads, logs
        diffs = [g - t for g, t in zip(grads, tangent)]
        logs["tangent"] = self.tangent_weight * tf.add_n([tf.reduce_sum(tf.square(d)) for d in diffs])
        if self.ggn:
            k = len(micro_grads)
            dots = [tf.add_n([tf.reduce_sum(gk_i * d_i) for gk_i, d_i in zip(gk, diffs)]) for gk in micro_grads]
            hv = [tf.add_n([dots[j] * micro_grads[j][i] for j in range(k)]) / k for i in range(len(grads))]
        else:
            hv = diffs
        out = [g + 2.0 * self.tangent_weight * h for g, h in zip(grads, hv)]
        logs["tangent_grad_norm"] = tf.linalg.global_norm(hv) * 2.0 * self.tangent_weight
        return out, logs

    def after_arch_update(self, engine, grads, alphas_before):
        """Decoupled optimisation: learn psi from the last correction, then backtrack selected entries."""
        if not self.decoupled:
            return {}
        alphas = engine.child.arch_variables
        eta = engine.arch_lr() * engine.weight_lr()
        norms = engine.child_edge_weight_norms()  # [num_edges, num_ops] per cell type
        total, psi_grad = 0.0, 0.0
        for i, alpha in enumerate(alphas):
            # dL/dpsi_e = sum_m g_{e,m} * (eta * a_{e,m}) over the entries corrected last step.
            dpsi = tf.reduce_sum(grads[i] * self.prev_correction[i], axis=1, keepdims=True)
            assign_variable(self.psi[i], tf.abs(self.psi[i] - self.psi_lr * dpsi))
            psi_grad += tf.reduce_sum(tf.abs(dpsi))
            mask = rank_mask(norms[i], self.tau)
            base = eta * mask * alphas_before[i]
            correction = self.psi[i] * base
            assign_variable(alpha, correction, add=True)
            assign_variable(self.prev_correction[i], base)
            assign_variable(self.masks[i], mask)
            total += tf.reduce_sum(tf.abs(correction))
        # At DARTS learning rates eta = eta1 * eta2 is ~1e-5, so the correction and psi's updates are small.
        return {"decoupled": total, "psi_grad": psi_grad}

    def on_epoch_begin(self, engine, epoch):
        if self.inherit and epoch > 0:
            engine.child.copy_weights_from(engine.parent)

    def on_epoch_end(self, engine, epoch):
        if self.inherit:
            for mine, theirs in zip(engine.parent.arch_variables, engine.child.arch_variables):
                mine.assign(theirs)  # epoch end: cross-replica context

    def get_config(self):
        return {**super().get_config(), "kl": self.kl, "kl_weight": self.kl_weight, "tangent": self.tangent,
                "tangent_weight": self.tangent_weight, "ggn": self.ggn, "ggn_samples": self.ggn_samples,
                "decoupled": self.decoupled, "tau": self.tau, "psi_lr": self.psi_lr, "inherit": self.inherit}


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
    """A strategy by name with its keyword arguments (``dcp_*`` / ``bats_*`` flags without prefix)."""
    if name == "darts":
        return Darts(epochs)
    if name == "bats":
        return Bats(epochs, **kwargs)
    if name == "dcp":
        return Dcp(epochs, **kwargs)
    raise ValueError(f"unknown search strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
