"""Searchers, registered by name. Heavy optional imports happen in `build`, not at import time.

A searcher proposes ratio vectors and asks `problem.evaluate` about them, at most `n_evals`
times; the problem keeps the results, the best and the study. Same seed, same proposals: that
is what makes `--resume` (replay from the seed, evaluations from the study) work for every one.
"""
from __future__ import annotations

import importlib
from typing import Protocol

from autoprune.errors import UserError


class Searcher(Protocol):
    name: str

    def search(self, problem, n_evals: int, *, seed: int) -> None: ...


# name -> (module, class, one-line description)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "random": ("autoprune.agents.baselines", "RandomSearch",
               "EagleEye: random per-group ratios projected onto the budget; best held-out accuracy wins"),
    "uniform": ("autoprune.agents.baselines", "UniformSearch",
                "one ratio for every group, bisected to the budget"),
    "global": ("autoprune.agents.baselines", "GlobalSearch",
               "Torch-Pruning's global magnitude ranking, bisected to the budget"),
    "ddpg": ("autoprune.agents.ddpg", "DDPGSearch",
             "AMC: DDPG (stable-baselines3) picks each group's ratio in turn, budget by action clipping"),
    "sb3:td3": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 TD3 on AMC's layer-by-layer env"),
    "sb3:sac": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 SAC on AMC's layer-by-layer env"),
    "sb3:ppo": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 PPO on AMC's layer-by-layer env"),
    "tpe": ("autoprune.agents.optuna", "OptunaSearch",
            "Optuna TPE (multivariate), one ratio per group, projected onto the budget"),
    "cmaes": ("autoprune.agents.optuna", "OptunaSearch", "Optuna CMA-ES, one ratio per group, projected onto the budget"),
    "qmc": ("autoprune.agents.optuna", "OptunaSearch",
            "Optuna quasi-Monte Carlo (scrambled Sobol), projected onto the budget"),
    "optuna:random": ("autoprune.agents.optuna", "OptunaSearch", "Optuna's RandomSampler, projected onto the budget"),
    "nsga2": ("autoprune.agents.optuna", "OptunaSearch",
              "Optuna NSGA-II: accuracy vs MACs (or latency); best within budget plus the Pareto front"),
}
# fixed constructor arguments of a registered name (one class serves several names)
PRESETS: dict[str, dict] = {
    **{f"sb3:{algo}": {"algo": algo} for algo in ("td3", "sac", "ppo")},
    **{name: {"sampler": name} for name in ("tpe", "cmaes", "qmc", "nsga2")},
    "optuna:random": {"sampler": "random"},
}
DEFAULT_AGENT = "tpe"  # beat random on every seed of ResNet-20 and ResNet-56 at 60 evaluations (bench/results)


def names() -> list[str]:
    return list(REGISTRY)


def build(name: str, **kwargs) -> Searcher:
    if name not in REGISTRY:
        raise UserError(f"unknown agent '{name}': one of {', '.join(REGISTRY)}")
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**{**PRESETS.get(name, {}), **kwargs})
