"""The sweep's half of the report: its page, and the result tables sweep_results.json/.md.

`autoprune.tune` runs the sweep and calls `collect` and `write_results` at its end; the tables
live here, beside the page that shows them, so the sweep module holds only the running.

Layer: a page of autoprune.report beside `run.py`; it imports `html.py`, `plots.py` and
`candidates.py` (each run's evaluations), never the package or the run page.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import autoprune.report.plots as plots
from autoprune.errors import UserError
from autoprune.report.candidates import load_candidates, read_summary
from autoprune.report.html import REPORT, Raw, esc, figure, note, page, pct, seconds, table

RESULTS_JSON, RESULTS_MD = "sweep_results.json", "sweep_results.md"

__all__ = ["RESULTS_JSON", "RESULTS_MD", "aggregate", "collect", "markdown", "sweep_page", "write_results"]


def sweep_page(sweep: Path) -> str:
    try:
        results = json.loads((sweep / RESULTS_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {sweep / RESULTS_JSON}: {exc}") from None
    panels: dict[str, dict[str, list[list[float]]]] = {}
    missing = []
    for r in results.get("rows", []):
        if r.get("status") != "ok" or not r.get("policy"):
            continue
        run = sweep / Path(r["policy"]).parent
        try:
            cands = load_candidates(run, read_summary(run)[0])
        except UserError as exc:
            missing.append(str(exc))
            continue
        curve = [math.nan if c["partial"] else c["accuracy"] for c in cands]
        panels.setdefault(f"{r['model']} · {r['budgets']}", {}).setdefault(r["agent"], []).append(curve)
    title = f"Sweep {sweep.name}"
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p class=facts>{results.get('trials')} trials · {results.get('ok')} finished · "
             f"{results.get('failed')} failed or not run"
             + (f" · {seconds(results['sweep_seconds'])}" if results.get("sweep_seconds") else "") + "</p>",
             "<h2>Best so far, per agent</h2>"]
    for i, (name, agents) in enumerate(panels.items()):
        parts.append(figure(f"sweep-{i}", plots.sweep_curves(name, agents, f"sweep{i}"),
                            "Best held-out accuracy after each evaluation: the line is the median over seeds, "
                            "the band their range (min to max); a seed counts up to its own last evaluation."))
    if not panels:
        parts.append(note("No finished trial with a study to draw."))
    parts += [note(m) for m in missing]
    parts += ["<h2>Comparison (mean over seeds)</h2>", _groups_table(results), "<h2>Trials</h2>",
              _trials_table(results, sweep)]
    return page(title, parts)


def _finetuned(results: dict) -> bool:
    """Whether the sweep fine-tuned (finetune_epochs): then the tables gain the accuracy the user keeps."""
    return any(r.get("finetuned_test_accuracy") is not None for r in results.get("rows", []))


def _groups_table(results: dict) -> str:
    ft = _finetuned(results)
    rows = [(g["model"], g["budgets"], g["agent"], f"{g['ok']}/{g['seeds']}", pct(g["heldout_accuracy_mean"]),
             pct(g["heldout_accuracy_best"]), pct(g["test_accuracy_mean"]),
             *([pct(g.get("finetuned_test_accuracy_mean"))] if ft else []), _fmt(g["macs_pct_mean"]),
             _fmt(g["evaluations_mean"]), _fmt(g["search_seconds_mean"])) for g in results.get("groups", [])]
    return table(("model", "budget", "agent", "seeds ok", "held-out %", "best %", "test %",
                  *(["fine-tuned test %"] if ft else []), "MACs %", "evaluations", "time s"), rows)


def _trials_table(results: dict, sweep: Path) -> str:
    ft = _finetuned(results)
    rows = []
    for r in results.get("rows", []):
        if r["status"] == "ok":
            folder = Path(r["policy"]).parent
            link = (f'<a href="{esc(folder.as_posix())}/{REPORT}">report</a>' if (sweep / folder / REPORT).is_file()
                    else f'<a href="{esc(r["policy"])}">policy</a>')
        else:
            link = esc(r.get("error") or "")
        rows.append((r["model"], r["budgets"], r["agent"], r["seed"], r["status"], pct(r["heldout_accuracy"]),
                     pct(r["test_accuracy"]), *([pct(r.get("finetuned_test_accuracy"))] if ft else []),
                     _fmt(r["macs_pct"]), _fmt(r["evaluations"]), _fmt(r["search_seconds"]), Raw(link)))
    return table(("model", "budget", "agent", "seed", "status", "held-out %", "test %",
                  *(["fine-tuned test %"] if ft else []), "MACs %", "evaluations", "time s", ""), rows, cls="trials")


# ---------------------------------------------------------------------------------------------
# Sweep results: one row per trial, read back from its policy.json; failures with their error


ROW_KEYS = ("model", "budgets", "agent", "seed", "status", "heldout_accuracy", "test_accuracy",
            "base_heldout_accuracy", "base_test_accuracy", "macs_pct", "params_pct", "evaluations",
            "search_seconds", "finetuned_test_accuracy", "policy", "error")


def collect(out: Path, trials: list[dict], errors: dict[str, str]) -> dict:
    rows = []
    for t in trials:
        c = t["config"]
        row = {"model": c["model"], "budgets": ", ".join(c["budgets"]), "agent": c["agent"], "seed": c["seed"]}
        policy = out / "runs" / t["name"] / "policy.json"
        if policy.exists():
            s = json.loads(policy.read_text())
            row.update(status="ok", heldout_accuracy=s["heldout_accuracy"], test_accuracy=s["test_accuracy"],
                       base_heldout_accuracy=s["base_heldout_accuracy"], base_test_accuracy=s["base_test_accuracy"],
                       macs_pct=round(100 * s["macs"] / s["base_macs"], 2),
                       params_pct=round(100 * s["params"] / s["base_params"], 2),
                       evaluations=s["evaluations"], search_seconds=s["search_seconds"],
                       finetuned_test_accuracy=s.get("finetuned_test_accuracy"),
                       policy=str(policy.relative_to(out)), error=None)
        else:
            row.update({k: None for k in ROW_KEYS if k not in row})
            row.update(status="error" if t["name"] in errors else "not run",
                       error=errors.get(t["name"], "no result (interrupted?): run again with --resume"))
        rows.append(row)
    return {"sweep": str(out), "trials": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "failed": sum(r["status"] != "ok" for r in rows), "rows": rows, "groups": aggregate(rows)}


def aggregate(rows: list[dict]) -> list[dict]:
    """Agent × model × budget over seeds: the comparison the sweep is for."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["budgets"], r["agent"]), []).append(r)
    out = []
    for (model, budgets, agent), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]

        def mean(key: str) -> float | None:
            return round(statistics.fmean(r[key] for r in ok), 4) if ok else None

        out.append({"model": model, "budgets": budgets, "agent": agent, "seeds": len(rs), "ok": len(ok),
                    "heldout_accuracy_mean": mean("heldout_accuracy"),
                    "heldout_accuracy_best": max((r["heldout_accuracy"] for r in ok), default=None),
                    "test_accuracy_mean": mean("test_accuracy"), "macs_pct_mean": mean("macs_pct"),
                    "evaluations_mean": mean("evaluations"), "search_seconds_mean": mean("search_seconds"),
                    **({"finetuned_test_accuracy_mean": mean("finetuned_test_accuracy")}
                       if ok and all(r.get("finetuned_test_accuracy") is not None for r in ok) else {})})
    return out


def write_results(out: Path, results: dict) -> None:
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (out / RESULTS_MD).write_text(markdown(results))


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.2f}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def markdown(results: dict) -> str:
    ft = _finetuned(results)
    ft_head, ft_rule = (" fine-tuned test |", "---|") if ft else ("", "")
    lines = [f"# Sweep {results['sweep']}", "",
             f"{results['trials']} trials: {results['ok']} finished, {results['failed']} failed or not run. "
             "Accuracies in %; MACs in % of the unpruned model; time is search time in seconds.", "",
             "## Agent × model × budget (mean over seeds)", "",
             f"| model | budget | agent | seeds ok | held-out mean | held-out best | test mean |{ft_head} MACs % | "
             "evaluations | time s |",
             f"|---|---|---|---|---|---|---|{ft_rule}---|---|---|"]
    for g in results["groups"]:
        ft_cell = f" {_fmt(g.get('finetuned_test_accuracy_mean'), True)} |" if ft else ""
        lines.append(f"| {g['model']} | {g['budgets']} | {g['agent']} | {g['ok']}/{g['seeds']} | "
                     f"{_fmt(g['heldout_accuracy_mean'], True)} | {_fmt(g['heldout_accuracy_best'], True)} | "
                     f"{_fmt(g['test_accuracy_mean'], True)} |{ft_cell} {_fmt(g['macs_pct_mean'])} | "
                     f"{_fmt(g['evaluations_mean'])} | {_fmt(g['search_seconds_mean'])} |")
    lines += ["", "## Trials", "",
              f"| model | budget | agent | seed | status | held-out | test |{ft_head} MACs % | params % | evaluations | "
              "time s | policy / error |",
              f"|---|---|---|---|---|---|---|{ft_rule}---|---|---|---|---|"]
    for r in results["rows"]:
        last = r["policy"] if r["status"] == "ok" else (r["error"] or "").replace("|", "\\|")
        ft_cell = f" {_fmt(r.get('finetuned_test_accuracy'), True)} |" if ft else ""
        lines.append(f"| {r['model']} | {r['budgets']} | {r['agent']} | {r['seed']} | {r['status']} | "
                     f"{_fmt(r['heldout_accuracy'], True)} | {_fmt(r['test_accuracy'], True)} |{ft_cell} "
                     f"{_fmt(r['macs_pct'])} | {_fmt(r['params_pct'])} | {_fmt(r['evaluations'])} | "
                     f"{_fmt(r['search_seconds'])} | {last} |")
    return "\n".join(lines) + "\n"
