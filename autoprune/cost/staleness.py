"""Is the latency table still true of this machine? Checked at the start of every latency-budgeted search.

A table is profiled once and cached; the machine it describes changes (other jobs come and go,
clocks and thermal state drift, a laptop goes onto battery). So before a search trusts it, the
unpruned model is timed here and now (a few runs, well under a second for small nets) and compared
with the table's base latency. Beyond `STALE_TOLERANCE` the search says so in one line and
rescales every prediction by the ratio: relative budgets (`60%latency`) are unchanged by that, and
absolute ones (`12ms`) then follow the machine as it is today. `--reprofile` profiles afresh instead.

Layer: beside the profile job, above the table (`lut.py`) and the clock (`measured.py`), the two
it imports; it changes only the cost model's predictions, never the table's file.
"""
from __future__ import annotations

import logging

from torch import nn

from autoprune.cost.lut import LatencyTableCost
from autoprune.cost.measured import measure_latency_ms

log = logging.getLogger(__name__)

STALE_TOLERANCE = 0.15  # the unpruned model may measure this much off the table's base before it is rescaled


def check_table(cost: LatencyTableCost, model: nn.Module, *, batch: int, device, threads: int | None,
                tolerance: float = STALE_TOLERANCE, seconds: float = 0.5) -> dict:
    """Time the unpruned model, compare with the table, rescale the cost model when off; the record."""
    measured = measure_latency_ms(model, tuple(cost.space.graph.input_shape), batch=batch, device=device,
                                  threads=threads, warmup=3, repeats=10, min_seconds=seconds, max_seconds=2 * seconds)
    table_ms = float(cost.table.base_ms)
    ratio = measured / table_ms
    rescaled = abs(ratio - 1.0) > tolerance
    if rescaled:
        log.warning("the unpruned model measures %.3g ms here now, the latency table says %.3g ms (%+.0f%%, "
                    "tolerance %.0f%%): predictions rescaled by %.2f; --reprofile profiles the table afresh",
                    measured, table_ms, 100 * (ratio - 1), 100 * tolerance, ratio)
        cost.predictor.rescale(ratio)
    cost.check = {"table_base_ms": table_ms, "measured_base_ms": measured, "ratio": ratio, "tolerance": tolerance,
                  "rescaled": rescaled}
    return cost.check
