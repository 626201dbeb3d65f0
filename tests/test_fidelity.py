"""Multi-fidelity scoring (--fidelity auto) against full scoring of the same candidates."""
from __future__ import annotations

import numpy as np
import pytest

from autoprune.evaluate import wilson_upper
from autoprune.problem import Problem

from conftest import needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def make_problem(shipped_resnet20_problem):
    def make(fidelity: str) -> Problem:
        problem = shipped_resnet20_problem(calib_batches=6)
        problem.fidelity = fidelity
        return problem

    return make


def _candidates(problem: Problem, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [problem.project(rng.uniform(0, problem.space.max_ratios), rng) for _ in range(n)]


def test_auto_fidelity_never_stops_a_would_be_best_and_finishes_with_full_scores(make_problem):
    full, auto = make_problem("full"), make_problem("auto")
    candidates = _candidates(full, 14)
    for r in candidates:
        full.evaluate(r)
        auto.evaluate(r)
    partial = [i for i, r in enumerate(auto.results) if r.partial]
    assert partial, "nothing stopped early: the check proves nothing"
    best_so_far = -1.0
    for f, a in zip(full.results, auto.results):
        if a.partial:  # stopped: on the whole split it would not have become the best either
            assert f.accuracy <= best_so_far
        else:  # finished: exactly the full-fidelity score (same BN batches, same images)
            assert a.accuracy == f.accuracy
        best_so_far = max(best_so_far, f.accuracy)
    assert auto.best.key == full.best.key and auto.best.accuracy == full.best.accuracy
    assert not auto.best.partial


def test_auto_fidelity_is_deterministic(make_problem):
    runs = []
    for _ in range(2):
        problem = make_problem("auto")
        for r in _candidates(problem, 6):
            problem.evaluate(r)
        runs.append([(r.key, r.accuracy, r.partial) for r in problem.results])
    assert runs[0] == runs[1]


def test_wilson_bound_covers_the_observed_rate():
    assert wilson_upper(0.5, 200) > 0.5 and wilson_upper(1.0, 100) == pytest.approx(1.0)
    assert wilson_upper(0.8, 200) < wilson_upper(0.8, 50)  # more images, tighter bound
