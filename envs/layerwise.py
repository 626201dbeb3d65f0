"""AMC's layer-by-layer pruning environment (He et al. 2018) on today's Gymnasium.

An episode walks the search space's groups (channel space) or layers (unstructured space) in
topological order and picks one prune ratio per step; the finished episode is one policy, which
the last step scores through `problem.evaluate` -- so every episode lands in the study, is cached,
and is resumable exactly like any other searcher's evaluation.

Budget by AMC's "action wall": before an action is applied it is bounded from below so that,
with every group still to come pruned as far as the space allows, the finished policy can still
meet *every* budget. Step 0 is feasible because `BudgetSet.check_feasible` refused budgets below
the all-max policy; each clipped step keeps that invariant, so no episode is ever wasted on an
over-budget policy. AMC leaves any slack unspent: an agent exploring with noise often ends 5-10%
under the target, and those MACs are accuracy given away. Here (by default) the finished policy
is projected onto the budget the way random search's samples are -- every ratio scaled down
together, then single grid steps undone -- so it lands within 0.5% of the target like every
other searcher's and the agent's choice of *shape* is what gets scored (`fill_slack=False` gives
AMC's behaviour). The projection is deterministic, so the reward is still a function of the
episode's actions.

Cost of a step: one cost-model call for the feasibility of the action, one MACs call for the
"reduced" feature, and, only when the action must be clipped, a binary search over the group's
grid (log2 of its ~10-60 levels). The analytic costs take ~0.1 ms, so a step stays well under
1 ms; the feasibility check evaluates only the metrics that have a budget.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.problem import reward_function  # noqa: F401 - the searchers import it from here

log = logging.getLogger(__name__)

KINDS = ("conv", "residual", "depthwise", "linear")
# AMC's state, one row per step; the first eight are static, min-max normalised over the layers
FEATURES = ("index", "kind", "in_channels", "out_channels", "stride", "kernel", "out_hw", "macs",
            "reduced", "rest", "previous_action")
DEFAULT_REWARD = "error-log-flops"
GRID = 257  # candidate ratios per layer where the space has no channel levels (unstructured)

RewardFn = Callable[[float, dict[str, float]], float]


def _rows(space) -> list[tuple]:
    """(kind, c_in, c_out, stride, kernel, out h*w, MACs) per step: groups, or layers by name."""
    graph = space.graph
    if getattr(space, "kind", "channel") == "channel":
        return [(g.kind, g.in_channels, g.channels, g.stride, g.kernel, g.out_hw, g.macs) for g in graph.groups]
    layers = {lay.name: lay for lay in graph.layers}  # unstructured: one step per layer
    return [(lay.kind, lay.in_channels, lay.out_channels, lay.stride, lay.kernel, lay.out_hw, lay.macs)
            for lay in (layers[n] for n in space.names)]


def _table(rows: list[tuple]) -> np.ndarray:
    """Static features (index .. macs) per step, min-max normalised over the steps, as AMC does."""
    table = np.array([(i, KINDS.index(k) if k in KINDS else len(KINDS), *rest)
                      for i, (k, *rest) in enumerate(rows)], dtype=np.float64)
    table[:, 1] = table[:, 1] / len(KINDS)  # a fixed code per kind, whichever kinds the net has
    for j in (0, *range(2, table.shape[1])):
        lo, hi = table[:, j].min(), table[:, j].max()
        table[:, j] = (table[:, j] - lo) / (hi - lo) if hi > lo else 0.0
    return table


def _grid(space, i: int) -> np.ndarray:
    """Ascending ratios the space can realise for step i (snap's fixed points), 0 .. max."""
    maxr = float(space.max_ratios[i])
    if hasattr(space, "levels"):  # channel space: every allowed kept count
        cands = 1.0 - space.levels[i] / space.channels[i]
    else:
        cands = np.linspace(0.0, maxr, GRID)
    vec = np.zeros((len(cands), space.size))
    vec[:, i] = cands
    snapped = np.array([space.snap(v)[i] for v in vec] + [space.snap(np.asarray(space.max_ratios))[i]])
    return np.unique(snapped[snapped <= maxr + 1e-12])


class LayerPruningEnv(gym.Env):
    """One step per prunable group; action = its prune ratio as a share of the group's maximum.

    Observation: AMC's state of the group about to be pruned (index, kind, channels in/out,
    stride, kernel, output h*w, its MACs, MACs removed so far, MACs of the groups still to come,
    the previous action), each in [0, 1]. Reward: 0 until the last step, then `reward(accuracy,
    costs)` of the finished policy (default -Error*log(FLOPs), AMC's choice for budgeted search).
    """

    metadata = {"render_modes": []}

    def __init__(self, problem, reward: str | RewardFn = DEFAULT_REWARD, *, fill_slack: bool = True) -> None:
        self.problem, self.space = problem, problem.space
        self.reward_fn = reward_function(reward)
        self.fill_slack = fill_slack
        self.n_steps = int(self.space.size)
        self.max_ratios = np.asarray(self.space.max_ratios, dtype=np.float64)
        rows = _rows(self.space)
        self.static = _table(rows)
        group_macs = np.array([row[-1] for row in rows], dtype=np.float64)
        total = group_macs.sum()
        # share of all group MACs that belongs to the groups after step t (AMC's "rest")
        self.rest = (total - np.cumsum(group_macs)) / total if total > 0 else np.zeros(self.n_steps)
        self.base_macs = float(problem.base_costs["macs"])
        self.grids = [_grid(self.space, i) for i in range(self.n_steps)]
        self.metrics = sorted({b.metric for b in problem.budgets.budgets})
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._t = 0
        self._ratios = self.max_ratios.copy()
        self._prev = 0.0

    # -- budget -------------------------------------------------------------------------------
    def _feasible(self, ratios: np.ndarray) -> bool:
        costs = {m: self.problem.cost_models[m].cost(ratios) for m in self.metrics}
        return self.problem.budgets.satisfied(costs)

    def _least_feasible(self, t: int, above: float) -> float:
        """Smallest grid ratio >= `above` of step t that keeps the budget reachable (rest at max)."""
        grid = self.grids[t]
        lo = int(np.searchsorted(grid, above - 1e-12))
        hi = len(grid) - 1  # the maximum: feasible by the invariant
        trial = self._ratios.copy()
        while lo < hi:
            mid = (lo + hi) // 2
            trial[t] = grid[mid]
            if self._feasible(trial):
                hi = mid
            else:
                lo = mid + 1
        return float(grid[hi])

    def _clip(self, t: int, action: float) -> tuple[float, bool]:
        """The ratio step t applies: the action's, raised (or, at the end, lowered) to the wall."""
        trial = self._ratios.copy()  # groups before t decided, t and later still at their max
        trial[t] = action * self.max_ratios[t]
        want = float(self.space.snap(trial)[t])
        trial[t] = want
        if self._feasible(trial):
            return want, False
        return self._least_feasible(t, want), True

    # -- gym API ------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        t = min(self._t, self.n_steps - 1)
        decided = self._ratios.copy()
        decided[self._t:] = 0.0
        reduced = (self.base_macs - self.space.macs(decided)) / self.base_macs
        rest = self.rest[t] if self._t < self.n_steps else 0.0
        obs = np.empty(len(FEATURES), dtype=np.float32)
        obs[:8] = self.static[t]
        obs[8:] = (reduced, rest, self._prev)
        return np.clip(obs, 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)  # nothing here is random; kept so wrappers and agents can seed us
        self._t = 0
        self._ratios = self.max_ratios.copy()
        self._prev = 0.0
        return self._obs(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= self.n_steps:
            raise RuntimeError("episode is over: call reset()")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        t = self._t
        ratio, clipped = self._clip(t, a)
        self._ratios[t] = ratio
        self._prev = ratio / self.max_ratios[t] if self.max_ratios[t] > 0 else 0.0
        self._t += 1
        info: dict = {"group": t, "ratio": ratio, "clipped": clipped}
        if self._t < self.n_steps:
            return self._obs(), 0.0, False, False, info
        if self.fill_slack and not self.problem.budgets.tight(self.problem.costs(self._ratios)):
            self._ratios = self.problem.project(self._ratios)
        result = self.problem.evaluate(self._ratios)
        if result is None:  # the wall makes this impossible; fail loudly rather than learn from it
            raise RuntimeError("the finished policy breaks a budget: action clipping failed")
        reward = float(self.reward_fn(result.accuracy, result.costs))
        info.update(ratios=result.ratios.copy(), policy=self.problem.policy(result.ratios).ratios,
                    costs=dict(result.costs), accuracy=result.accuracy, evaluation=result.index,
                    cached=result.cached, reward=reward)
        return self._obs(), reward, True, False, info
