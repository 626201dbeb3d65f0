"""Budgets: parsing, feasibility, and projection of any ratio vector onto the budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.budget import BudgetSet, human, parse_budget
from autoprune.errors import UserError
from autoprune.graph import build_graph
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

BASE = {"macs": 4.0e9, "params": 25.0e6}


@pytest.mark.parametrize("text, metric, target, relative", [
    ("50%FLOPs", "macs", 2.0e9, 0.5),
    ("2.1GFLOPs", "macs", 2.1e9, None),
    ("600MFLOPs", "macs", 600e6, None),
    ("60%params", "params", 15.0e6, 0.6),
    ("1.5Mparams", "params", 1.5e6, None),
    ("30%MACs", "macs", 1.2e9, 0.3),
    (" 100%flops ", "macs", 4.0e9, 1.0),
    ("500kparams", "params", 500e3, None),
])
def test_parse_budget(text, metric, target, relative):
    b = parse_budget(text, BASE)
    assert b.metric == metric
    assert b.target == pytest.approx(target, rel=1e-12)
    assert b.relative == (pytest.approx(relative) if relative is not None else None)
    assert b.text == text


@pytest.mark.parametrize("text", ["abc", "50%", "-3GFLOPs", "150%FLOPs", "5Gwatts", "", "0%FLOPs",
                                  "0GFLOPs", "50%%FLOPs", "1.5 X params"])
def test_malformed_budgets_raise_user_error(text):
    with pytest.raises(UserError) as info:
        parse_budget(text, BASE)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(text)[1:-1] in msg or text in msg


def test_budget_for_a_metric_without_cost_model():
    with pytest.raises(UserError, match="no cost model"):
        parse_budget("50%params", {"macs": 1.0})


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, (1, 28, 28), model_id="resnet20")
    space = ChannelSpace(graph)
    base = {"macs": graph.base_macs, "params": graph.base_params}
    return space, base


def _budget_set(space, base, texts):
    def costs(r):
        return {"macs": space.macs(r), "params": space.params(r)}

    return BudgetSet([parse_budget(t, base) for t in texts], costs, base, space.max_ratios)


def test_infeasible_budget_states_the_minimum(resnet):
    space, base = resnet
    bs = _budget_set(space, base, ["1%FLOPs"])
    low = bs.minimum["macs"]
    assert low == space.macs(space.max_ratios)
    assert low > 0.01 * base["macs"]
    with pytest.raises(UserError) as info:
        bs.check_feasible()
    msg = str(info.value)
    assert "1%FLOPs" in msg and "infeasible" in msg
    assert human(low) in msg
    assert f"{low / base['macs']:.1%}" in msg


def test_feasible_budget_passes_check(resnet):
    space, base = resnet
    _budget_set(space, base, ["50%FLOPs", "60%params"]).check_feasible()
    # exactly the minimum is still reachable
    bs = _budget_set(space, base, [f"{space.macs(space.max_ratios) * 1.0000001:.6f}FLOPs"])
    bs.check_feasible()


def test_project_meets_single_budget_within_tolerance(resnet):
    space, base = resnet
    bs = _budget_set(space, base, ["50%FLOPs"])
    target = 0.5 * base["macs"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        raw = rng.uniform(0, space.max_ratios)
        r = bs.project(raw, space.snap, space.step, rng)
        assert np.array_equal(r, space.snap(r)), "projection must land on the grid"
        assert np.all(r >= 0) and np.all(r <= space.max_ratios + 1e-12)
        macs = space.macs(r)
        assert macs <= target
        assert macs >= 0.995 * target, (macs / target, raw)


def test_project_handles_extremes(resnet):
    space, base = resnet
    bs = _budget_set(space, base, ["50%FLOPs"])
    target = 0.5 * base["macs"]
    for raw in (np.zeros(space.size), space.max_ratios.copy(), np.full(space.size, 0.5)):
        macs = space.macs(bs.project(raw, space.snap, space.step, None))
        assert 0.995 * target <= macs <= target


def test_project_meets_two_budgets(resnet):
    space, base = resnet
    bs = _budget_set(space, base, ["50%FLOPs", "60%params"])
    tm, tp_ = 0.5 * base["macs"], 0.6 * base["params"]
    rng = np.random.default_rng(1)
    for _ in range(50):
        r = bs.project(rng.uniform(0, space.max_ratios), space.snap, space.step, rng)
        macs, params = space.macs(r), space.params(r)
        assert macs <= tm and params <= tp_
        assert macs >= 0.995 * tm or params >= 0.995 * tp_, (macs / tm, params / tp_)
