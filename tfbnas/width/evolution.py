"""Budgeted evolutionary search over per-layer width multipliers, as a keras-tuner Oracle and Tuner.

A width vector is one multiplier per searchable layer (e.g. from ``(0.25, 0.5, 0.75, 1.0)``); the
search maximises a score under a resource budget (FLOPs, OPs, or the sum of a per-layer latency
table). keras-tuner provides the project directory: every proposal is a ``Trial`` saved under
``<directory>/<project_name>/trial_*/trial.json``, the oracle state in ``oracle.json``, and a tuner
created again on the same directory with ``overwrite=False`` continues where the last one stopped.

:class:`EvolutionWidthOracle` (BCNet's search, section "evolutionary search with a prior initial
population"):

1. **Prior initial population.** Draw ``prior_candidates * population_size`` distinct width vectors
   within the budget, each layer's multiplier sampled from ``layer_prior`` (uniform unless given,
   e.g. :meth:`tfbnas.width.bcnet.BCNetSupernet.width_prior`, which favours multipliers whose
   sampled networks had a low training loss in the supernet). Keep the ``population_size`` vectors
   with the largest cost: a network that uses its budget tends to be the more accurate one, and
   this ranking costs no evaluation. ``initial_population="uniform"`` skips the ranking.
2. **Evolution.** The population is the ``population_size`` best completed trials. Each new
   proposal is, with probability ``mutation_prob``, a mutation of a tournament-selected parent
   (each layer redrawn from ``layer_prior`` with probability ``1 / num_layers``, at least one
   layer), otherwise a uniform crossover of two tournament-selected parents.
3. **Budget and novelty.** A proposal over the budget or already tried is rejected and redrawn;
   after ``max_attempts`` rejections a random feasible vector is proposed instead.

Every random draw is seeded by ``(seed, number of trials so far, attempt)``, so a resumed search
proposes what an uninterrupted one would. :class:`RandomWidthOracle` is the control: uniform
feasible vectors without repetition.

Example:
    >>> space = WidthSpace(LAYER_NAMES, GRID, cost=macro_flops, budget=80e6)
    >>> bench = ChannelBenchMacro()
    >>> tuner = WidthTuner(EvolutionWidthOracle(space, max_trials=100, seed=0), bench.accuracy,
    ...                    directory="/tmp/ws", project_name="evo")
    >>> tuner.search(verbose=0)
    >>> tuner.best_widths()
    (0.5, 1.0, 0.75, ...)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras_tuner as kt
import numpy as np

from tfbnas.width import WidthSearchError

__all__ = [
    "EvolutionWidthOracle",
    "RandomWidthOracle",
    "WidthSpace",
    "WidthTuner",
    "additive_cost",
    "run_width_search",
]

Widths = Tuple[float, ...]


def additive_cost(table: Mapping[str, Mapping[float, float]],
                  names: Sequence[str]) -> Callable[[Sequence[float]], float]:
    """A cost function that sums per-layer entries, e.g. a measured latency table.

    Args:
        table: ``{layer name: {multiplier: cost}}``.
        names: layer names in width-vector order.

    Returns:
        ``cost(widths) = sum_l table[names[l]][widths[l]]``.

    Example:
        >>> cost = additive_cost({"a": {0.5: 1.0, 1.0: 2.5}, "b": {0.5: 0.2, 1.0: 0.4}}, ["a", "b"])
        >>> cost((1.0, 0.5))
        2.7
    """
    missing = [n for n in names if n not in table]
    if missing:
        raise WidthSearchError(f"cost table has no entry for layers {missing}; add one row per searchable layer")

    def cost(widths):
        total = 0.0
        for name, w in zip(names, widths):
            row = table[name]
            match = [v for k, v in row.items() if abs(float(k) - float(w)) < 1e-6]
            if not match:
                raise WidthSearchError(f"cost table of layer '{name}' has no multiplier {w}; it has {sorted(row)}")
            total += float(match[0])
        return total

    return cost


class WidthSpace:
    """The searchable layers, their multiplier choices and the budget constraint.

    Args:
        names: one name per searchable layer (used as hyperparameter names).
        choices: the multiplier grid, shared by all layers, or one grid per layer.
        cost: ``cost(widths) -> float`` (FLOPs, OPs, latency, ...); ``None`` for no constraint.
        budget: the largest admissible cost; ``None`` for no constraint.

    Example:
        >>> space = WidthSpace(["conv1", "conv2"], (0.5, 1.0), cost=lambda w: w[0] + 2 * w[1], budget=2.0)
        >>> space.feasible((1.0, 0.5)), space.feasible((1.0, 1.0))
        (True, False)
    """

    def __init__(self, names: Sequence[str], choices: Union[Sequence[float], Sequence[Sequence[float]]],
                 cost: Optional[Callable[[Sequence[float]], float]] = None, budget: Optional[float] = None):
        self.names = tuple(str(n) for n in names)
        if not self.names:
            raise WidthSearchError("a width space needs at least one layer name")
        if len(set(self.names)) != len(self.names):
            raise WidthSearchError(f"layer names must be unique, got {self.names}")
        if choices and isinstance(choices[0], (list, tuple)):
            grids = [tuple(float(c) for c in g) for g in choices]
        else:
            grids = [tuple(float(c) for c in choices)] * len(self.names)
        if len(grids) != len(self.names) or any(len(g) == 0 for g in grids):
            raise WidthSearchError(f"need one non-empty choice grid per layer ({len(self.names)}), got {choices}")
        self.choices = tuple(tuple(sorted(set(g))) for g in grids)
        if budget is not None and cost is None:
            raise WidthSearchError("a budget needs a cost function: pass cost=... (e.g. macro_flops)")
        self.cost_fn = cost
        self.budget = None if budget is None else float(budget)

    @property
    def num_layers(self) -> int:
        return len(self.names)

    def hyperparameters(self) -> kt.HyperParameters:
        """One ordered ``Choice`` per layer."""
        hp = kt.HyperParameters()
        for name, grid in zip(self.names, self.choices):
            hp.Choice(name, list(grid), ordered=True)
        return hp

    def widths_from_values(self, values: Mapping[str, float]) -> Widths:
        missing = [n for n in self.names if n not in values]
        if missing:
            raise WidthSearchError(f"trial values lack layers {missing}")
        return tuple(float(values[n]) for n in self.names)

    def values_from_widths(self, widths: Sequence[float]) -> Dict[str, float]:
        if len(widths) != self.num_layers:
            raise WidthSearchError(f"expected {self.num_layers} multipliers, got {len(widths)}")
        return {n: float(w) for n, w in zip(self.names, widths)}

    def cost(self, widths: Sequence[float]) -> float:
        return 0.0 if self.cost_fn is None else float(self.cost_fn(tuple(widths)))

    def feasible(self, widths: Sequence[float]) -> bool:
        return self.budget is None or self.cost(widths) <= self.budget

    def index(self, layer: int, width: float) -> int:
        grid = self.choices[layer]
        return min(range(len(grid)), key=lambda k: abs(grid[k] - float(width)))

    def sample(self, rng: np.random.Generator, layer_prior: Optional[Sequence[Sequence[float]]] = None) -> Widths:
        """One width vector, each layer drawn from ``layer_prior[l]`` (uniform if ``None``); budget not checked."""
        out = []
        for layer, grid in enumerate(self.choices):
            p = None if layer_prior is None else layer_prior[layer]
            out.append(grid[int(rng.choice(len(grid), p=p))])
        return tuple(out)


def _check_prior(space: WidthSpace, layer_prior) -> Optional[List[np.ndarray]]:
    if layer_prior is None:
        return None
    rows = [np.asarray(r, np.float64) for r in layer_prior]
    if len(rows) != space.num_layers or any(len(r) != len(g) for r, g in zip(rows, space.choices)):
        raise WidthSearchError("layer_prior needs one probability row per layer with one entry per choice "
                               f"(shapes {[len(g) for g in space.choices]})")
    if any((r < 0).any() or r.sum() <= 0 for r in rows):
        raise WidthSearchError("layer_prior rows must be non-negative with a positive sum")
    return [r / r.sum() for r in rows]


class _BudgetedWidthOracle(kt.Oracle):
    """Shared machinery: seeded draws, budget checks, duplicate checks, completed trials."""

    def __init__(self, space: WidthSpace, max_trials: int, seed: Optional[int] = None,
                 max_attempts: int = 200, **kwargs):
        if not isinstance(space, WidthSpace):
            raise WidthSearchError(f"space must be a WidthSpace, got {type(space).__name__}")
        if max_trials is None or max_trials < 1:
            raise WidthSearchError(f"max_trials must be a positive integer, got {max_trials}")
        seed = 0 if seed is None else int(seed)
        if seed < 0:
            raise WidthSearchError(f"seed must be a non-negative integer, got {seed}")
        # keras-tuner replaces a falsy seed (0) by a random one: store seed + 1 so 0 stays reproducible.
        super().__init__(objective=kt.Objective("score", "max"), max_trials=max_trials,
                         hyperparameters=space.hyperparameters(), allow_new_entries=False,
                         tune_new_entries=False, seed=seed + 1, **kwargs)
        self.space = space
        self.max_attempts = int(max_attempts)
        # trial_id -> how the proposal was made (initial / mutation / crossover / random).
        self.origins: Dict[str, str] = {}
        self._initial: Optional[List[Widths]] = None  # the seeded initial proposals, made on first use

    def _rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), len(self.trials), int(salt)])

    def _novel_feasible(self, widths: Widths) -> bool:
        return self.space.feasible(widths) and not self._duplicate(self.space.values_from_widths(widths))

    def _random_feasible(self, rng, layer_prior=None) -> Optional[Widths]:
        # Rejection sampling; a tight budget gets more attempts before giving up.
        for _ in range(self.max_attempts * 50):
            widths = self.space.sample(rng, layer_prior)
            if self._novel_feasible(widths):
                return widths
        return None

    def _completed(self) -> List[Tuple[Widths, float]]:
        out = []
        for trial in self.trials.values():
            if trial.status == kt.engine.trial.TrialStatus.COMPLETED and trial.score is not None:
                out.append((self.space.widths_from_values(trial.hyperparameters.values), float(trial.score)))
        return out

    #: Key of the initial proposals in the oracle state (``get_state``).
    INITIAL_STATE_KEY = "initial"

    def _make_initial(self) -> List[Widths]:
        """The search's initial proposals, in order (none here; subclasses with an initial phase override)."""
        return []

    def _initial_proposal(self, trial_id: str):
        """The next initial proposal not tried yet (the list made once by :meth:`_make_initial`, then kept in
        the state so a resumed search continues it), or None when all have been proposed."""
        if self._initial is None:
            self._initial = self._make_initial()
        for widths in self._initial:
            if not self._duplicate(self.space.values_from_widths(widths)):
                return self._propose(trial_id, widths, "initial")
        return None

    def _propose(self, trial_id: str, widths: Optional[Widths], origin: str):
        if widths is None:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        self.origins[trial_id] = origin
        return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": self.space.values_from_widths(widths)}

    def best_widths(self) -> Widths:
        """The final choice: here the completed trial with the best score."""
        best = self.get_best_trials(1)
        if not best or best[0].score is None:
            raise WidthSearchError("no completed trial yet: run search() first")
        return self.space.widths_from_values(best[0].hyperparameters.values)

    def get_state(self):
        state = super().get_state()
        state["origins"] = dict(self.origins)
        state[self.INITIAL_STATE_KEY] = None if self._initial is None else [list(w) for w in self._initial]
        return state

    def set_state(self, state):
        super().set_state(state)
        self.origins = dict(state.get("origins", {}))
        initial = state.get(self.INITIAL_STATE_KEY)
        self._initial = None if initial is None else [tuple(float(x) for x in w) for w in initial]


class RandomWidthOracle(_BudgetedWidthOracle):
    """Random search control: uniform width vectors within the budget, never repeated.

    Args:
        space: the :class:`WidthSpace`.
        max_trials: number of evaluations.
        seed: random seed.
    """

    def populate_space(self, trial_id):
        return self._propose(trial_id, self._random_feasible(self._rng()), "random")


class EvolutionWidthOracle(_BudgetedWidthOracle):
    """Evolutionary width search with a prior initial population (see the module docstring).

    Args:
        space: the :class:`WidthSpace` (layers, choices, budget).
        max_trials: number of evaluations (queries).
        population_size: parents kept (best completed trials) and size of the initial population.
        mutation_prob: probability that a child is a mutation (else a crossover).
        tournament_size: parents are the best of this many random population members.
        initial_population: ``"prior"`` (rank prior samples by budget use) or ``"uniform"``.
        prior_candidates: candidates drawn per initial member for ``"prior"``.
        layer_prior: optional ``[num_layers][num_choices]`` probabilities for initial draws and
            mutations (e.g. from a trained BCNet supernet); uniform if ``None``.
        seed: random seed.
        max_attempts: rejected proposals before falling back to a random feasible vector.

    Example:
        >>> oracle = EvolutionWidthOracle(space, max_trials=100, population_size=16, seed=3)
    """

    INITIAL_STATE_KEY = "initial_population"

    def __init__(self, space: WidthSpace, max_trials: int, population_size: int = 16, mutation_prob: float = 0.5,
                 tournament_size: int = 4, initial_population: str = "prior", prior_candidates: int = 10,
                 layer_prior=None, seed: Optional[int] = None, max_attempts: int = 200, **kwargs):
        super().__init__(space, max_trials, seed=seed, max_attempts=max_attempts, **kwargs)
        if population_size < 2:
            raise WidthSearchError(f"population_size must be at least 2, got {population_size}")
        if not 0.0 <= mutation_prob <= 1.0:
            raise WidthSearchError(f"mutation_prob must be in [0, 1], got {mutation_prob}")
        if initial_population not in ("prior", "uniform"):
            raise WidthSearchError(f"initial_population must be 'prior' or 'uniform', got '{initial_population}'")
        if prior_candidates < 1 or tournament_size < 1:
            raise WidthSearchError("prior_candidates and tournament_size must be at least 1")
        self.population_size = int(population_size)
        self.mutation_prob = float(mutation_prob)
        self.tournament_size = int(tournament_size)
        self.initial_population = initial_population
        self.prior_candidates = int(prior_candidates)
        self.layer_prior = _check_prior(space, layer_prior)

    # ------------------------------------------------------------------ initial population
    def _make_initial(self) -> List[Widths]:
        rng = np.random.default_rng([int(self.seed), 7919])
        wanted = self.population_size * (self.prior_candidates if self.initial_population == "prior" else 1)
        seen, candidates = set(), []
        for _ in range(wanted * 50):
            if len(candidates) >= wanted:
                break
            widths = self.space.sample(rng, self.layer_prior)
            if widths in seen or not self.space.feasible(widths):
                continue
            seen.add(widths)
            candidates.append(widths)
        if not candidates:
            raise WidthSearchError(f"no width vector within the budget {self.space.budget} was found; "
                                   "raise the budget or add smaller multipliers to the grid")
        if self.initial_population == "prior":
            # Stable sort: equal costs keep their (random) draw order.
            candidates.sort(key=lambda w: -self.space.cost(w))
        return candidates[: self.population_size]

    # ------------------------------------------------------------------ evolution
    def _tournament(self, rng, population):
        k = min(self.tournament_size, len(population))
        picks = rng.choice(len(population), size=k, replace=False)
        return max((population[i] for i in picks), key=lambda ws: ws[1])[0]

    def _mutate(self, rng, parent: Widths) -> Widths:
        n = self.space.num_layers
        flip = rng.random(n) < 1.0 / n
        if not flip.any():
            flip[rng.integers(n)] = True
        child = list(parent)
        for layer in np.flatnonzero(flip):
            grid = self.space.choices[layer]
            if len(grid) < 2:
                continue
            current = self.space.index(layer, parent[layer])
            p = np.ones(len(grid)) if self.layer_prior is None else self.layer_prior[layer].copy()
            p[current] = 0.0
            if p.sum() <= 0:
                p = np.ones(len(grid))
                p[current] = 0.0
            child[layer] = grid[int(rng.choice(len(grid), p=p / p.sum()))]
        return tuple(child)

    def _crossover(self, rng, a: Widths, b: Widths) -> Widths:
        take_a = rng.random(len(a)) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take_a))

    def populate_space(self, trial_id):
        initial = self._initial_proposal(trial_id)
        if initial is not None:
            return initial
        completed = self._completed()
        if not completed:  # initial members still running: explore meanwhile
            return self._propose(trial_id, self._random_feasible(self._rng(), self.layer_prior), "random")
        population = sorted(completed, key=lambda ws: -ws[1])[: self.population_size]
        for attempt in range(self.max_attempts):
            rng = self._rng(attempt + 1)
            if len(population) < 2 or rng.random() < self.mutation_prob:
                child, origin = self._mutate(rng, self._tournament(rng, population)), "mutation"
            else:
                a = self._tournament(rng, population)
                b = self._tournament(rng, [p for p in population if p[0] != a] or population)
                child, origin = self._crossover(rng, a, b), "crossover"
            if self._novel_feasible(child):
                return self._propose(trial_id, child, origin)
        return self._propose(trial_id, self._random_feasible(self._rng(), self.layer_prior), "random")



class WidthTuner(kt.Tuner):
    """Runs a width oracle: each trial scores one width vector with ``evaluator`` (no training).

    Args:
        oracle: a :class:`~tfbnas.width.surrogate.SurrogateWidthOracle`, :class:`EvolutionWidthOracle` or
            :class:`RandomWidthOracle`.
        evaluator: ``evaluator(widths) -> float`` (higher is better) or a dict of metrics with a
            ``"score"`` entry, e.g. a table lookup or :meth:`BCNetSupernet.score_widths`.
        directory, project_name, overwrite: keras-tuner's project directory; with
            ``overwrite=False`` an existing project is resumed.

    Example:
        >>> tuner = WidthTuner(oracle, bench.accuracy, directory="runs/ws", project_name="evo")
        >>> tuner.search(verbose=0)
        >>> tuner.best_widths(), tuner.queries()
    """

    def __init__(self, oracle: _BudgetedWidthOracle, evaluator: Callable[[Widths], Union[float, dict]], **kwargs):
        if not isinstance(oracle, _BudgetedWidthOracle):
            raise WidthSearchError("WidthTuner needs a width oracle: SurrogateWidthOracle, EvolutionWidthOracle "
                                   "or RandomWidthOracle")
        if not callable(evaluator):
            raise WidthSearchError("evaluator must be callable: evaluator(widths) -> score")
        self.evaluator = evaluator
        super().__init__(oracle=oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        widths = self.oracle.space.widths_from_values(trial.hyperparameters.values)
        result = self.evaluator(widths)
        if isinstance(result, dict):
            if "score" not in result:
                raise WidthSearchError(f"evaluator returned {sorted(result)}; it must include 'score'")
            return {k: float(v) for k, v in result.items()}
        score = float(result)
        if math.isnan(score):
            raise WidthSearchError(f"evaluator returned NaN for {widths}")
        return {"score": score}

    def history(self) -> List[dict]:
        """All trials in creation order: ``{"trial_id", "widths", "score", "cost", "origin", "status"}``."""
        rows = []
        for trial_id in self.oracle.start_order:
            trial = self.oracle.trials[trial_id]
            widths = self.oracle.space.widths_from_values(trial.hyperparameters.values)
            rows.append({"trial_id": trial_id, "widths": list(widths), "score": trial.score,
                         "cost": self.oracle.space.cost(widths), "origin": self.oracle.origins.get(trial_id, ""),
                         "status": trial.status})
        return rows

    def queries(self) -> int:
        """Number of width vectors evaluated (completed trials)."""
        return len(self.oracle._completed())

    def best_widths(self) -> Widths:
        """The oracle's final choice: the best-scoring trial, or the surrogate's best posterior mean."""
        return self.oracle.best_widths()


def run_width_search(space: WidthSpace, evaluator: Callable, method: str = "surrogate", max_trials: int = 100,
                     directory: str = "width_search", project_name: Optional[str] = None, seed: int = 0,
                     overwrite: bool = False, **oracle_kwargs) -> WidthTuner:
    """Build the oracle and tuner for ``method`` and run the search.

    Args:
        method: ``"surrogate"`` (:class:`~tfbnas.width.surrogate.SurrogateWidthOracle`, the default),
            ``"evolution"`` or ``"random"``.
        oracle_kwargs: passed to the oracle's constructor.

    Returns:
        The :class:`WidthTuner` after ``search`` (resumed if the project existed and ``overwrite`` is False).
    """
    if method == "surrogate":
        from tfbnas.width.surrogate import SurrogateWidthOracle  # the module builds on this one

        oracle = SurrogateWidthOracle(space, max_trials=max_trials, seed=seed, **oracle_kwargs)
    elif method == "evolution":
        oracle = EvolutionWidthOracle(space, max_trials=max_trials, seed=seed, **oracle_kwargs)
    elif method == "random":
        oracle = RandomWidthOracle(space, max_trials=max_trials, seed=seed, **oracle_kwargs)
    else:
        raise WidthSearchError(f"unknown search method '{method}'; use 'surrogate', 'evolution' or 'random'")
    tuner = WidthTuner(oracle, evaluator, directory=directory, project_name=project_name or f"{method}_seed{seed}",
                       overwrite=overwrite)
    tuner.search(verbose=0)
    return tuner
