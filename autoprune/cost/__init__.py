"""Cost models: what a policy costs, computed without building the pruned model.

Every searcher, the env and the budgets read costs only through a `CostModel`. The analytic
ones here come from the search space (the graph's exact MACs/params polynomials); memory
(`memory.py`: weight and peak activation bytes), the latency lookup table and measured latency
(`measured.py`) plug in behind the same protocol under the metrics "weight_bytes",
"activation_bytes", "latency_ms".

A latency table is made in one direction, units -> timing -> table, the order in which
`profile.py` runs them. The imports run one way too: each module below imports only modules
listed after it (tests/test_cost_layers.py checks), so none calls back into its caller:
- `profile.py`    the job (`autoprune profile`, and a search that needs a table): runs the three;
- `staleness.py`  whether a table is still true of this machine, at the start of a search;
- `timing.py`     how: each grid and whole model timed against the unpruned model, into the table;
- `units.py`      what to time: the timing units of a model, their channel grids, the calibration models;
- `lut.py`        the table: store (file, fingerprint, cache), calibrate, predict (`LatencyTableCost`);
- `measured.py`   the clock every timing goes through (and `MeasuredLatencyCost`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class CostModel(Protocol):
    metric: str  # "macs", "params", "latency_ms", ...

    def cost(self, ratios: np.ndarray) -> float: ...


class AnalyticCost:
    """MACs or params of a ratio vector from the space's analytic formulas (microseconds)."""

    def __init__(self, space, metric: str) -> None:
        if metric not in ("macs", "params"):
            raise ValueError(f"analytic cost has no metric '{metric}'")
        self.space, self.metric = space, metric
        self._fn = space.macs if metric == "macs" else space.params

    def cost(self, ratios: np.ndarray) -> float:
        return self._fn(ratios)


def analytic_cost_models(space) -> dict[str, CostModel]:
    return {m: AnalyticCost(space, m) for m in ("macs", "params")}
