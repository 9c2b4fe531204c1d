"""Model-based width search (SurrogateWidthOracle): resume, additive recovery, noise-aware final choice, budget."""

import json
from collections import Counter

import numpy as np
import pytest

from tfbnas.width import WidthSearchError
from tfbnas.width.evolution import RandomWidthOracle, WidthSpace, WidthTuner, run_width_search
from tfbnas.width.surrogate import AdditiveSurrogate, SurrogateWidthOracle

GRID = (0.25, 0.5, 0.75, 1.0)
REPEATS = {"probe", "reevaluation"}


def _additive_problem(layers=6, seed=0):
    """An exactly additive score whose best feasible vector is not simply the widest one."""
    rng = np.random.default_rng(seed)
    effects = np.sort(rng.normal(0.0, 1.0, (layers, len(GRID))), axis=1)  # wider is better, unevenly by layer
    weights = rng.uniform(0.5, 2.0, layers)  # cost of a layer per unit width

    def cost(w):
        return float(np.dot(w, weights))

    def score(w):
        return float(sum(effects[l][GRID.index(x)] for l, x in enumerate(w)))

    space = WidthSpace([f"l{i}" for i in range(layers)], GRID, cost=cost, budget=0.55 * cost((1.0,) * layers))
    feasible = [w for w in _all(layers) if space.feasible(w)]
    best = max(feasible, key=score)
    return space, score, best, feasible


def _all(layers):
    return [tuple(GRID[k] for k in idx) for idx in np.ndindex(*([len(GRID)] * layers))]


class _Crash(BaseException):
    """Ends a search the way a killed process does (keras-tuner only catches ``Exception``)."""


class _Noisy:
    """``score(w) + sd * z``, z seeded by (seed, widths, how often w was evaluated).

    ``lucky=(call, bump)`` adds ``bump`` to one evaluation; ``crash_at`` raises :class:`_Crash` on that call.
    """

    def __init__(self, score, sd, seed=0, lucky=None, counts=None, crash_at=None):
        self.score, self.sd, self.seed, self.lucky, self.crash_at = score, sd, seed, lucky, crash_at
        self.counts = Counter(counts or {})
        self.calls = 0

    def __call__(self, widths):
        if self.calls + 1 == self.crash_at:
            raise _Crash()
        j = self.counts[widths]
        self.counts[widths] += 1
        self.calls += 1
        digits = int("".join(str(GRID.index(x) + 1) for x in widths))
        value = self.score(widths) + self.sd * np.random.default_rng([self.seed, digits, j]).standard_normal()
        if self.lucky is not None and self.calls == self.lucky[0]:
            value += self.lucky[1]  # one lucky evaluation
        return value


def _widths(tuner):
    return [tuple(r["widths"]) for r in tuner.history()]


def test_oracle_resumes_from_its_directory(tmp_path):
    space, score, _, _ = _additive_problem(layers=4, seed=1)

    def oracle():
        return SurrogateWidthOracle(space, max_trials=16, initial_trials=4, reevaluation_fraction=0.25, seed=3)

    # The process dies during the 14th evaluation (a re-evaluation: the last 4 trials re-evaluate).
    first_eval = _Noisy(score, 0.05, seed=2, crash_at=14)
    first = WidthTuner(oracle(), first_eval, directory=str(tmp_path), project_name="sur")
    with pytest.raises(_Crash):
        first.search(verbose=0)
    assert first.queries() == 13
    ids_before = list(first.oracle.start_order)
    files = {i: open(tmp_path / "sur" / f"trial_{i}" / "trial.json").read() for i in ids_before[:13]}

    # A new tuner on the same directory; the evaluator keeps its own count of evaluations per vector.
    second = WidthTuner(oracle(), _Noisy(score, 0.05, seed=2, counts=first_eval.counts), directory=str(tmp_path),
                        project_name="sur", overwrite=False)
    assert second.queries() == 13  # reloaded, not started over
    assert second.oracle.get_state()["initial_design"] == first.oracle.get_state()["initial_design"]
    second.search(verbose=0)
    assert second.queries() == 16
    assert second.oracle.start_order[:14] == ids_before  # the interrupted trial is run again, not replaced
    for i in ids_before[:13]:  # earlier trials untouched
        assert json.loads(open(tmp_path / "sur" / f"trial_{i}" / "trial.json").read())["score"] == \
            json.loads(files[i])["score"]
    # Same proposals and the same final choice as an uninterrupted run with the same seed.
    straight = WidthTuner(oracle(), _Noisy(score, 0.05, seed=2), directory=str(tmp_path), project_name="straight")
    straight.search(verbose=0)
    assert _widths(straight) == _widths(second)
    assert [r["origin"] for r in straight.history()] == [r["origin"] for r in second.history()]
    assert {"initial", "model", "probe", "reevaluation"} <= {r["origin"] for r in second.history()}
    assert straight.best_widths() == second.best_widths()


def test_finds_the_best_of_an_additive_score_where_random_search_does_not(tmp_path):
    found = {"surrogate": [], "random": []}
    for seed in range(3):
        space, score, best, feasible = _additive_problem(seed=seed)
        assert len(feasible) > 1000 and best != (1.0,) * 6
        sur = run_width_search(space, score, "surrogate", max_trials=30, directory=str(tmp_path), seed=seed)
        rnd = WidthTuner(RandomWidthOracle(space, max_trials=30, seed=seed), score, directory=str(tmp_path),
                         project_name=f"random_{seed}")
        rnd.search(verbose=0)
        assert isinstance(sur.oracle, SurrogateWidthOracle)  # the default method
        found["surrogate"].append(sur.best_widths() == best)
        found["random"].append(rnd.best_widths() == best)
        # The other oracles still return their best-scoring trial.
        assert rnd.best_widths() == max(_widths(rnd), key=score)
        # An exact evaluator: one probe shows that repeats agree, the other trials are all new vectors.
        assert Counter(r["origin"] for r in sur.history())["probe"] == 1
        assert len(set(_widths(sur))) == 29
    assert all(found["surrogate"]), found
    assert sum(found["random"]) <= 1, found


def test_final_choice_under_noise_does_not_trust_a_single_lucky_score(tmp_path):
    space, score, best, feasible = _additive_problem(seed=4)
    evaluator = _Noisy(score, 0.1, seed=5, lucky=(2, 3.0))  # the 2nd evaluation is 3.0 too high
    tuner = run_width_search(space, evaluator, "surrogate", max_trials=40, directory=str(tmp_path), seed=6)
    history = tuner.history()
    lucky = tuple(history[1]["widths"])
    # keras-tuner's best trial is the lucky one; the oracle's choice is not.
    assert tuple(tuner.oracle.space.widths_from_values(tuner.oracle.get_best_trials(1)[0].hyperparameters.values)) \
        == lucky
    pick = tuner.best_widths()
    assert pick != lucky and score(pick) > score(lucky)
    estimates = tuner.oracle.estimates()
    assert estimates[0]["widths"] == pick
    assert estimates[0]["evaluations"] >= 2  # re-evaluated before being chosen
    row = next(e for e in estimates if e["widths"] == lucky)
    assert row["evaluations"] >= 2 and row["posterior_mean"] < estimates[0]["posterior_mean"]
    # The noise was recognised and estimated near its true size (0.1), not as the lucky 3.0 jump.
    model = tuner.oracle.model()
    assert not model.deterministic and 0.02 < model.noise_sd < 1.0


@pytest.mark.parametrize("max_enumerate", [100_000, 0])  # whole grid, or sampled candidates + coordinate ascent
def test_proposals_respect_the_budget_and_repeat_only_on_purpose(tmp_path, max_enumerate):
    space, score, _, _ = _additive_problem(seed=7)
    tuner = WidthTuner(SurrogateWidthOracle(space, max_trials=30, seed=8, max_enumerate=max_enumerate,
                                            candidates=500),
                       _Noisy(score, 0.2, seed=9), directory=str(tmp_path), project_name=f"b{max_enumerate}")
    tuner.search(verbose=0)
    history = tuner.history()
    assert len(history) == 30
    assert all(row["cost"] <= space.budget + 1e-9 for row in history)
    seen = set()
    for row in history:
        widths = tuple(row["widths"])
        if row["origin"] in REPEATS:
            assert widths in seen, "a re-evaluation must repeat an evaluated vector"
        else:
            assert widths not in seen, f"{row['origin']} proposal repeated {widths}"
        seen.add(widths)
    origins = Counter(row["origin"] for row in history)
    assert origins["probe"] == 1 and origins["reevaluation"] == round(0.3 * 30) - 1


def test_surrogate_model_and_argument_checks():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 4, (40, 3))
    effects = np.array([[0.0, 1.0, 1.5, 1.7], [0.0, 0.2, 0.3, 0.9], [0.0, -0.5, 0.5, 0.6]])
    scores = effects[np.arange(3), levels].sum(axis=1) + 3.0
    model = AdditiveSurrogate((4, 4, 4)).fit(levels, scores)
    assert model.deterministic and model.noise_sd == 0.0
    mean, var = model.predict([[3, 3, 2], [0, 0, 0]])
    np.testing.assert_allclose(mean, [1.7 + 0.9 + 0.5 + 3.0, 3.0], atol=0.05)
    assert (var >= 0).all()
    with pytest.raises(WidthSearchError, match="one score per width vector"):
        AdditiveSurrogate((4, 4, 4)).fit(levels, scores[:-1])
    space = WidthSpace(["a", "b"], GRID, cost=sum, budget=1.5)
    with pytest.raises(WidthSearchError, match="reevaluation_fraction"):
        SurrogateWidthOracle(space, max_trials=10, reevaluation_fraction=1.0)
    with pytest.raises(WidthSearchError, match="unknown search method"):
        run_width_search(space, sum, "annealing", max_trials=3)
