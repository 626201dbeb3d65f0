"""report.html of a run or a sweep folder: one self-contained page that opens from disk, offline.

A run's page (`run.py`): the summary table (unpruned against pruned), the kept channels per group
beside uniform pruning at the same budget, every evaluation's accuracy with the best-so-far line,
accuracy against cost with the budget and the Pareto front, the lookup table's latency against
the measurement (latency budgets), and the fine-tuning curve (when there was one). A sweep's page
(`sweep.py`, which also writes sweep_results.json/.md for autoprune.tune): best-so-far curves per
agent (median and min-max over seeds) and the comparison tables.

Candidates are read from the run's Optuna study, the one record of every evaluation; the rest
from policy.json (`candidates.py`). The page holds no script and fetches nothing: plots are
inline SVG (`plots.py` says why matplotlib), styles are inline (`html.py`, the one module of
markup both pages share), and a Content-Security-Policy forbids any load, so a report that
tried would show it in the browser's console.

The modules import downward only: this package imports the two pages; each page imports
`html.py`, `plots.py` and `candidates.py`, which import nothing of the report.
"""
from __future__ import annotations

import logging
from pathlib import Path

from autoprune.errors import UserError
from autoprune.report.candidates import load_candidates, read_policy, read_summary
from autoprune.report.html import REPORT, speedup
from autoprune.report.run import run_page
from autoprune.report.sweep import RESULTS_JSON, RESULTS_MD, sweep_page

__all__ = ["REPORT", "RESULTS_JSON", "RESULTS_MD", "load_candidates", "read_policy", "read_summary", "speedup", "write_report"]

log = logging.getLogger(__name__)


def write_report(path: Path, out: Path | None = None) -> Path:
    """Write PATH/report.html (or `out`) for a run folder (policy.json + study) or a sweep folder; returns it."""
    path = Path(path)
    if path.is_file() and path.name == "policy.json":
        path = path.parent
    if (path / "policy.json").is_file():
        text = run_page(path)
    elif (path / RESULTS_JSON).is_file():
        text = sweep_page(path)
    elif not path.is_dir():
        raise UserError(f"{path} does not exist: give a run folder (policy.json) or a sweep folder ({RESULTS_JSON})")
    else:
        raise UserError(f"{path} is neither a run folder (no policy.json) nor a sweep folder (no {RESULTS_JSON})")
    target = Path(out) if out is not None else path / REPORT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    log.info("wrote %s (%d bytes)", target, len(text))
    return target
