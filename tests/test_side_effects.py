"""autoprune leaves the user's process as it found it: torch's global RNG, Optuna's verbosity and warning
filters, the user's own forward hooks (tests/test_hooks.py), and the `autoprune` logger quiet by default."""
from __future__ import annotations

import logging
import warnings

import optuna
import torch

from autoprune.importance import importance
from autoprune.progress_lines import ProgressLines
from autoprune.study import optuna_quiet
from autoprune.train import TrainConfig, train

from test_distill import _data, _net


def test_random_importance_is_seeded_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    group = [(None, list(range(8)))]
    a, b = importance("random", seed=5)(group), importance("random", seed=5)(group)
    assert torch.equal(a, b) and not torch.equal(a, importance("random", seed=6)(group))
    assert torch.equal(torch.get_rng_state(), before)


def test_training_is_seeded_and_leaves_the_global_rng_as_it_was():
    data = _data()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    nets = [_net(), _net()]
    nets[1].load_state_dict(nets[0].state_dict())
    torch.set_rng_state(before)
    for net in nets:
        train(net, data, TrainConfig(epochs=1, lr=0.02, batch_size=32, seed=3), torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), before)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)  # the same seed, the same training


def test_optuna_quiet_restores_the_users_verbosity_and_filters():
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    filters = list(warnings.filters)
    try:
        with optuna_quiet():
            assert optuna.logging.get_verbosity() == optuna.logging.WARNING
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG and warnings.filters == filters
    finally:
        optuna.logging.set_verbosity(optuna.logging.INFO)


class _Result:
    def __init__(self, i: int) -> None:
        self.rung, self.accuracy, self.costs, self.index, self.reward = None, 0.5 + i / 100, {"macs": 50.0}, i, i


class _Problem:
    base_costs = {"macs": 100.0}

    def __init__(self) -> None:
        self.n_evals, self.best = 0, None


def test_progress_lines_every_n_evaluations_and_on_a_timer():
    lines: list[str] = []
    problem = _Problem()
    with ProgressLines(10, lines.append, every=5, every_seconds=0.2) as progress:
        for i in range(10):
            problem.n_evals, problem.best = i + 1, _Result(i)
            progress.on_result(None, problem)
        assert len(lines) == 2 and lines[-1].startswith("searching | 10/10 evaluations | best held-out 0.5900")
        progress.on_stage("testing the best policy")
        import time

        time.sleep(5.5)  # the timer checks every min(5 s, every_seconds)
    assert len(lines) >= 4 and all("elapsed" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("testing the best policy | 10/10")


def test_the_autoprune_logger_is_quiet_by_default():
    logger = logging.getLogger("autoprune")
    assert not logger.handlers and logger.getEffectiveLevel() >= logging.WARNING
