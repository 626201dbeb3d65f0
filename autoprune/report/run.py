"""The run's page: summary, kept channels, every evaluation, the ladder, latency and fine-tuning.

Layer: a page of autoprune.report; it imports `html.py` (the markup), `plots.py` (the figures)
and `candidates.py` (policy.json and the study), never the package or the sweep page.
"""
from __future__ import annotations

from pathlib import Path

import autoprune.report.plots as plots
from autoprune.budget import human, parse_budget
from autoprune.report.candidates import load_candidates, policy_budgets, read_summary
from autoprune.report.html import esc, figure, note, page, pct, seconds, speedup, table
from autoprune.run_summary import RunSummary


def run_page(run: Path) -> str:
    """The whole page of a run folder, one section after another."""
    policy, ratios = read_summary(run)
    cands = load_candidates(run, policy)
    pick = policy.best_evaluation
    title = (f"{policy.model or '?'} · {', '.join(policy.budgets)} · agent {policy.agent or '?'}"
             f" · seed {policy.seed}")
    parts = [f"<h1>{esc(title)}</h1>", _run_facts(policy, cands), "<h2>Summary</h2>", _summary_table(policy)]
    parts += _channels_section(policy, ratios)
    parts += _evaluations_section(policy, cands, pick)
    parts += _ladder_section(policy, cands, pick)
    parts += _latency_section(policy)
    parts += _finetune_section(policy)
    return page(title, parts)


def _channels_section(policy: RunSummary, ratios: dict[str, float]) -> list[str]:
    parts = ["<h2>Kept channels per group</h2>"]
    kept, base = policy.kept_channels, _group_channels(policy, ratios)
    if kept and base:
        uniform = policy.uniform_kept_channels
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
    frozen = policy.frozen_groups
    if frozen:
        parts.append(f"<h3>Groups left whole ({len(frozen)})</h3>")
        parts.append(note("Removing channels of these groups (one per chunk, or the largest prune ratio of them) "
                          "breaks the model, so they keep every channel (as their roots would in Torch-Pruning's "
                          "ignored_layers); the rest was searched."))
        parts.append(table(("group", "channels", "pruning it breaks"),
                           [(f["name"], f["channels"], f["breaks"]) for f in frozen]))
    return parts


def _evaluations_section(policy: RunSummary, cands: list[dict], pick: int | None) -> list[str]:
    parts = ["<h2>Every evaluation</h2>"]
    if not cands:
        return parts + [note("The study holds no evaluation.")]
    parts.append(figure("progress", plots.progress(cands, pick, policy.base_heldout_accuracy),
                        f"Held-out accuracy of each of the {len(cands)} stored evaluations in the order they "
                        "were made; the line is the best so far (full-fidelity scores only); the star is the "
                        "returned policy."))
    metric = _tradeoff_metric(policy, cands)
    base_cost = getattr(policy, "base_predicted_latency_ms" if metric == "latency_ms" else f"base_{metric}")
    budgets = [b.target for b in policy_budgets(policy) if b.metric == metric]
    parts.append(figure("tradeoff", plots.tradeoff(cands, metric, base_cost, budgets, pick),
                        "Accuracy against cost of every candidate; the dashed line is the budget, the black "
                        "line the Pareto front (no candidate is both cheaper and more accurate). Searchers "
                        "project candidates to just under the budget, so most sit close to it."))
    return parts


def _ladder_section(policy: RunSummary, cands: list[dict], pick: int | None) -> list[str]:
    ladder = policy.ladder
    if not (ladder and any(c["rung_accuracy"] for c in cands)):
        return []
    counts = ", ".join(f"{n} at {name}" for n, name in zip(ladder["candidates_per_rung"], ladder["rungs"]))
    return ["<h2>The fidelity ladder</h2>",
            figure("ladder", plots.ladder(cands, ladder["rungs"], pick),
                   f"Held-out accuracy of every candidate at each rung it reached ({counts}); each "
                   f"rung kept the top 1/{ladder['eta']} of the candidates scored there so far. "
                   + (f"Rung {ladder['rungs'][-1]}: {ladder['steps']} SGD steps of fine-tuning"
                      f"{' with distillation' if ladder.get('distill') else ''}. " if ladder["steps"] else "")
                   + "The star is the returned policy: the best at the highest rung.")]


def _latency_section(policy: RunSummary) -> list[str]:
    check = policy.latency_verification
    if not (check and check.get("checked")):
        return ([note("The latency budget was not checked by measurement (--verify-latency 0).")]
                if policy.predicted_latency_ms is not None else [])
    relative = [parse_budget(t, {"latency_ms": 1.0}).relative for t in check.get("budgets", [])]
    chosen = (check.get("chosen") or {}).get("evaluation")
    verdict = ("the star met the budget measured" if check["verified"]
               else "none met the budget measured: the search's best is kept, unverified")
    return ["<h2>Predicted against measured latency</h2>",
            figure("latency", plots.latency(check["checked"], [r for r in relative if r], chosen),
                   f"The lookup table's prediction against the measurement (each timed interleaved "
                   f"with the unpruned model) of the {len(check['checked'])} candidates checked after "
                   f"the search; {verdict}.")]


def _finetune_section(policy: RunSummary) -> list[str]:
    if policy.finetuned_test_accuracy is None:
        return []
    history = policy.finetune_history
    if not history:
        return ["<h2>Fine-tuning</h2>",
                note("This run was fine-tuned before the per-epoch history was kept: test accuracy "
                     f"{pct(policy.test_accuracy_before_finetune)} → "
                     f"{pct(policy.finetuned_test_accuracy)} %.")]
    plain = policy.finetune_start == "plain"  # the search's held-out score is the refitted model's, not this start's
    before = {"heldout": None if plain else policy.heldout_accuracy, "test": policy.test_accuracy_before_finetune}
    how = (" with distillation" if policy.finetune_distill else "") + (
        " from the plainly pruned model (no refit)" if plain else "")
    held = "held-out accuracy" if plain else "held-out accuracy (epoch 0: the search's score)"
    return ["<h2>Fine-tuning</h2>",
            figure("finetune", plots.finetune(history, before, policy.finetuned_test_accuracy),
                   f"{policy.finetune_epochs} epoch{'' if policy.finetune_epochs == 1 else 's'}{how}: {held} and "
                   "training loss per epoch, test "
                   "accuracy before and after.")]


def _group_channels(policy: RunSummary, ratios: dict[str, float]) -> dict[str, int] | None:
    """Unpruned channels per group: policy.json's, or (older runs) kept / (1 - ratio), exact by construction."""
    if policy.group_channels:
        return policy.group_channels
    kept = policy.kept_channels
    if not kept or any(n not in ratios or ratios[n] >= 1 for n in kept):
        return None
    return {n: int(round(k / (1 - ratios[n]))) for n, k in kept.items()}


def _tradeoff_metric(policy: RunSummary, cands: list[dict]) -> str:
    """The first budget's metric when candidates carry it (latency: the table's prediction), else MACs."""
    for b in policy_budgets(policy):
        if all(b.metric in c["costs"] for c in cands) and (b.metric != "latency_ms"
                                                           or policy.base_predicted_latency_ms):
            return b.metric
    return "macs"


def _run_facts(policy: RunSummary, cands: list[dict]) -> str:
    partial = sum(c["partial"] for c in cands)
    facts = [("weights", policy.weights), ("data", policy.data), ("criterion", policy.criterion),
             ("evaluations", policy.evaluations), ("of them partial", partial or None),
             ("search", seconds(policy.search_seconds)), ("held-out images", policy.heldout_images),
             ("returned", None if policy.best_evaluation is None else f"evaluation {policy.best_evaluation + 1}")]
    return "<p class=facts>" + " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in facts if v is not None) + "</p>"


def _summary_table(s: RunSummary) -> str:
    rows = [("MACs", human(s.base_macs), human(s.macs), f"{s.macs / s.base_macs:.1%}"),
            ("params", human(s.base_params), human(s.params), f"{s.params / s.base_params:.1%}")]
    if s.uniform_macs:
        rows.append(("MACs, uniform at the same budget", "", human(s.uniform_macs), f"{s.uniform_macs / s.base_macs:.1%}"))
    scored = "your evaluate function" if s.scored_by == "evaluate function" else "held-out top-1"
    for label, value, base in ((scored, s.heldout_accuracy, s.base_heldout_accuracy),
                               ("test top-1", s.test_accuracy, s.base_test_accuracy)):
        if value is not None:
            rows.append((label, pct(base), pct(value), "" if base is None else f"{100 * (value - base):+.2f} pp"))
    if s.finetuned_test_accuracy is not None:
        base = s.base_test_accuracy
        rows.append((f"test top-1, fine-tuned{f' {s.finetune_epochs} ep' if s.finetune_epochs else ''}", "", pct(s.finetuned_test_accuracy),
                     "" if base is None else f"{100 * (s.finetuned_test_accuracy - base):+.2f} pp"))
    where = f"{(s.latency_device or 'cpu').upper()} latency (batch {s.latency_batch})"
    if s.latency_ms and s.base_latency_ms:
        rows.append((f"{where}, measured", f"{s.base_latency_ms:.2f} ms", f"{s.latency_ms:.2f} ms",
                     speedup(s.base_latency_ms, s.latency_ms)))
    if s.predicted_latency_ms:
        rows.append((f"{where}, lookup table", f"{s.base_predicted_latency_ms:.2f} ms",
                     f"{s.predicted_latency_ms:.2f} ms", speedup(s.base_predicted_latency_ms, s.predicted_latency_ms)))
    return table(("", "unpruned", "pruned", "ratio"), rows, cls="summary")
