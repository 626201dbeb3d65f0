"""Budgets: parsing ("50%FLOPs", "2.1GFLOPs", "1.5Mparams", "12ms", "60%latency"), feasibility, projection.

FLOPs here are multiply-accumulates as counted by Torch-Pruning / thop / ptflops (the convention
of the pruning literature: ResNet-50 = 4.1 GFLOPs). Several budgets may hold at once; a policy
must meet every one. `project` brings any ratio vector into the budget and, where the grid
allows, to within `tolerance` (0.5%) below the binding target, so searchers compare policies at
the same cost rather than rewarding whoever prunes least.

Latency budgets are milliseconds of the metric "latency_ms": absolute with a time unit ("12ms",
"0.5s", "800us") or relative to the unpruned model ("60%latency"); the search supplies the
latency cost model (a lookup table profiled on the target device) only when one is asked for.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from autoprune.errors import UserError

METRIC_ALIASES = {"flops": "macs", "macs": "macs", "params": "params", "parameters": "params",
                  "latency": "latency_ms"}
UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
TIME_UNITS_MS = {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}
NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
BUDGET_RE = re.compile(rf"^\s*{NUMBER}\s*(%|[kKmMgGtT])?\s*([A-Za-z]+)\s*$")
TIME_RE = re.compile(rf"^\s*{NUMBER}\s*(ms|s|us|µs)\s*$")
TOLERANCE = 0.005
MALFORMED = "use e.g. 50%FLOPs, 2.1GFLOPs, 600MFLOPs, 60%params, 1.5Mparams, 12ms, 60%latency"


@dataclass(frozen=True)
class Budget:
    metric: str  # "macs" | "params" | "latency_ms"
    target: float  # absolute upper bound
    text: str  # as the user wrote it
    relative: float | None = None  # fraction of the base model when given as a percentage

    def describe(self, base: float) -> str:
        amount = f"{self.target:.3g} ms" if self.metric == "latency_ms" else f"{human(self.target)} {self.metric}"
        return f"{self.text} (≤ {amount}, {self.target / base:.1%} of the model)"


def human(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def budget_metric(text: str) -> str:
    """The metric a budget names ("macs", "params", "latency_ms"), before any cost model exists.

    The search reads this first: a latency cost model costs a profiling run, built only when asked for.
    """
    return _parse(text)[0]


def _parse(text: str) -> tuple[str, float, str]:
    """(metric, value, unit) of a budget text; unit "%" for relative budgets, "ms" for times."""
    t = TIME_RE.match(text)
    if t:
        return "latency_ms", float(t.group(1)) * TIME_UNITS_MS[t.group(2)], "ms"
    m = BUDGET_RE.match(text)
    metric = METRIC_ALIASES.get(m.group(3).lower()) if m else None
    if not m or metric is None:
        raise UserError(f"malformed budget '{text}': {MALFORMED}")
    unit = m.group(2) or ""
    if metric == "latency_ms" and unit != "%":
        raise UserError(f"malformed budget '{text}': give latency as a time (12ms, 0.5s, 800us) or "
                        f"relative to the unpruned model (60%latency)")
    return metric, float(m.group(1)), unit


def parse_budget(text: str, base: dict[str, float]) -> Budget:
    """'50%FLOPs' -> Budget('macs', 0.5 * base['macs']); refuses malformed input with one line."""
    metric, value, unit = _parse(text)
    if metric not in base:
        raise UserError(f"budget '{text}': no cost model for {metric}")
    if unit == "%":
        if not 0 < value <= 100:
            raise UserError(f"budget '{text}': a percentage must be in (0, 100]")
        return Budget(metric, base[metric] * value / 100.0, text, value / 100.0)
    if value <= 0:
        raise UserError(f"budget '{text}' must be positive")
    return Budget(metric, value if unit == "ms" else value * UNITS[unit.lower()], text)


class BudgetSet:
    """All budgets of a search, checked against a cost function of the ratio vector."""

    def __init__(self, budgets: list[Budget], costs: Callable[[np.ndarray], dict[str, float]],
                 base: dict[str, float], max_ratios: np.ndarray, tolerance: float = TOLERANCE) -> None:
        self.budgets, self.costs, self.base = budgets, costs, base
        self.max_ratios, self.tolerance = max_ratios, tolerance
        self.minimum = costs(max_ratios)

    def check_feasible(self) -> None:
        """Refuse, up front, a budget below the smallest reachable cost, stating that minimum."""
        for b in self.budgets:
            low = self.minimum[b.metric]
            if b.target < low:
                if b.metric == "latency_ms":  # the floor: the thinnest policy of the space, timed whole
                    raise UserError(f"budget {b.text} is infeasible: the smallest reachable latency is {low:.3g} ms "
                                    f"({low / self.base[b.metric]:.1%} of the unpruned model), that of the thinnest "
                                    "policy the space allows (every group at the maximum prune ratio)")
                raise UserError(f"budget {b.text} is infeasible: the smallest reachable {b.metric} is "
                                f"{human(low)} ({low / self.base[b.metric]:.1%} of the model) at the "
                                f"maximum prune ratio")

    def satisfied(self, costs: dict[str, float]) -> bool:
        return all(costs[b.metric] <= b.target * (1 + 1e-12) for b in self.budgets)

    def slack(self, costs: dict[str, float]) -> float:
        """Smallest relative gap below a target (0 = on the binding target)."""
        if not self.budgets:
            return 0.0
        return min((b.target - costs[b.metric]) / b.target for b in self.budgets)

    def tight(self, costs: dict[str, float]) -> bool:
        return self.satisfied(costs) and self.slack(costs) <= self.tolerance

    def project(self, ratios: np.ndarray, snap: Callable[[np.ndarray], np.ndarray],
                step: Callable[[np.ndarray, int, int], np.ndarray],
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Move `ratios` along their own direction into the budget, then fill the slack.

        1. Bisect s on the path r(s) = r·(1+s) for s<0 (prune less) and r + s·(max - r) for s>0
           (prune more) to the least pruning that meets every budget; cost falls monotonically in s.
        2. Greedy refinement: undo single grid steps (then swaps of two steps) while every budget
           still holds, until the binding budget is within tolerance: the grid is discrete, and
           without this a policy could end several percent under its target.
        """
        if not self.budgets:
            return snap(ratios)
        r = np.clip(np.asarray(ratios, dtype=np.float64), 0.0, self.max_ratios)

        def at(s: float) -> np.ndarray:
            return snap(r * (1 + s) if s < 0 else r + s * (self.max_ratios - r))

        lo, hi = -1.0, 1.0
        if self.satisfied(self.costs(at(lo))):
            hi = lo
        for _ in range(40):
            if hi - lo < 1e-7:
                break
            mid = (lo + hi) / 2
            if self.satisfied(self.costs(at(mid))):
                hi = mid
            else:
                lo = mid
        best = at(hi)
        return self._refine(best, step, rng)

    def _refine(self, r: np.ndarray, step: Callable[[np.ndarray, int, int], np.ndarray],
                rng: np.random.Generator | None) -> np.ndarray:
        n = len(r)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        costs = self.costs(r)
        for _ in range(4 * n):
            if self.tight(costs):
                return r
            # single step of un-pruning that keeps the budget and leaves the least slack
            best, best_costs = None, None
            for i in order:
                cand = step(r, int(i), -1)
                if cand is None:
                    continue
                c = self.costs(cand)
                if self.satisfied(c) and (best_costs is None or self.slack(c) < self.slack(best_costs)):
                    best, best_costs = cand, c
            if best is None:  # no single step fits: try un-prune i while pruning j more
                for i in order:
                    up = step(r, int(i), -1)
                    if up is None:
                        continue
                    for j in order:
                        if j == i:
                            continue
                        cand = step(up, int(j), +1)
                        if cand is None:
                            continue
                        c = self.costs(cand)
                        if self.satisfied(c) and self.slack(c) < self.slack(costs) and (
                                best_costs is None or self.slack(c) < self.slack(best_costs)):
                            best, best_costs = cand, c
            if best is None:
                return r
            r, costs = best, best_costs
        return r
