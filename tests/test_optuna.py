"""Optuna samplers on the known-answer surrogate: they improve, stay within budget, replay exactly."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from autoprune import agents
from autoprune.agents.optuna import OptunaSearch, pareto_front

EVALS = 60


def _sensitivities(problem) -> np.ndarray:
    n = problem.space.size
    return np.where(np.arange(n) < n // 2, 1.0, 0.01)  # spare the first half, prune the rest


def _run(surrogate_problem, name: str, evals: int = EVALS, seed: int = 0):
    s = _sensitivities(surrogate_problem())
    problem = surrogate_problem(sensitivities=s)
    searcher = agents.build(name)
    searcher.search(problem, evals, seed=seed)
    return problem, searcher


@pytest.mark.parametrize("name", ["tpe", "cmaes", "qmc", "optuna:random", "nsga2"])
def test_sampler_improves_and_keeps_every_candidate_within_budget(surrogate_problem, name):
    problem, searcher = _run(surrogate_problem, name)
    uniform, _ = _run(surrogate_problem, "uniform", evals=1)
    assert problem.n_evals == EVALS
    target = problem.budgets.budgets[0].target
    assert all(r.costs["macs"] <= target for r in problem.results)
    assert not searcher.study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert problem.best.accuracy > uniform.best.accuracy + 0.2, (problem.best.accuracy, uniform.best.accuracy)
    if name != "nsga2":  # single-objective: projected to the budget, so each spends it (within 0.5%)
        assert all(r.costs["macs"] >= target * 0.99 for r in problem.results)
    acc = np.array([r.accuracy for r in problem.results])
    if name in ("tpe", "cmaes", "nsga2"):  # model-based: later candidates are better than the first ones
        assert acc[-EVALS // 3:].mean() > acc[:EVALS // 3].mean() + 0.1, acc


def test_nsga2_returns_a_non_dominated_front(surrogate_problem):
    problem, searcher = _run(surrogate_problem, "nsga2")
    front = searcher.pareto_front()
    assert len(front) >= 3
    pts = [(f["accuracy"], f["costs"]["macs"]) for f in front]
    assert [c for _, c in pts] == sorted(c for _, c in pts)  # cheapest first
    for i, (a, c) in enumerate(pts):
        for j, (b, d) in enumerate(pts):
            assert i == j or not (b >= a and d <= c), (pts[i], pts[j])  # nobody on the front dominates another
    for r in problem.results:  # every evaluation is matched or beaten by a front point
        assert any(a >= r.accuracy and c <= r.costs["macs"] for a, c in pts)
    assert max(a for a, _ in pts) == problem.best.accuracy
    spread = [c for _, c in pts]
    assert spread[0] < 0.95 * spread[-1]  # candidates below the budget too, not only at it


def test_pareto_front_helper():
    pts = [(0.9, 10.0), (0.8, 5.0), (0.85, 12.0), (0.8, 5.0), (0.95, 20.0), (0.7, 6.0)]
    assert pareto_front(pts) == [1, 0, 4]


def test_same_seed_same_suggestions(surrogate_problem):
    a, _ = _run(surrogate_problem, "tpe", evals=20, seed=3)
    b, _ = _run(surrogate_problem, "tpe", evals=20, seed=3)
    c, _ = _run(surrogate_problem, "tpe", evals=20, seed=4)
    assert [r.key for r in a.results] == [r.key for r in b.results]
    assert [r.key for r in a.results] != [r.key for r in c.results]


def test_unknown_sampler_refused():
    with pytest.raises(ValueError, match="unknown Optuna sampler"):
        OptunaSearch("grid")
