"""The fidelity ladder (--fidelity ladder): Optuna's halving rule, racing in a batch, Optuna's pruner, resume."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from autoprune.ladder import TOP, Ladder
from autoprune.problem import Problem
from autoprune.study import Study, StudyInfo

from conftest import cli_main, needs_fashion


def test_promotion_rule_is_optunas_successive_halving_rule():
    from optuna.pruners._successive_halving import _is_trial_promotable_to_next_rung
    from optuna.study import StudyDirection

    rng = np.random.default_rng(0)
    for eta in (2, 3, 4):
        ladder = Ladder(eta=eta)
        values = rng.uniform(size=40).round(2)  # rounded: ties happen, as with accuracies on 1000 images
        for v in values:
            ladder.rewards[0].append(float(v))
            assert ladder.promotable(0, float(v)) == _is_trial_promotable_to_next_rung(
                float(v), list(ladder.rewards[0]), eta, StudyDirection.MAXIMIZE)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Ladder(eta=1)
    with pytest.raises(ValueError):
        Ladder(steps=-1)
    assert Ladder(steps=0).top == TOP - 1 and len(Ladder(steps=0).rewards) == TOP
    assert Ladder(steps=0).describe()["rungs"] == ["quick", "full"]


@pytest.fixture(scope="module")
def make_ladder_problem(shipped_resnet20_problem, fmnist_subset):
    from autoprune.data import load_data

    data = load_data(fmnist_subset, heldout_size=500)

    def make(eta: int = 3, study: Study | None = None) -> Problem:
        problem = shipped_resnet20_problem(calib_batches=4)
        problem.use_reconstruction()
        problem.fidelity = "ladder"
        problem.ladder = Ladder(eta=eta, steps=2, batch_size=32, data=data)
        if study is not None:
            problem.attach_study(study)
        return problem

    return make


def _candidates(problem: Problem, n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [problem.project(rng.uniform(0, problem.space.max_ratios), rng) for _ in range(n)]


@needs_fashion
def test_a_batch_races_and_the_best_comes_from_the_top_rung(make_ladder_problem, shipped_resnet20_problem):
    problem = make_ladder_problem()
    candidates = _candidates(problem, 9)
    results = problem.evaluate_many(candidates)
    quick = [r.rung_accuracy[0] for r in results]
    third = sorted(quick, reverse=True)[2]  # the pool of rung 0 is the batch: its top 9 // 3 = 3 climb
    climbers = {i for i, r in enumerate(results) if r.rung >= 1}
    assert climbers == {i for i, q in enumerate(quick) if q >= third} and len(climbers) >= 3
    assert sum(r.rung == TOP for r in results) >= 1  # and the top len(climbers) // 3 of those to the fine-tune
    # rung 1 is exactly the full score: refit, BN on every calibration batch, every held-out image
    full = shipped_resnet20_problem(calib_batches=4)
    full.use_reconstruction()
    for i in climbers:
        assert results[i].rung_accuracy[1] == full.evaluate(candidates[i]).accuracy
    top = next(r for r in results if r.rung == TOP)
    assert problem.best is top and problem.ranked() == [top]
    assert problem.ladder.describe()["candidates_per_rung"][:2] == [9, len(climbers)]
    assert problem.timing["finetune"] > 0


@needs_fashion
def test_one_at_a_time_follows_the_asynchronous_rule_and_resumes_exactly(make_ladder_problem, tmp_path):
    problem = make_ladder_problem()
    names, highs = problem.space.names, list(problem.space.max_ratios)
    info = StudyInfo("resnet20", "random", 0, ["50%FLOPs"], names)
    study = Study(f"sqlite:///{tmp_path / 'study.db'}", "run", info, highs)
    problem.attach_study(study)
    candidates = _candidates(problem, 7, seed=11)
    first = [problem.evaluate(c) for c in candidates]
    assert first[0].rung == TOP  # the first candidate always climbs (Optuna promotes its first eta - 1 trials)
    pool: list[float] = []
    for r in first:  # each decided against the rung-0 rewards seen up to and including its own
        pool.append(r.rung_accuracy[0])
        k = max(1, len(pool) // 3)
        assert (r.rung >= 1) == (r.rung_accuracy[0] >= sorted(pool, reverse=True)[k - 1])
    stored = {rec["key"]: rec for rec in study.records()}
    assert all(stored[r.key]["rung"] == r.rung and stored[r.key]["rung_accuracy"] == r.rung_accuracy for r in first)

    resumed = make_ladder_problem(study=Study(f"sqlite:///{tmp_path / 'study.db'}", "run", info, highs, resume=True))
    again = [resumed.evaluate(c) for c in candidates]
    assert all(a.cached for a in again)
    assert [(a.rung, a.accuracy) for a in again] == [(r.rung, r.accuracy) for r in first]
    assert resumed.ladder.rewards[0] == pytest.approx(problem.ladder.rewards[0])
    assert resumed.best.key == problem.best.key


@needs_fashion
def test_optuna_samplers_climb_by_optunas_pruner(make_ladder_problem):
    from autoprune.agents.optuna import OptunaSearch

    problem = make_ladder_problem()
    searcher = OptunaSearch("tpe")
    searcher.search(problem, 8, seed=0)
    trials = searcher.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete
    by_index = {r.index: r for r in problem.results}
    for t in trials:  # Optuna's intermediate values are the ladder's rewards at steps eta**rung
        r = by_index[t.user_attrs["evaluation"]]
        assert sorted(t.intermediate_values) == [3 ** k for k in range(r.rung + (r.rung < TOP))] or r.cached
        assert (t.state == optuna.trial.TrialState.COMPLETE) == (r.rung == TOP)
    assert problem.best.rung == TOP


@needs_fashion
def test_cli_refuses_a_ladder_it_cannot_run(fmnist_subset, tmp_path, capsys, monkeypatch):
    for extra, words in ((["--ladder-eta", "1"], "eta"), (["--workers", "2", "--agent", "random"], "--workers 1")):
        code, _, err = cli_main(["search", "resnet20", "--budget", "50%FLOPs", "--data", fmnist_subset,
                                 "--fidelity", "ladder", "--out", str(tmp_path / "run"), "--heldout", "500", "--weights", "random",
                                 *extra], capsys, monkeypatch)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
