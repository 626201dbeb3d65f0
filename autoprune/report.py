"""report.html of a run or a sweep folder: one self-contained page that opens from disk, offline.

A run's page: the summary table (unpruned against pruned), the kept channels per group beside
uniform pruning at the same budget, every evaluation's accuracy with the best-so-far line,
accuracy against cost with the budget and the Pareto front, the lookup table's latency against
the measurement (latency budgets), and the fine-tuning curve (when there was one). A sweep's page:
best-so-far curves per agent (median and min-max over seeds) and the comparison tables
(autoprune.report_sweep, which also writes them as sweep_results.json/.md for autoprune.tune).

Candidates are read from the run's Optuna study, the one record of every evaluation; the rest
from policy.json. The page holds no script and fetches nothing: plots are inline SVG
(autoprune.report_plots says why matplotlib), styles are inline, and a Content-Security-Policy
forbids any load, so a report that tried would show it in the browser's console.
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path

from autoprune.budget import human, parse_budget
from autoprune.errors import UserError

log = logging.getLogger(__name__)

REPORT = "report.html"
RESULTS_JSON, RESULTS_MD = "sweep_results.json", "sweep_results.md"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
COSTS = ("macs", "params", "latency_ms")


def write_report(path: Path, out: Path | None = None) -> Path:
    """Write PATH/report.html (or `out`) for a run folder (policy.json + study) or a sweep folder; returns it."""
    path = Path(path)
    if path.is_file() and path.name == "policy.json":
        path = path.parent
    if (path / "policy.json").is_file():
        text = run_page(path)
    elif (path / RESULTS_JSON).is_file():
        from autoprune.report_sweep import sweep_page

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


# ---------------------------------------------------------------------------------------------
# Reading a run: policy.json and the study's evaluations


def read_policy(run: Path) -> dict:
    try:
        return json.loads((run / "policy.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {run / 'policy.json'}: {exc}") from None


def load_candidates(run: Path, policy: dict) -> list[dict]:
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
    budgets = _budgets(policy)
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


def _budgets(policy: dict) -> list:
    base = {"macs": policy.get("base_macs"), "params": policy.get("base_params"),
            "latency_ms": policy.get("base_predicted_latency_ms")}
    base = {k: v for k, v in base.items() if v}
    out = []
    for text in policy.get("budgets", []):
        try:
            out.append(parse_budget(text, base))
        except UserError:  # a metric this policy.json has no base for: nothing to draw it against
            log.info("budget %s not drawn: no base cost in policy.json", text)
    return out


# ---------------------------------------------------------------------------------------------
# The run page


def run_page(run: Path) -> str:
    from autoprune import report_plots as plots

    policy = read_policy(run)
    cands = load_candidates(run, policy)
    pick = policy.get("best_evaluation")
    title = (f"{policy.get('model', '?')} · {', '.join(policy.get('budgets', []))} · agent {policy.get('agent', '?')}"
             f" · seed {policy.get('seed', '?')}")
    parts = [f"<h1>{esc(title)}</h1>", _run_facts(policy, cands), "<h2>Summary</h2>", _summary_table(policy)]

    parts.append("<h2>Kept channels per group</h2>")
    kept, base = policy.get("kept_channels"), _group_channels(policy)
    if kept and base:
        uniform = policy.get("uniform_kept_channels")
        names = list(kept)
        parts.append(figure("channels", plots.channels(names, [base[n] for n in names], [kept[n] for n in names],
                                                       [uniform[n] for n in names] if uniform else None),
                            "Solid: channels kept; light: channels pruned, per prunable group from input to "
                            "output. " + ("Orange: one ratio for every group, the least that meets the same "
                                          "budget (the uniform baseline, computed from the cost models)."
                                          if uniform else "")))
        if not uniform:
            parts.append(note("This run predates the uniform reference in policy.json (uniform_kept_channels): "
                               "the uniform bars are left out."))
    else:
        parts.append(note("No per-group channel counts in policy.json (an unstructured or older run)."))
    frozen = policy.get("frozen_groups")
    if frozen:
        parts.append(f"<h3>Groups left whole ({len(frozen)})</h3>")
        parts.append(note("Removing channels of these groups (one per chunk, or the largest prune ratio of them) "
                          "breaks the model, so they keep every channel (as their roots would in Torch-Pruning's "
                          "ignored_layers); the rest was searched."))
        parts.append(table(("group", "channels", "pruning it breaks"),
                           [(f["name"], f["channels"], f["breaks"]) for f in frozen]))

    parts.append("<h2>Every evaluation</h2>")
    if cands:
        parts.append(figure("progress", plots.progress(cands, pick, policy.get("base_heldout_accuracy")),
                            f"Held-out accuracy of each of the {len(cands)} stored evaluations in the order they "
                            "were made; the line is the best so far (full-fidelity scores only); the star is the "
                            "returned policy."))
        metric = _tradeoff_metric(policy, cands)
        base_cost = policy.get("base_predicted_latency_ms" if metric == "latency_ms" else f"base_{metric}")
        budgets = [b.target for b in _budgets(policy) if b.metric == metric]
        parts.append(figure("tradeoff", plots.tradeoff(cands, metric, base_cost, budgets, pick),
                            "Accuracy against cost of every candidate; the dashed line is the budget, the black "
                            "line the Pareto front (no candidate is both cheaper and more accurate). Searchers "
                            "project candidates to just under the budget, so most sit close to it."))
    else:
        parts.append(note("The study holds no evaluation."))

    ladder = policy.get("ladder")
    if ladder and any(c["rung_accuracy"] for c in cands):
        counts = ", ".join(f"{n} at {name}" for n, name in zip(ladder["candidates_per_rung"], ladder["rungs"]))
        parts.append("<h2>The fidelity ladder</h2>")
        parts.append(figure("ladder", plots.ladder(cands, ladder["rungs"], pick),
                            f"Held-out accuracy of every candidate at each rung it reached ({counts}); each "
                            f"rung kept the top 1/{ladder['eta']} of the candidates scored there so far. "
                            + (f"Rung {ladder['rungs'][-1]}: {ladder['steps']} SGD steps of fine-tuning"
                               f"{' with distillation' if ladder.get('distill') else ''}. " if ladder["steps"] else "")
                            + "The star is the returned policy: the best at the highest rung."))

    check = policy.get("latency_verification")
    if check and check.get("checked"):
        parts.append("<h2>Predicted against measured latency</h2>")
        relative = [parse_budget(t, {"latency_ms": 1.0}).relative for t in check.get("budgets", [])]
        chosen = (check.get("chosen") or {}).get("evaluation")
        verdict = ("the star met the budget measured" if check["verified"]
                   else "none met the budget measured: the search's best is kept, unverified")
        parts.append(figure("latency", plots.latency(check["checked"], [r for r in relative if r], chosen),
                            f"The lookup table's prediction against the measurement (each timed interleaved "
                            f"with the unpruned model) of the {len(check['checked'])} candidates checked after "
                            f"the search; {verdict}."))
    elif "predicted_latency_ms" in policy:
        parts.append(note("The latency budget was not checked by measurement (--verify-latency 0)."))

    if "finetuned_test_accuracy" in policy:
        parts.append("<h2>Fine-tuning</h2>")
        history = policy.get("finetune_history")
        if history:
            before = {"heldout": policy.get("heldout_accuracy"), "test": policy.get("test_accuracy_before_finetune")}
            parts.append(figure("finetune", plots.finetune(history, before, policy.get("finetuned_test_accuracy")),
                                f"{policy['finetune_epochs']} epochs"
                                f"{' with distillation' if policy.get('finetune_distill') else ''}: held-out "
                                "accuracy (epoch 0: the search's score) and training loss per epoch, test "
                                "accuracy before and after."))
        else:
            parts.append(note("This run was fine-tuned before the per-epoch history was kept: test accuracy "
                               f"{pct(policy.get('test_accuracy_before_finetune'))} → "
                               f"{pct(policy['finetuned_test_accuracy'])} %."))
    return page(title, parts)


def _group_channels(policy: dict) -> dict[str, int] | None:
    """Unpruned channels per group: policy.json's, or (older runs) kept / (1 - ratio), exact by construction."""
    if policy.get("group_channels"):
        return policy["group_channels"]
    kept, ratios = policy.get("kept_channels"), policy.get("ratios", {})
    if not kept or any(n not in ratios or ratios[n] >= 1 for n in kept):
        return None
    return {n: int(round(k / (1 - ratios[n]))) for n, k in kept.items()}


def _tradeoff_metric(policy: dict, cands: list[dict]) -> str:
    """The first budget's metric when candidates carry it (latency: the table's prediction), else MACs."""
    for b in _budgets(policy):
        if all(b.metric in c["costs"] for c in cands) and (b.metric != "latency_ms"
                                                           or policy.get("base_predicted_latency_ms")):
            return b.metric
    return "macs"


def _run_facts(policy: dict, cands: list[dict]) -> str:
    partial = sum(c["partial"] for c in cands)
    facts = [("weights", policy.get("weights")), ("data", policy.get("data")),
             ("criterion", policy.get("criterion")), ("evaluations", policy.get("evaluations")),
             ("of them partial", partial or None), ("search", seconds(policy.get("search_seconds"))),
             ("held-out images", policy.get("heldout_images")),
             ("returned", None if policy.get("best_evaluation") is None else
              f"evaluation {policy['best_evaluation'] + 1}")]
    return "<p class=facts>" + " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in facts if v is not None) + "</p>"


def speedup(base_ms: float, pruned_ms: float) -> str:
    """'1.25x faster', or '1.29x slower' when pruning made it slower (it can: see gpu_checks-h200.md)."""
    ratio = base_ms / pruned_ms
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _summary_table(s: dict) -> str:
    rows = [("MACs", human(s["base_macs"]), human(s["macs"]), f"{s['macs'] / s['base_macs']:.1%}"),
            ("params", human(s["base_params"]), human(s["params"]), f"{s['params'] / s['base_params']:.1%}")]
    if s.get("uniform_macs"):
        rows.append(("MACs, uniform at the same budget", "", human(s["uniform_macs"]),
                     f"{s['uniform_macs'] / s['base_macs']:.1%}"))
    scored = "your evaluate function" if s.get("scored_by") == "evaluate function" else "held-out top-1"
    for label, key in ((scored, "heldout_accuracy"), ("test top-1", "test_accuracy")):
        if s.get(key) is not None:
            rows.append((label, pct(s.get(f"base_{key}")), pct(s[key]),
                         f"{100 * (s[key] - s[f'base_{key}']):+.2f} pp" if s.get(f"base_{key}") is not None else ""))
    if s.get("finetuned_test_accuracy") is not None:
        base = s.get("base_test_accuracy")
        rows.append((f"test top-1, fine-tuned {s.get('finetune_epochs')} ep", "", pct(s["finetuned_test_accuracy"]),
                     "" if base is None else f"{100 * (s['finetuned_test_accuracy'] - base):+.2f} pp"))
    where = f"{str(s.get('latency_device', 'cpu')).upper()} latency (batch {s.get('latency_batch', 1)})"
    if s.get("latency_ms") and s.get("base_latency_ms"):
        rows.append((f"{where}, measured", f"{s['base_latency_ms']:.2f} ms", f"{s['latency_ms']:.2f} ms",
                     speedup(s["base_latency_ms"], s["latency_ms"])))
    if s.get("predicted_latency_ms"):
        rows.append((f"{where}, lookup table", f"{s['base_predicted_latency_ms']:.2f} ms",
                     f"{s['predicted_latency_ms']:.2f} ms",
                     speedup(s["base_predicted_latency_ms"], s["predicted_latency_ms"])))
    return table(("", "unpruned", "pruned", "ratio"), rows, cls="summary")


# ---------------------------------------------------------------------------------------------
# HTML


class Raw(str):
    """Table cell text that is HTML already."""


def esc(v) -> str:
    return v if isinstance(v, Raw) else html.escape(str(v))


def table(head: tuple, rows: list[tuple], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure(name: str, svg: str, caption: str) -> str:
    return f"<figure class=plot id='plot-{name}'>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def note(text: str) -> str:
    return f"<p class=note>{esc(text)}</p>"


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def seconds(v) -> str | None:
    return None if v is None else (f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min")


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 max-width:62rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
.facts{color:#555;margin:.2rem 0 1rem}.note{color:#8a5a00;background:#fff8e5;padding:.4rem .6rem;border-radius:4px}
table{border-collapse:collapse;margin:.4rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}th{background:#f6f6f6;white-space:nowrap}
.trials td:last-child{text-align:left}
td:first-child,th:first-child{text-align:left}figure{margin:.6rem 0 1.2rem}
figure svg{max-width:100%;height:auto;display:block}figcaption{color:#555;font-size:.9rem;max-width:48rem}
"""


def page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)} · autoprune report</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n<p class=facts>Written by autoprune report.</p></body></html>\n")
