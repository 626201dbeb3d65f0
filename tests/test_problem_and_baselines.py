"""The problem (budget check, cache, study, resume) and the baseline searchers on a real ResNet-20."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune import agents
from autoprune.budget import parse_budget
from autoprune.data import TensorSplit
from autoprune.errors import UserError
from autoprune.evaluate import Evaluator
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace
from autoprune.study import Study, StudyInfo
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)
BUDGET = "50%FLOPs"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, SHAPE, model_id="resnet20")
    space = ChannelSpace(graph)
    g = torch.Generator().manual_seed(0)
    train = TensorSplit(torch.randn(256, *SHAPE, generator=g), torch.randint(0, 10, (256,), generator=g))
    heldout = TensorSplit(torch.randn(128, *SHAPE, generator=g), torch.randint(0, 10, (128,), generator=g))
    evaluator = Evaluator(train, heldout, torch.device("cpu"), calib_batches=2, calib_batch_size=64, seed=0)
    return model, graph, space, evaluator


def _problem(setup, budgets=(BUDGET,), study: Study | None = None) -> Problem:
    model, graph, space, evaluator = setup
    base = {"macs": graph.base_macs, "params": graph.base_params}
    return Problem(model, space, [parse_budget(b, base) for b in budgets], evaluator, study=study, seed=0)


def _study(tmp_path, space, *, agent="random", resume=False, name="run") -> Study:
    info = StudyInfo("resnet20", agent, 0, [BUDGET], space.names)
    return Study(f"sqlite:///{tmp_path / 'study.db'}", name, info, list(space.max_ratios), resume=resume)


def _within_target(problem: Problem, costs: dict) -> bool:
    target = 0.5 * problem.base_costs["macs"]
    return 0.995 * target <= costs["macs"] <= target


def test_over_budget_policy_is_refused_and_not_recorded(setup, tmp_path):
    space = setup[2]
    study = _study(tmp_path, space)
    problem = _problem(setup, study=study)
    assert problem.evaluate(np.zeros(space.size)) is None
    assert problem.evaluate(np.full(space.size, 0.05)) is None
    assert problem.n_evals == 0 and problem.results == [] and problem.best is None
    assert study.records() == []
    assert not problem.feasible(np.zeros(space.size))


def test_infeasible_budget_refused_up_front(setup):
    with pytest.raises(UserError, match="infeasible"):
        _problem(setup, budgets=("1%FLOPs",))


def test_evaluate_records_in_study_and_caches(setup, tmp_path):
    space = setup[2]
    study = _study(tmp_path, space)
    problem = _problem(setup, study=study)
    ratios = problem.project(np.full(space.size, 0.4))
    first = problem.evaluate(ratios)
    assert first is not None and not first.cached
    assert 0.0 <= first.accuracy <= 1.0 and first.top5 is not None
    assert _within_target(problem, first.costs)
    assert first.costs["params"] < problem.base_costs["params"]
    assert first.seconds["prune"] > 0 and first.seconds["forward"] > 0

    records = study.records()
    assert len(records) == 1
    rec = records[0]
    assert rec["key"] == first.key
    assert rec["ratios"] == pytest.approx(list(space.snap(ratios)))
    assert rec["macs"] == first.costs["macs"] and rec["params"] == first.costs["params"]
    assert rec["accuracy"] == first.accuracy and rec["reward"] == first.reward
    trials = study.study.get_trials()
    assert len(trials) == 1 and trials[0].value == first.accuracy
    assert set(trials[0].params) == set(space.names)

    # the same policy again (even written slightly differently): cached, nothing new stored
    again = problem.evaluate(space.snap(ratios) + 1e-9)
    assert again.cached and again.key == first.key and again.accuracy == first.accuracy
    assert again.index == 1 and problem.n_evals == 2
    assert len(study.records()) == 1

    # a different policy is a new trial
    other = problem.evaluate(problem.project(np.linspace(0.1, 0.7, space.size)))
    assert not other.cached and other.key != first.key
    assert len(study.records()) == 2
    assert [r["key"] for r in study.records()] == [first.key, other.key]


def test_study_refuses_reuse_without_resume(setup, tmp_path):
    space = setup[2]
    _study(tmp_path, space)
    with pytest.raises(UserError, match="--resume"):
        _study(tmp_path, space)
    with pytest.raises(UserError, match="nothing to resume"):
        _study(tmp_path, space, name="other", resume=True)
    with pytest.raises(UserError, match="agent"):
        _study(tmp_path, space, agent="uniform", resume=True)


def _run(setup, agent: str, n: int, seed: int, study: Study | None = None) -> Problem:
    problem = _problem(setup, study=study)
    agents.build(agent).search(problem, n, seed=seed)
    return problem


def test_random_search_is_deterministic_per_seed(setup):
    a = _run(setup, "random", 3, seed=0)
    b = _run(setup, "random", 3, seed=0)
    c = _run(setup, "random", 3, seed=1)
    keys_a = [r.key for r in a.results]
    assert len(keys_a) == 3 and len(set(keys_a)) == 3
    assert keys_a == [r.key for r in b.results]
    assert [r.accuracy for r in a.results] == [r.accuracy for r in b.results]
    assert keys_a != [r.key for r in c.results]
    assert not set(keys_a) & {r.key for r in c.results}


@pytest.mark.parametrize("agent, n", [("uniform", 1), ("global", 1), ("random", 3)])
def test_baselines_meet_budget_within_tolerance(setup, agent, n):
    problem = _run(setup, agent, n, seed=0)
    assert problem.n_evals == n
    for r in problem.results:
        assert _within_target(problem, r.costs), (agent, r.costs["macs"] / problem.base_costs["macs"])
        assert np.all(r.ratios <= problem.space.max_ratios + 1e-12)
    if agent == "uniform":
        # one ratio for all groups, up to the grid and the final within-tolerance refinement
        kept_ratio = problem.results[0].ratios
        assert kept_ratio.max() - kept_ratio.min() < 0.15
    assert problem.best is not None


def test_resume_replays_from_the_study(setup, tmp_path):
    space = setup[2]
    first = _run(setup, "random", 3, seed=0, study=_study(tmp_path, space))
    assert not any(r.cached for r in first.results)

    study = _study(tmp_path, space, resume=True)
    assert len(study.records()) == 3
    second = _run(setup, "random", 3, seed=0, study=study)
    assert [r.key for r in second.results] == [r.key for r in first.results]
    assert all(r.cached for r in second.results)
    assert [r.accuracy for r in second.results] == [r.accuracy for r in first.results]
    assert len(study.records()) == 3  # nothing re-evaluated or re-stored
    assert second.timing["prune"] == 0.0 and second.timing["forward"] == 0.0


class SurrogateAccuracy:
    """A known answer: accuracy = 1 - sum_g s_g * ratio_g^2, read off the pruned model's widths."""

    def __init__(self, graph, sensitivities: np.ndarray) -> None:
        self.groups = [(g.name, g.channels) for g in graph.groups]
        self.s = sensitivities
        self.calls = 0

    def ratios_of(self, model: torch.nn.Module) -> np.ndarray:
        modules = dict(model.named_modules())
        return np.array([1.0 - modules[name].out_channels / n for name, n in self.groups])

    def __call__(self, model: torch.nn.Module) -> dict:
        self.calls += 1
        return {"top1": float(1.0 - (self.s * self.ratios_of(model) ** 2).sum())}


def test_random_search_learns_unequal_sensitivities(setup):
    graph = setup[1]
    # the first stage is very sensitive, the rest almost free to prune
    s = np.where(np.array([g.name.startswith("layer1.") for g in graph.groups]), 1.0, 0.01)
    assert 0 < s.sum() and (s == 1.0).sum() == 3

    uniform = _problem(setup)
    uniform.evaluator = SurrogateAccuracy(graph, s)
    agents.build("uniform").search(uniform, 1, seed=0)
    u = uniform.best

    random = _problem(setup)
    random.evaluator = surrogate = SurrogateAccuracy(graph, s)
    agents.build("random").search(random, 30, seed=0)
    assert random.n_evals == 30
    assert surrogate.calls == len({r.key for r in random.results})
    best = random.best
    # the surrogate saw exactly the policy the problem meant: the pruned widths match the ratios
    for r in random.results:
        assert r.accuracy == pytest.approx(1.0 - (s * r.ratios ** 2).sum(), abs=1e-9)
        assert _within_target(random, r.costs)
    assert _within_target(uniform, u.costs)
    assert best.accuracy > u.accuracy + 0.1, (best.accuracy, u.accuracy)
    # and it did so by sparing the sensitive groups
    sensitive = s == 1.0
    assert best.ratios[sensitive].mean() < u.ratios[sensitive].mean()
