"""Baseline searchers: uniform, Torch-Pruning global ranking, and EagleEye-style random search."""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch_pruning as tp

from autoprune import tp_extensions
from autoprune.agents.base import Searcher

log = logging.getLogger(__name__)


class UniformSearch(Searcher):
    """The same prune ratio for every group, the largest that meets the budget (one evaluation)."""

    name = "uniform"
    default_evals = 1

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        problem.evaluate(problem.uniform_ratios())


class GlobalSearch(Searcher):
    """Torch-Pruning's global ranking (MetaPruner, global_pruning=True) bisected to the budget.

    Torch-Pruning ranks all channels of all groups together by normalised group magnitude and
    removes the lowest; the pruning ratio that meets the budget is found by bisection. The kept
    counts it produces are snapped to the search space's grid and projected (small changes) so the
    policy meets the budget like every other searcher's.
    """

    name = "global"
    default_evals = 1

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        p = 1 if problem.criterion == "l1" else 2  # Torch-Pruning's magnitude ranking with the run's norm
        graph, space = problem.space.graph, problem.space
        example = graph.example()
        names = graph.group_names()

        def ratios_at(r: float) -> np.ndarray:
            model = copy.deepcopy(problem.model).cpu().eval()
            modules = dict(model.named_modules())
            pruner = tp_extensions.meta_pruner(
                model, example, importance=tp.importance.GroupMagnitudeImportance(p=p),
                global_pruning=True, pruning_ratio=r, max_pruning_ratio=float(space.max_ratio),
                ignored_layers=[modules[n] for n in graph.ignored_layers()])
            pruner.step()
            kept = np.array([_out_channels(modules[n]) for n in names], dtype=np.float64)
            return 1.0 - kept / space.channels

        lo, hi = 0.0, float(space.max_ratio)
        best = None
        for _ in range(12):
            mid = (lo + hi) / 2
            ratios = ratios_at(mid)
            if problem.feasible(ratios):
                hi, best = mid, ratios
            else:
                lo = mid
        if best is None:
            best = ratios_at(hi)
        problem.evaluate(problem.project(best, None))


def _out_channels(m: torch.nn.Module) -> int:
    return int(m.out_channels if hasattr(m, "out_channels") else m.out_features)


class RandomSearch(Searcher):
    """EagleEye (Li et al. 2020): random per-group ratios within the budget, best held-out wins.

    Each candidate draws ratios uniformly in [0, max] per group, then is projected onto the
    budget (to within 0.5% of the target), so every candidate spends the same budget.
    """

    name = "random"
    supports_batch = True

    def __init__(self, batch: int = 1) -> None:
        self.batch = max(1, int(batch))  # candidates proposed at once (parallel workers)

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        # the draws do not depend on the batch size: the same run with any number of workers
        rng = np.random.default_rng(seed)
        tries = 0
        while problem.n_evals < n_evals and tries < 20 * n_evals:
            k = min(self.batch, n_evals - problem.n_evals)
            tries += k
            problem.evaluate_many([problem.project(rng.uniform(0.0, problem.space.max_ratios), rng) for _ in range(k)])
