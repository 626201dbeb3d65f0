"""Reading a run for its report: policy.json, and every evaluation in the run's Optuna study.

Layer: below the pages (`run.py`, `sweep.py`), beside `html.py`; it imports nothing of the report.
The study is the one record of every evaluation; policy.json holds the rest.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from autoprune.budget import parse_budget
from autoprune.errors import UserError
from autoprune.policy import Policy
from autoprune.run_summary import RunSummary

log = logging.getLogger(__name__)

COSTS = ("macs", "params", "latency_ms")


def read_policy(run: Path) -> Policy:
    """The run's policy.json: its ratios, and `RunSummary.read(policy.meta)` for everything else."""
    return Policy.load(run / "policy.json")


def read_summary(run: Path) -> tuple[RunSummary, dict[str, float]]:
    """The run's policy.json as (its summary, its ratios): the report reads every key through RunSummary."""
    policy = read_policy(run)
    return RunSummary.read(policy.meta), policy.ratios


def load_candidates(run: Path, summary: RunSummary) -> list[dict]:
    """Every evaluation stored in the run's study, in order: index, accuracy, costs, partial, feasible.

    Proxy scores (MetaPruning's PruningNet weights) are not evaluations of the pruned model and stay out.
    """
    import optuna

    from autoprune.study import public_url

    storage, name = _study_location(run)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as exc:  # unreachable server, unreadable file, missing driver
        raise UserError(f"cannot open the study of {run} in {public_url(storage)}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if name not in names:
        if len(names) != 1 or not storage.startswith("sqlite"):
            raise UserError(f"{run} has no study '{name}' in {public_url(storage)}: the report plots its evaluations")
        name = names[0]  # a run folder renamed after the search: its own file holds one study
    study = optuna.load_study(study_name=name, storage=storage)
    budgets = policy_budgets(summary)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("scorer", "pruned") != "pruned":
            continue
        costs = {m: float(a[m]) for m in COSTS if a.get(m) is not None}
        out.append({"index": int(a.get("index", t.number)), "accuracy": float(t.value), "costs": costs,
                    "partial": a.get("fidelity") == "partial", "rung": a.get("rung"),
                    "rung_accuracy": a.get("rung_accuracy"),
                    "feasible": all(costs[b.metric] <= b.target * (1 + 1e-9) for b in budgets if b.metric in costs)})
    top = max((c["rung"] for c in out if c["rung"] is not None), default=None)
    for c in out:  # the ladder: a score below the top rung is an estimate, as a partial one (never the best)
        c["partial"] = c["partial"] or (top is not None and c["rung"] is not None and c["rung"] < top)
    return sorted(out, key=lambda c: c["index"])


def _study_location(run: Path) -> tuple[str, str]:
    """(storage URL, study name): run.json's --storage if one was given, else RUN/study.db."""
    cfg = {}
    if (run / "run.json").is_file():
        try:
            cfg = json.loads((run / "run.json").read_text())
        except json.JSONDecodeError:
            cfg = {}
    name = Path(cfg["out"]).name if cfg.get("out") else run.name
    if cfg.get("storage"):
        return cfg["storage"], name
    db = run / "study.db"
    if not db.is_file():  # never let Optuna create an empty one
        raise UserError(f"{run} has no study ({db.name} is missing): the report plots the evaluations stored there")
    return f"sqlite:///{db.resolve()}", name


def policy_budgets(summary: RunSummary) -> list:
    """The run's budgets as `Budget`s against its base costs; one this policy.json has no base for is left out."""
    base = {"macs": summary.base_macs, "params": summary.base_params, "latency_ms": summary.base_predicted_latency_ms}
    base = {k: v for k, v in base.items() if v}
    out = []
    for text in summary.budgets:
        try:
            out.append(parse_budget(text, base))
        except UserError:  # a metric this policy.json has no base for: nothing to draw it against
            log.info("budget %s not drawn: no base cost in policy.json", text)
    return out
