"""Shared fixtures: zoo graphs built once, and problems whose evaluation is a formula (surrogate.py)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from autoprune.budget import parse_budget
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model
from surrogate import QuadraticAccuracy, RatioSpace

SHAPE = (1, 28, 28)


@pytest.fixture(scope="session")
def graphs() -> Callable[[str], tuple]:
    """(model, graph) of a zoo model with random weights for a (1, 28, 28) input, built once."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
            cache[name] = (model, build_graph(model, SHAPE, model_id=name))
        return cache[name]

    return get


@pytest.fixture
def surrogate_problem(graphs) -> Callable[..., Problem]:
    """make(model, budgets, sensitivities, reward) -> a channel-space Problem scored by QuadraticAccuracy."""
    def make(name: str = "resnet20", budgets: tuple[str, ...] = ("50%FLOPs",),
             sensitivities: np.ndarray | None = None, reward: str = "accuracy") -> Problem:
        model, graph = graphs(name)
        space = RatioSpace(ChannelSpace(graph))
        s = np.full(space.size, 0.1) if sensitivities is None else sensitivities
        base = {"macs": graph.base_macs, "params": graph.base_params}
        return Problem(model, space, [parse_budget(b, base) for b in budgets], QuadraticAccuracy(s),
                       reward=reward, seed=0)

    return make
