"""Model-based width search: a Bayesian additive surrogate of the score, as a keras-tuner Oracle.

:class:`SurrogateWidthOracle` is the model-based sibling of
:class:`~tfbnas.width.evolution.EvolutionWidthOracle`. It runs in the same :class:`WidthTuner`, keeps
its trials in the same keras-tuner project directory and resumes from it in the same way. Instead of
breeding the best trials, it fits a model of the score to all of them and asks the model where to
look next.

**The model** (:class:`AdditiveSurrogate`). The score of one evaluation ``j`` of a width vector ``w``
is written as

    score(w, j) = mu + sum_l beta[l, w_l] + r(w) + e_j

* ``beta[l, k]``: the effect of choice ``k`` in layer ``l`` (one-hot features, ridge prior
  ``N(0, tau^2)``). Width tables are close to additive over layers: on the Channel-Bench-Macro
  MobileNet table this part explains 93 % of the variance, and pairwise terms add 0.5 %.
* ``r(w) ~ N(0, sigma_r^2)``: what the additive part misses. It belongs to ``w``: a second
  evaluation of ``w`` has the same ``r``.
* ``e_j ~ N(0, sigma_n^2)``: evaluation noise (a new training run, a new data sample), new every
  time. A deterministic evaluator (a table lookup, a supernet scored on fixed batches) has
  ``sigma_n = 0``.

``tau``, ``sigma_r`` and ``sigma_n`` are not set by hand. The overall scale is fitted, and the split
of the variance (how much is additive, how much of the rest is ``r`` rather than noise) is averaged
over a grid, each split weighted by its marginal likelihood: the ridge strength ``sigma^2 / tau^2``
follows from the data. ``sigma_n`` is only identifiable from repeated evaluations of one vector; until
there is one, the scores are treated as exact. Noise may differ between vectors: a vector's own
scatter over its repeats is pooled with the common estimate, which counts as two evaluations.

**The search** (:meth:`SurrogateWidthOracle.populate_space`):

1. **Initial design.** ``initial_trials`` feasible vectors, seeded: from many random feasible
   draws, each next one is the draw farthest (in layers that differ) from those already chosen.
2. **Thompson sampling.** Draw one coefficient vector from the posterior of ``beta`` and propose
   the untried feasible vector with the largest sampled score. Early on the posterior is wide and
   the draws explore; as queries accumulate it narrows and the proposals concentrate on the best
   predicted region. The grid is enumerated when it has at most ``max_enumerate`` vectors (4^7 =
   16384 for the macro space); larger grids are searched by sampled candidates, one-layer
   neighbours of the best trials and coordinate ascent.
3. **Re-evaluation.** The last ``reevaluation_fraction`` of the trials re-evaluate earlier width
   vectors (new trials with the same widths, so the evaluator runs again). The first one re-runs
   the best trial: if it returns the identical score the evaluator is deterministic, no more
   re-evaluations are made and the remaining trials go back to step 2. Otherwise each one runs
   the current leader (largest posterior mean) or its strongest challenger (largest posterior
   mean + one standard deviation), whichever is less certain.
4. **Final choice** (:meth:`SurrogateWidthOracle.best_widths`): the evaluated vector with the
   largest posterior mean of ``mu + sum_l beta + r(w)``. It averages a vector's repeated scores
   and shrinks them towards the additive prediction by ``sigma_r^2 / (sigma_r^2 + sigma_n^2 / n)``;
   with a deterministic evaluator this is simply the best score. A single lucky evaluation
   therefore does not decide.

Every decision is a function of the completed trials and of draws seeded by ``(seed, number of
trials so far)``, so a search resumed from its directory proposes what an uninterrupted one would.

Example:
    >>> bench = ChannelBenchMacro()
    >>> space = WidthSpace(LAYER_NAMES, GRID, cost=bench.flops, budget=0.3 * macro_flops((1.0,) * 7))
    >>> tuner = WidthTuner(SurrogateWidthOracle(space, max_trials=100, seed=0), bench.accuracy,
    ...                    directory="/tmp/ws", project_name="surrogate")
    >>> tuner.search(verbose=0)
    >>> tuner.best_widths()                     # largest posterior mean among the evaluated vectors
    (0.25, 1.0, 1.0, 1.0, 0.25, 1.0, 0.75)
    >>> round(tuner.oracle.estimates()[0]["posterior_mean"], 2), tuner.oracle.model().deterministic
    (91.37, True)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import keras_tuner as kt
import numpy as np

from tfbnas.width import WidthSearchError
from tfbnas.width.evolution import Widths, WidthSpace, _BudgetedWidthOracle

__all__ = ["AdditiveSurrogate", "SurrogateWidthOracle"]

# The variance split is averaged over a grid: the additive share on a logit grid, the true share of the
# residual (r versus noise) on a uniform grid; components with a negligible likelihood are dropped.
_LOGIT_GRID = np.linspace(-6.0, 6.0, 9)
_TRUE_SHARES = 10
_MAX_COMPONENTS = 30
# Weight of the common noise estimate in a vector's own noise variance, in evaluations.
_NOISE_PRIOR_DOF = 2.0


class AdditiveSurrogate:
    """Bayesian additive model of a score over width vectors, with a per-vector effect and noise.

    ``score(w, j) = mu + sum_l beta[l, w_l] + r(w) + e_j`` (see the module docstring). Width
    vectors are given as choice indices, one integer per layer.

    Args:
        num_choices: number of choices of every layer, e.g. ``(4,) * 7``.

    Example:
        >>> model = AdditiveSurrogate((4, 4)).fit([[0, 1], [3, 3], [3, 3], [1, 0]], [1.0, 2.1, 1.9, 0.8])
        >>> mean, var = model.predict([[3, 2]])          # additive part mu + sum_l beta, untried vector
        >>> model.noise_sd > 0                           # the two scores of [3, 3] differ
        True
    """

    def __init__(self, num_choices: Sequence[int]):
        self.num_choices = tuple(int(k) for k in num_choices)
        if not self.num_choices or min(self.num_choices) < 1:
            raise WidthSearchError(f"num_choices needs one positive count per layer, got {num_choices}")
        self.offsets = np.concatenate([[0], np.cumsum(self.num_choices)[:-1]]).astype(np.int64)
        self.num_features = int(sum(self.num_choices))
        self.fitted = False

    # ------------------------------------------------------------------ features
    def features(self, levels) -> np.ndarray:
        """One-hot (layer, choice) features, ``[n, sum(num_choices)]``."""
        levels = np.asarray(levels, np.int64).reshape(-1, len(self.num_choices))
        if levels.size and ((levels < 0).any() or (levels >= np.array(self.num_choices)).any()):
            raise WidthSearchError(f"choice indices must lie in [0, num_choices) per layer {self.num_choices}")
        phi = np.zeros((len(levels), self.num_features))
        rows = np.arange(len(levels))
        for layer, offset in enumerate(self.offsets):
            phi[rows, offset + levels[:, layer]] = 1.0
        return phi

    # ------------------------------------------------------------------ fitting
    def fit(self, levels, scores) -> "AdditiveSurrogate":
        """Fit to evaluations: ``levels[i]`` (choice indices) scored ``scores[i]``; repeats allowed.

        Returns:
            ``self``.
        """
        levels = np.asarray(levels, np.int64).reshape(-1, len(self.num_choices))
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(levels) != len(scores) or len(scores) == 0:
            raise WidthSearchError(f"need one score per width vector and at least one, got {len(levels)} vectors "
                                   f"and {len(scores)} scores")
        if not np.isfinite(scores).all():
            raise WidthSearchError("scores must be finite; drop failed evaluations before fitting")
        unique, inverse = np.unique(levels, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
        means = np.bincount(inverse, weights=scores, minlength=len(unique)) / counts
        scatter = np.bincount(inverse, weights=(scores - means[inverse]) ** 2, minlength=len(unique))
        within = float(scatter.sum())
        dof = int(len(scores) - len(unique))
        scale = float(np.max(np.abs(scores))) + 1.0
        # Exact repeats (or none at all): the evaluator is treated as deterministic.
        self.deterministic = dof == 0 or within <= (1e-9 * scale) ** 2 * dof
        # Noise may differ between vectors: each one's variance is its own scatter pooled with the common
        # estimate, which counts as _NOISE_PRIOR_DOF extra evaluations; noise_factor is the ratio to the common one.
        self.noise_factor = np.ones(len(unique))
        if not self.deterministic:
            pooled = within / dof
            self.noise_factor = (_NOISE_PRIOR_DOF * pooled + scatter) / ((_NOISE_PRIOR_DOF + counts - 1) * pooled)
        self.levels, self.counts, self.mean_scores = unique, counts, means
        self._fit(self.features(unique), means, counts / self.noise_factor, within, dof)
        self.fitted = True
        return self

    def _loglik(self, phi, q0, counts, within, dof, a, b, c):
        """Log marginal likelihood of the unique means (+ the within-vector scatter), scale profiled out."""
        u, p = phi.shape
        diag = b + c / counts
        dinv = 1.0 / diag
        inner = np.eye(p) / a + (phi.T * dinv) @ phi  # Woodbury: C = a Phi Phi^T + diag
        chol = np.linalg.cholesky(inner)
        logdet = np.sum(np.log(diag)) + 2.0 * np.sum(np.log(np.diag(chol))) + p * np.log(a)

        def solve(v):  # C^-1 v for a matrix v
            w = dinv[:, None] * v
            t = np.linalg.solve(chol.T, np.linalg.solve(chol, phi.T @ w))
            return w - dinv[:, None] * (phi @ t)

        both = solve(np.column_stack([np.ones(u), q0]))
        mu = both[:, 1].sum() / both[:, 0].sum()  # generalised least squares mean
        ciq = both[:, 1] - mu * both[:, 0]
        quad = float((q0 - mu) @ ciq)
        if dof > 0 and c > 0:
            s2 = max((quad + within / c) / (u + dof), 1e-12)
            ll = -0.5 * logdet - 0.5 * dof * np.log(c) - 0.5 * (u + dof) * np.log(s2)
        else:
            s2 = max(quad / u, 1e-12)
            ll = -0.5 * logdet - 0.5 * u * np.log(s2)
        return ll, {"a": a, "b": b, "c": c, "mu": mu, "ciq": ciq, "s2": s2, "solve": solve}

    def _fit(self, phi, means, counts, within, dof):
        """Average over a grid of variance splits, weighted by their marginal likelihood."""
        scale = float(np.std(means)) or 1.0
        q0 = means / scale
        within = within / scale ** 2
        # a: prior variance share of one additive effect; h: share of the residual variance that is r(w).
        shares = [1.0] if self.deterministic else list((np.arange(_TRUE_SHARES) + 0.5) / _TRUE_SHARES)
        fits = []
        for ta in _LOGIT_GRID:
            a = 1.0 / (1.0 + np.exp(-ta))
            for h in shares:
                fits.append(self._loglik(phi, q0, counts, within, 0 if self.deterministic else dof,
                                         a, (1.0 - a) * h, (1.0 - a) * (1.0 - h)))
        ll = np.array([f[0] for f in fits])
        weight = np.exp(ll - ll.max())
        keep = [i for i in np.argsort(-weight, kind="stable")[:_MAX_COMPONENTS] if weight[i] > 1e-4 * weight.max()]
        self.weights = weight[keep] / weight[keep].sum()
        self._scale = scale
        self.components = []
        for i in keep:
            part = fits[i][1]
            a, b, s2, solve = part["a"], part["b"], part["s2"], part["solve"]
            # Weight space: beta = a Phi^T C^-1 q, Cov(beta) = s2 (a I - a^2 Phi^T C^-1 Phi).
            cov = a * np.eye(phi.shape[1]) - a * a * (phi.T @ solve(phi))
            # Posterior of mu + f(w) + r(w) at the evaluated vectors.
            k_true = a * phi @ phi.T + b * np.eye(len(means))
            var = np.diag(k_true) - np.einsum("ij,ji->i", k_true, solve(k_true))
            self.components.append({
                "mu": part["mu"], "s2": s2, "a": a, "b": b, "c": part["c"], "coef": a * (phi.T @ part["ciq"]),
                "coef_cov": 0.5 * (cov + cov.T), "true_mean": scale * (part["mu"] + k_true @ part["ciq"]),
                "true_var": scale ** 2 * s2 * np.clip(var, 0.0, None)})
        w = self.weights
        self.posterior_mean = sum(wi * c["true_mean"] for wi, c in zip(w, self.components))
        second = sum(wi * (c["true_var"] + c["true_mean"] ** 2) for wi, c in zip(w, self.components))
        self.posterior_sd = np.sqrt(np.clip(second - self.posterior_mean ** 2, 0.0, None))

        def sd(key):
            return float(scale * np.sqrt(sum(wi * c[key] * c["s2"] for wi, c in zip(w, self.components))))

        self.effect_sd, self.residual_sd, self.noise_sd = sd("a"), sd("b"), sd("c")

    # ------------------------------------------------------------------ predictions
    def _check(self):
        if not self.fitted:
            raise WidthSearchError("the surrogate is not fitted yet: call fit(levels, scores) first")

    def predict(self, levels) -> Tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the additive part ``mu + sum_l beta[l, w_l]``."""
        self._check()
        phi = self.features(levels)
        means, second = 0.0, 0.0
        for w, c in zip(self.weights, self.components):
            m = self._scale * (c["mu"] + phi @ c["coef"])
            v = self._scale ** 2 * c["s2"] * np.einsum("ij,jk,ik->i", phi, c["coef_cov"], phi)
            means, second = means + w * m, second + w * (np.clip(v, 0.0, None) + m ** 2)
        return means, np.clip(second - means ** 2, 0.0, None)

    def sample_coefficients(self, rng: np.random.Generator) -> np.ndarray:
        """One draw of ``beta`` from its posterior (Thompson sampling), in score units."""
        self._check()
        c = self.components[int(rng.choice(len(self.components), p=self.weights))]
        eigval, eigvec = np.linalg.eigh(c["coef_cov"])
        noise = eigvec @ (np.sqrt(np.clip(eigval, 0.0, None)) * rng.standard_normal(len(c["coef"])))
        return self._scale * (c["coef"] + np.sqrt(c["s2"]) * noise)

    def score_with(self, coefficients: np.ndarray, levels) -> np.ndarray:
        """Additive score of ``levels`` under sampled ``coefficients`` (up to the constant ``mu``)."""
        levels = np.asarray(levels, np.int64).reshape(-1, len(self.num_choices))
        return np.sum(coefficients[self.offsets[None, :] + levels], axis=1)


class SurrogateWidthOracle(_BudgetedWidthOracle):
    """Model-based width search: additive Bayesian surrogate, Thompson sampling, re-evaluation.

    See the module docstring for the model and the four steps.

    Args:
        space: the :class:`WidthSpace` (layers, choices, budget).
        max_trials: number of evaluations (queries), re-evaluations included.
        initial_trials: size of the initial design; default ``max_trials // 5`` clipped to
            ``[2, 1 + sum_l (choices_l - 1)]`` (the number of additive parameters).
        reevaluation_fraction: share of ``max_trials`` kept for re-evaluating the best candidates
            at the end if the evaluator turns out noisy; ``0`` never re-evaluates (the final choice
            then trusts single scores).
        max_enumerate: enumerate the whole grid when it has at most this many vectors.
        candidates: random draws per proposal when the grid is too large to enumerate.
        seed: random seed.
        max_attempts: rejection-sampling attempts (x50) when drawing feasible vectors.

    Example:
        >>> oracle = SurrogateWidthOracle(space, max_trials=100, seed=3)
        >>> tuner = WidthTuner(oracle, evaluator, directory="runs/ws", project_name="surrogate")
    """

    INITIAL_STATE_KEY = "initial_design"

    def __init__(self, space: WidthSpace, max_trials: int, initial_trials: Optional[int] = None,
                 reevaluation_fraction: float = 0.3, max_enumerate: int = 100_000, candidates: int = 20_000,
                 seed: Optional[int] = None, max_attempts: int = 200, **kwargs):
        super().__init__(space, max_trials, seed=seed, max_attempts=max_attempts, **kwargs)
        parameters = 1 + sum(len(g) - 1 for g in space.choices)
        if initial_trials is None:
            initial_trials = int(np.clip(max_trials // 5, 2, max(2, parameters)))
        if initial_trials < 1:
            raise WidthSearchError(f"initial_trials must be at least 1, got {initial_trials}")
        if not 0.0 <= reevaluation_fraction < 1.0:
            raise WidthSearchError(f"reevaluation_fraction must be in [0, 1), got {reevaluation_fraction}")
        if max_enumerate < 0 or candidates < 1:
            raise WidthSearchError("max_enumerate must be >= 0 and candidates >= 1")
        self.initial_trials = int(initial_trials)
        self.reevaluation_fraction = float(reevaluation_fraction)
        self.max_enumerate = int(max_enumerate)
        self.candidates = int(candidates)
        self._grid: Optional[Dict[str, np.ndarray]] = None
        self._model_cache: Tuple[Tuple[str, ...], Optional[AdditiveSurrogate]] = ((), None)

    # ------------------------------------------------------------------ encoding
    def _levels(self, widths: Sequence[float]) -> Tuple[int, ...]:
        return tuple(self.space.index(layer, w) for layer, w in enumerate(widths))

    def _widths(self, levels: Sequence[int]) -> Widths:
        return tuple(self.space.choices[layer][int(k)] for layer, k in enumerate(levels))

    def _grid_size(self) -> int:
        return int(np.prod([len(g) for g in self.space.choices], dtype=np.float64))

    def _enumerated(self) -> Optional[Dict[str, np.ndarray]]:
        """All grid vectors with their feasibility, if the grid is small enough (computed once)."""
        if self._grid_size() > self.max_enumerate:
            return None
        if self._grid is None:
            sizes = [len(g) for g in self.space.choices]
            levels = np.indices(sizes).reshape(len(sizes), -1).T
            feasible = np.array([self.space.feasible(self._widths(row)) for row in levels], bool)
            strides = np.cumprod([1] + sizes[::-1])[:-1][::-1]
            self._grid = {"levels": levels[feasible], "index": (levels[feasible] @ strides), "strides": strides}
            if not feasible.any():
                raise WidthSearchError(f"no width vector within the budget {self.space.budget} exists; "
                                       "raise the budget or add smaller multipliers to the grid")
        return self._grid

    # ------------------------------------------------------------------ trials
    def _evaluations(self) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """Completed trials in creation order: ids, choice indices, scores."""
        ids, levels, scores = [], [], []
        for trial_id in self.start_order:
            trial = self.trials.get(trial_id)
            if trial is None or trial.status != kt.engine.trial.TrialStatus.COMPLETED or trial.score is None:
                continue
            ids.append(trial_id)
            levels.append(self._levels(self.space.widths_from_values(trial.hyperparameters.values)))
            scores.append(float(trial.score))
        return ids, np.array(levels, np.int64).reshape(-1, self.space.num_layers), np.array(scores, np.float64)

    def model(self) -> Optional[AdditiveSurrogate]:
        """The surrogate fitted to the completed trials (``None`` before the first one)."""
        ids, levels, scores = self._evaluations()
        if not ids:
            return None
        if self._model_cache[0] != tuple(ids):
            model = AdditiveSurrogate([len(g) for g in self.space.choices]).fit(levels, scores)
            self._model_cache = (tuple(ids), model)
        return self._model_cache[1]

    def _tried(self) -> set:
        return {self._levels(self.space.widths_from_values(t.hyperparameters.values)) for t in self.trials.values()
                if t.hyperparameters.values}

    def _noise_state(self) -> Optional[bool]:
        """True if repeated evaluations differ, False if they all agree, None if nothing was repeated."""
        model = self.model()
        if model is None or not (model.counts > 1).any():
            return None
        return not model.deterministic

    # ------------------------------------------------------------------ initial design
    def _make_initial(self) -> List[Widths]:
        rng = np.random.default_rng([int(self.seed), 7919])
        wanted = 50 * self.initial_trials
        grid = self._enumerated()
        if grid is not None:
            pool = grid["levels"][rng.permutation(len(grid["levels"]))[:wanted]]
        else:
            seen, rows = set(), []
            for _ in range(self.max_attempts * 50):
                if len(rows) >= wanted:
                    break
                widths = self.space.sample(rng)
                if widths in seen or not self.space.feasible(widths):
                    continue
                seen.add(widths)
                rows.append(self._levels(widths))
            if not rows:
                raise WidthSearchError(f"no width vector within the budget {self.space.budget} was found; "
                                       "raise the budget or add smaller multipliers to the grid")
            pool = np.array(rows, np.int64)
        # Greedy max-min design: each next vector differs from the chosen ones in as many layers as possible.
        chosen = [0]
        distance = np.sum(pool != pool[0], axis=1)
        while len(chosen) < min(self.initial_trials, len(pool)):
            nxt = int(np.argmax(distance))
            chosen.append(nxt)
            distance = np.minimum(distance, np.sum(pool != pool[nxt], axis=1))
        return [self._widths(pool[i]) for i in chosen]

    # ------------------------------------------------------------------ proposals
    def _thompson(self, model: AdditiveSurrogate, rng: np.random.Generator) -> Optional[Widths]:
        coefficients = model.sample_coefficients(rng)
        tried = self._tried()
        grid = self._enumerated()
        if grid is not None:
            score = model.score_with(coefficients, grid["levels"])
            tried_index = {int(np.dot(t, grid["strides"])) for t in tried}
            score[np.isin(grid["index"], list(tried_index))] = -np.inf
            best = int(np.argmax(score))
            return None if not np.isfinite(score[best]) else self._widths(grid["levels"][best])
        return self._ascend(model, coefficients, rng, tried)

    def _ascend(self, model, coefficients, rng, tried) -> Optional[Widths]:
        """Large grids: best of sampled feasible candidates and neighbours of good trials, then coordinate ascent."""
        pool = {self._levels(self.space.sample(rng)) for _ in range(self.candidates)}
        for row in model.levels[np.argsort(-model.posterior_mean)[:10]]:
            for layer, grid in enumerate(self.space.choices):
                for k in range(len(grid)):
                    pool.add(tuple(int(x) for x in row[:layer]) + (k,) + tuple(int(x) for x in row[layer + 1:]))
        pool = [p for p in pool if p not in tried and self.space.feasible(self._widths(p))]
        if not pool:
            return None
        scores = model.score_with(coefficients, pool)
        current, value = pool[int(np.argmax(scores))], float(np.max(scores))
        improved = True
        while improved:
            improved = False
            for layer, grid in enumerate(self.space.choices):
                for k in range(len(grid)):
                    cand = current[:layer] + (k,) + current[layer + 1:]
                    if cand == current or cand in tried:
                        continue
                    v = float(model.score_with(coefficients, [cand])[0])
                    if v > value + 1e-12 and self.space.feasible(self._widths(cand)):
                        current, value, improved = cand, v, True
        return self._widths(current)

    def _reevaluation(self, model: AdditiveSurrogate) -> Tuple[Widths, str]:
        mean, sd = model.posterior_mean, model.posterior_sd
        leader = int(np.argmax(mean))
        if not (model.counts > 1).any():
            return self._widths(model.levels[leader]), "probe"
        upper = mean + sd
        upper[leader] = -np.inf
        challenger = int(np.argmax(upper)) if len(mean) > 1 else leader
        pick = leader if sd[leader] >= sd[challenger] else challenger
        return self._widths(model.levels[pick]), "reevaluation"

    def populate_space(self, trial_id):
        initial = self._initial_proposal(trial_id)
        if initial is not None:
            return initial
        model = self.model()
        if model is None:  # initial trials still running: explore meanwhile
            return self._propose(trial_id, self._random_feasible(self._rng()), "random")
        remaining = self.max_trials - len(self.trials)
        reserved = int(round(self.reevaluation_fraction * self.max_trials))
        if remaining <= reserved and self._noise_state() is not False:
            widths, origin = self._reevaluation(model)
            return self._propose(trial_id, widths, origin)
        widths = self._thompson(model, self._rng(1))
        if widths is not None:
            return self._propose(trial_id, widths, "model")
        # Every feasible vector was tried: refine the estimates, unless the evaluator is known to be exact.
        if self._noise_state() is False:
            return self._propose(trial_id, None, "")
        widths, origin = self._reevaluation(model)
        return self._propose(trial_id, widths, origin)

    # ------------------------------------------------------------------ results
    def estimates(self) -> List[dict]:
        """Evaluated vectors, best posterior mean first.

        Returns:
            ``[{"widths", "evaluations", "mean_score", "posterior_mean", "posterior_sd"}, ...]``.
        """
        model = self.model()
        if model is None:
            return []
        order = np.argsort(-model.posterior_mean, kind="stable")
        return [{"widths": self._widths(model.levels[i]), "evaluations": int(model.counts[i]),
                 "mean_score": float(model.mean_scores[i]), "posterior_mean": float(model.posterior_mean[i]),
                 "posterior_sd": float(model.posterior_sd[i])} for i in order]

    def best_widths(self) -> Widths:
        """The evaluated vector with the largest posterior mean (the best score if the evaluator is exact)."""
        rows = self.estimates()
        if not rows:
            raise WidthSearchError("no completed trial yet: run search() first")
        return rows[0]["widths"]

    def get_state(self):
        state = super().get_state()
        model = self.model()
        state["surrogate"] = None if model is None else {
            "effect_sd": model.effect_sd, "residual_sd": model.residual_sd, "noise_sd": model.noise_sd,
            "deterministic": bool(model.deterministic)}
        return state

    def set_state(self, state):
        super().set_state(state)
        self._model_cache = ((), None)
