"""Problems on real graphs whose evaluation needs no network (a known answer for searchers).

`RatioSpace` is the real search space in every respect but `apply`, which hands the evaluator the
snapped ratio vector instead of a pruned model; `QuadraticAccuracy` scores that vector with a
formula. A `Problem` built on them has the real graph, costs, budgets, cache and study, so the env
and the searchers cannot tell the difference -- and a test knows the right answer.
"""
from __future__ import annotations

import numpy as np


class RatioSpace:
    """The real space in every respect but `apply`, which returns the ratios it was given."""

    def __init__(self, space) -> None:
        self._space = space

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_space":  # copy/pickle probe before _space exists
            raise AttributeError(name)
        return getattr(self._space, name)

    def apply(self, model, ratios: np.ndarray, **_) -> np.ndarray:
        return np.asarray(ratios, dtype=np.float64).copy()


class QuadraticAccuracy:
    """Known answer: accuracy = 1 - sum_g s_g * ratio_g^2 (very unequal s: spare the sensitive)."""

    def __init__(self, sensitivities: np.ndarray) -> None:
        self.s = np.asarray(sensitivities, dtype=np.float64)
        self.calls = 0

    def __call__(self, ratios: np.ndarray) -> dict:
        self.calls += 1
        return {"top1": float(1.0 - (self.s * ratios ** 2).sum())}


def race(make_problem, entries) -> dict:
    """Run each (name, searcher, evaluations) on a fresh problem from `make_problem()`: name -> problem."""
    results = {}
    for name, searcher, evals in entries:
        problem = make_problem()
        searcher.search(problem, evals, seed=0)
        assert problem.n_evals == evals
        results[name] = problem
    return results
