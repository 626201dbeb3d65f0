"""--workers: candidates scored on Ray actors give the same run as scoring them in process."""
from __future__ import annotations

import optuna
import pytest

from autoprune.errors import UserError
from autoprune.search_job import SearchConfig, build_setup, run_search
from conftest import needs_fashion

pytestmark = needs_fashion


def _config(data: str, out, workers: int, agent: str = "random") -> SearchConfig:
    return SearchConfig(model="resnet20", budgets=["50%FLOPs"], data=data, weights="random", agent=agent, evals=4,
                        heldout=300, calib_batches=2, out=out, workers=workers, seed=0)


def _records(out) -> list[tuple[str, float]]:
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    return [(t.user_attrs["key"], t.value) for t in study.get_trials()]


@pytest.mark.parametrize("agent", ["random", "gnn", "evolution"])
def test_two_workers_give_the_same_results_as_one(fmnist_subset, tmp_path, agent):
    one = run_search(_config(fmnist_subset, tmp_path / "w1", 1, agent))
    two = run_search(_config(fmnist_subset, tmp_path / "w2", 2, agent))
    a, b = _records(tmp_path / "w1"), _records(tmp_path / "w2")
    assert len(a) == len(b) == 4
    assert [k for k, _ in a] == [k for k, _ in b]  # the same policies, in the same order
    for (_, x), (_, y) in zip(a, b):  # 1 vs 2 torch threads: float sums may differ by one image
        assert abs(x - y) <= 1 / 300 + 1e-9
    assert abs(one["heldout_accuracy"] - two["heldout_accuracy"]) <= 1 / 300 + 1e-9


def test_workers_refused_for_a_sequential_agent(fmnist_subset, tmp_path):
    with pytest.raises(UserError, match="one candidate at a time"):
        build_setup(_config(fmnist_subset, tmp_path / "x", 2, agent="ddpg"))
    with pytest.raises(UserError, match="at least 1"):
        build_setup(_config(fmnist_subset, tmp_path / "x", 0))
