"""What a searcher may use of the problem it is given: the typed interface `Problem` offers searchers.

A searcher (agents/, envs/) touches nothing else of `autoprune.problem.Problem`; tests/test_imports.py
checks every `problem.<member>` they write against this list. Most searchers need the first block
only; the rest serves those that build something of their own from the network (the layer-wise env's
state, MetaPruning's PruningNet, Torch-Pruning's global ranking, NSGA-II's second objective).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
from torch import nn

if TYPE_CHECKING:
    from autoprune.budget import BudgetSet
    from autoprune.cost import CostModel
    from autoprune.evaluate import Evaluator
    from autoprune.ladder import Ladder
    from autoprune.policy import Policy
    from autoprune.problem import EvalResult


class SearchProblem(Protocol):
    # -- proposing and scoring
    space: object  # the search space: names, size, max_ratios, snap, kept; its PruningGraph as `space.graph`

    @property
    def n_evals(self) -> int: """Evaluations so far (cached ones included): the search stops at n_evals."""
    @property
    def results(self) -> list[EvalResult]: """Every evaluation of this run, in order."""
    @property
    def best(self) -> EvalResult | None: """The best returnable result so far."""

    def project(self, ratios: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The nearest vector along `ratios`' direction that meets every budget (and spends it)."""
    def feasible(self, ratios: np.ndarray) -> bool: """Whether `ratios` meets every budget as it is."""
    def evaluate(self, ratios: np.ndarray) -> EvalResult | None: """Score one vector; None past a budget."""
    def evaluate_many(self, batch: list[np.ndarray], promote: list | None = None) -> list[EvalResult | None]:
        """Score several (in parallel on workers), recorded in the order given."""
    def uniform_ratios(self) -> np.ndarray: """One ratio for every group, bisected to the budget."""
    def policy(self, ratios: np.ndarray) -> Policy: """The named policy of a ratio vector."""
    def progress(self, what: str, done: int, total: int) -> None:
        """Report a long step of the searcher's own (a progress bar or line shows it)."""

    # -- costs and budgets (the layer-wise env's state, NSGA-II's objective)
    cost_models: dict[str, CostModel]  # per metric ("macs", "params", "latency_ms")
    base_costs: dict[str, float]  # the unpruned model's
    budgets: BudgetSet

    def costs(self, ratios: np.ndarray) -> dict[str, float]: """Every metric's cost of a ratio vector."""

    # -- the network and its data (searchers that build or rank something of their own)
    model: nn.Module  # the unpruned model: read it, copy it, never change it
    criterion: str  # the channel-ranking criterion ("l2", "taylor", ...)
    train: object | None  # the training split
    evaluator: Evaluator  # scores a model on the held-out split (full, `quick`); its `device`
    ladder: Ladder | None  # the fidelity ladder, when the run has one (Optuna reports its rungs)

    def removal_orders(self) -> list: """Every group's channel removal order under the criterion."""
    def proxy_score(self, ratios: np.ndarray, scorer: str) -> float | None: """A stored proxy score, else None."""
    def record_proxy(self, ratios: np.ndarray, accuracy: float, scorer: str) -> None:
        """Store a score that is not `evaluate`'s (PruningNet weights) in the study, marked by `scorer`."""


SEARCH_PROBLEM_MEMBERS = frozenset(
    name for name in (*SearchProblem.__annotations__, *vars(SearchProblem)) if not name.startswith("_"))
