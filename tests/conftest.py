"""Shared fixtures: problems on real graphs whose evaluation needs no network.

`surrogate_problem` builds a real `Problem` (real graph, channel space, analytic costs, budgets,
cache) whose space hands the evaluator the snapped ratio vector instead of a pruned model, and
whose evaluator scores it with a known formula. Searchers and the env cannot tell the difference,
and a test knows the right answer.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from autoprune.budget import parse_budget
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)


class RatioSpace:
    """The real space in every respect but `apply`, which returns the ratios it was given."""

    def __init__(self, space) -> None:
        self._space = space

    def __getattr__(self, name: str):
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


@pytest.fixture(scope="session")
def graphs() -> Callable[[str], object]:
    """Graph of a zoo model for a (1, 28, 28) input, built once per session."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
            cache[name] = (model, build_graph(model, SHAPE, model_id=name))
        return cache[name]

    return get


@pytest.fixture
def surrogate_problem(graphs) -> Callable[..., Problem]:
    def make(name: str = "resnet20", budgets: tuple[str, ...] = ("50%FLOPs",),
             sensitivities: np.ndarray | None = None, reward: str = "accuracy") -> Problem:
        model, graph = graphs(name)
        space = RatioSpace(ChannelSpace(graph))
        s = np.full(space.size, 0.1) if sensitivities is None else sensitivities
        base = {"macs": graph.base_macs, "params": graph.base_params}
        return Problem(model, space, [parse_budget(b, base) for b in budgets], QuadraticAccuracy(s),
                       reward=reward, seed=0)

    return make
