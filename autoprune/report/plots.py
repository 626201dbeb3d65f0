"""The report's figures: matplotlib, drawn to SVG that is pasted into the page.

Why matplotlib and inline SVG, not plotly (which `optuna.visualization` draws with):
- the report must open from disk with no network and a Content-Security-Policy that allows no
  script at all; an inline SVG is part of the page, so nothing is fetched and nothing runs,
  while a plotly page needs plotly.js (~3.5 MB, inlined once) and a script per plot;
- the files stay small (tens of kB per plot) and the report of a 60-evaluation run is written
  in about a second; text is drawn as paths, so a page looks the same in every browser;
- output is deterministic (fixed hash salt, no date), so two reports of one run are the same file.
Optuna's own plots answer Optuna's questions (parameter importances, per-parameter slices); the
ones here (kept channels per group beside uniform pruning, the budget line, the Pareto front in
cost, partial-fidelity candidates) it does not draw.

Every function takes plain data (lists and dicts read from policy.json and the study) and
returns one `<svg>` element as text; the pages (`run.py`, `sweep.py`) lay them out.

Layer: the bottom of autoprune.report beside `html.py`; it imports nothing of the report (the
Pareto front's rule comes from autoprune.pareto).
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np

from autoprune.pareto import pareto_front as non_dominated

# One look for every figure: small type, light grid; colours of matplotlib's default cycle.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "autoprune",
         "svg.fonttype": "path"}
PICK, FULL, PARTIAL, UNIFORM, BAD = "#d62728", "#1f77b4", "#9a9a9a", "#ff7f0e", "#8c564b"
WIDE, TALL = 8.0, 3.4  # inches: one plot per row of the page


def _figure(width: float = WIDE, height: float = TALL):
    import matplotlib

    matplotlib.rcParams.update(STYLE)
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig, prefix: str) -> str:
    """The figure as one `<svg>` element whose ids carry `prefix`, so several can share a page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: it lives inside HTML
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)


def channels(names: Sequence[str], base: Sequence[int], kept: Sequence[int],
             uniform: Sequence[int] | None) -> str:
    """Kept (solid) and pruned (light) channels per group in network order; uniform pruning beside."""
    n = len(names)
    fig = _figure(max(WIDE, 0.32 * n + 2), TALL + 0.6)
    ax = fig.add_subplot()
    x = np.arange(n)
    width = 0.4 if uniform is not None else 0.7
    left = x - width / 2 if uniform is not None else x
    base_a, kept_a = np.asarray(base), np.asarray(kept)
    ax.bar(left, kept_a, width, color=PICK, label="kept (this search)")
    ax.bar(left, base_a - kept_a, width, bottom=kept_a, color=PICK, alpha=0.22, label="pruned (this search)")
    if uniform is not None:
        uni = np.asarray(uniform)
        ax.bar(x + width / 2, uni, width, color=UNIFORM, label="kept (uniform, same budget)")
        ax.bar(x + width / 2, base_a - uni, width, bottom=uni, color=UNIFORM, alpha=0.22,
               label="pruned (uniform)")
    ax.set_xticks(x, [_short(s) for s in names], rotation=60, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("channels")
    ax.set_xlabel("prunable channel group, input to output")
    ax.legend(loc="upper left", ncols=2, frameon=False)
    ax.set_ylim(0, base_a.max() * 1.3)
    return to_svg(fig, "channels")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def progress(cands: list[dict], pick: int | None, base_accuracy: float | None) -> str:
    """Held-out accuracy of every evaluation in order, the best-so-far line (full fidelity only), the pick."""
    fig = _figure()
    ax = fig.add_subplot()
    full = [c for c in cands if not c["partial"]]
    part = [c for c in cands if c["partial"]]
    if part:
        ax.scatter([c["index"] + 1 for c in part], [100 * c["accuracy"] for c in part], s=14, facecolors="none",
                   edgecolors=PARTIAL, label="partial (low-fidelity estimate, never the best)")
    ax.scatter([c["index"] + 1 for c in full], [100 * c["accuracy"] for c in full], s=14, color=FULL,
               label="evaluated candidate")
    if full:
        xs, best = best_so_far(cands)
        ax.step(xs, 100 * best, where="post", color="black", lw=1.2, label="best so far")
    _mark_pick(ax, cands, pick, lambda c: c["index"] + 1)
    if base_accuracy is not None:
        ax.axhline(100 * base_accuracy, color="grey", ls=":", lw=1, label="unpruned")
    ax.set_xlabel("evaluation")
    _whole_numbers(ax.xaxis)
    ax.set_ylabel("held-out top-1 (%)")
    _legend_outside(fig)
    return to_svg(fig, "progress")


def _whole_numbers(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(fig) -> None:
    """Legend right of the axes: the points fill the whole plot, any corner would hide some."""
    fig.legend(loc="outside right upper", frameon=False)


def best_so_far(cands: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(evaluation numbers, best accuracy up to each) over full-fidelity candidates: a partial score never leads."""
    order = sorted((c for c in cands if not c["partial"]), key=lambda c: c["index"])
    return (np.array([c["index"] + 1 for c in order]),
            np.maximum.accumulate(np.array([c["accuracy"] for c in order])))


def _mark_pick(ax, cands: list[dict], pick: int | None, x_of) -> None:
    chosen = next((c for c in cands if c["index"] == pick), None)
    if chosen is not None:
        ax.scatter([x_of(chosen)], [100 * chosen["accuracy"]], s=110, marker="*", color=PICK, zorder=5,
                   label="returned policy")


def ladder(cands: list[dict], rungs: Sequence[str], pick: int | None) -> str:
    """Each candidate's held-out accuracy at every rung it reached, joined by a line; the pick's path in red."""
    fig = _figure()
    ax = fig.add_subplot()
    climbed = [c for c in cands if c.get("rung_accuracy")]
    for c in climbed:
        ys = [100 * a for a in c["rung_accuracy"]]
        chosen = c["index"] == pick
        ax.plot(range(len(ys)), ys, color=PICK if chosen else FULL, alpha=1.0 if chosen else 0.35,
                lw=1.6 if chosen else 0.8, marker="o", ms=4 if chosen else 2.5, zorder=5 if chosen else 2,
                label="returned policy" if chosen else None)
    for rung in range(len(rungs)):
        n = sum(len(c["rung_accuracy"]) > rung for c in climbed)
        ax.annotate(f"{n}", (rung, 1), xycoords=("data", "axes fraction"), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8, color="grey")
    ax.set_xticks(range(len(rungs)), [f"{i}: {name}" for i, name in enumerate(rungs)])
    ax.set_xlim(-0.3, len(rungs) - 0.7)
    ax.set_xlabel("rung (grey: candidates scored there)")
    ax.set_ylabel("held-out top-1 (%)")
    _legend_outside(fig)
    return to_svg(fig, "ladder")


def tradeoff(cands: list[dict], metric: str, base_cost: float, budgets: list[float], pick: int | None) -> str:
    """Accuracy against cost (% of the unpruned model) of every candidate, budget line(s), Pareto front."""
    fig = _figure()
    ax = fig.add_subplot()

    def x_of(c: dict) -> float:
        return 100 * c["costs"][metric] / base_cost

    groups = (("full", FULL, "o", "candidate within budget"),
              ("partial", PARTIAL, "o", "partial (low-fidelity estimate)"),
              ("infeasible", BAD, "x", "over budget"))
    for kind, colour, marker, label in groups:
        sel = [c for c in cands if _kind(c) == kind]
        if sel:
            face = "none" if kind == "partial" else colour
            ax.scatter([x_of(c) for c in sel], [100 * c["accuracy"] for c in sel], s=16, marker=marker,
                       facecolors=face, edgecolors=colour, label=label)
    front = pareto_front([c for c in cands if _kind(c) == "full"], metric)
    if front:
        ax.step([x_of(c) for c in front], [100 * c["accuracy"] for c in front], where="post", color="black",
                lw=1.2, label="Pareto front")
    for i, b in enumerate(budgets):
        ax.axvline(100 * b / base_cost, color=PICK, ls="--", lw=1, label="budget" if i == 0 else None)
    _mark_pick(ax, cands, pick, x_of)
    ax.set_xlabel(f"{LABELS.get(metric, metric)}, % of the unpruned model")
    ax.set_ylabel("held-out top-1 (%)")
    _legend_outside(fig)
    return to_svg(fig, "tradeoff")


LABELS = {"macs": "MACs", "params": "parameters", "latency_ms": "predicted latency"}


def _kind(c: dict) -> str:
    return "partial" if c["partial"] else ("full" if c["feasible"] else "infeasible")


def pareto_front(cands: list[dict], metric: str) -> list[dict]:
    """Candidates no other beats in both accuracy (higher) and cost (lower), cheapest first."""
    return [cands[i] for i in non_dominated([(c["accuracy"], c["costs"][metric]) for c in cands])]


def latency(checked: list[dict], budgets: list[float], chosen: int | None) -> str:
    """Lookup-table prediction against measurement (fractions of the unpruned model) of the timed candidates."""
    fig = _figure(6.6, TALL + 0.6)  # square axes (equal scales) and the legend beside them
    ax = fig.add_subplot()
    pred = np.array([100 * c["predicted_fraction"] for c in checked])
    meas = np.array([100 * c["measured_fraction"] for c in checked])
    ok = np.array([bool(c["meets_budget"]) for c in checked])
    lo = min(pred.min(), meas.min(), *(100 * b for b in budgets)) - 3
    hi = max(pred.max(), meas.max(), *(100 * b for b in budgets)) + 3
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls=":", label="measured = predicted")
    for b in budgets:
        ax.axhline(100 * b, color=PICK, ls="--", lw=1, label="budget (measured must stay below)")
    ax.scatter(pred[ok], meas[ok], s=22, color=FULL, label="meets the budget measured")
    ax.scatter(pred[~ok], meas[~ok], s=22, marker="x", color=BAD, label="over the budget measured")
    for c in checked:
        if c["evaluation"] == chosen:
            ax.scatter([100 * c["predicted_fraction"]], [100 * c["measured_fraction"]], s=120, marker="*",
                       color=PICK, zorder=5, label="returned policy")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("predicted latency (lookup table), % of unpruned")
    ax.set_ylabel("measured latency, % of unpruned")
    _legend_outside(fig)
    return to_svg(fig, "latency")


def finetune(history: list[dict], before: dict[str, float | None], after_test: float | None) -> str:
    """Held-out accuracy (from the search's score at epoch 0) and training loss per epoch; test before and after.

    `before`: the pruned model's "heldout" and "test" accuracy before fine-tuning (either may be None).
    """
    fig = _figure()
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    held = [100 * h["heldout_accuracy"] for h in history]
    if before.get("heldout") is not None:
        ax.plot([0, *epochs], [100 * before["heldout"], *held], color=FULL, marker="o", ms=4, label="held-out")
    else:
        ax.plot(epochs, held, color=FULL, marker="o", ms=4, label="held-out")
    if before.get("test") is not None and after_test is not None:
        ax.plot([0, epochs[-1]], [100 * before["test"], 100 * after_test], color=PICK, ls=":", marker="D", ms=5,
                label="test, before and after")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("top-1 (%)")
    loss = ax.twinx()
    loss.plot(epochs, [h["loss"] for h in history], color="grey", ls="--", marker=".", label="training loss (right)")
    loss.set_ylabel("training loss")
    loss.grid(False)
    loss.spines["right"].set_visible(True)
    _legend_outside(fig)  # gathers both axes' entries
    _whole_numbers(ax.xaxis)
    return to_svg(fig, "finetune")


def sweep_curves(title: str, agents: dict[str, list[list[float]]], prefix: str) -> str:
    """Best-so-far held-out accuracy per agent: median over seeds, min-max band, against evaluation."""
    fig = _figure()
    ax = fig.add_subplot()
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    for i, (agent, seeds) in enumerate(agents.items()):
        colour = colours[i % len(colours)]
        x, median, low, high = seed_band(seeds)
        if not len(x):
            continue
        label = f"{agent} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
        if len(x) == 1:  # one evaluation (uniform, global): a point, its seeds' range as an error bar
            ax.errorbar(x, 100 * median, yerr=[100 * (median - low), 100 * (high - median)], fmt="o",
                        color=colour, capsize=3, label=label)
            continue
        ax.plot(x, 100 * median, color=colour, lw=1.5, label=label)
        ax.fill_between(x, 100 * low, 100 * high, color=colour, alpha=0.18, lw=0)
    ax.set_title(title)
    ax.set_xlabel("evaluation")
    _whole_numbers(ax.xaxis)
    ax.set_ylabel("best held-out top-1 so far (%)")
    _legend_outside(fig)
    return to_svg(fig, prefix)


def seed_band(seeds: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(evaluation 1..L, median, min, max) of best-so-far curves; a seed counts up to its own length."""
    length = max((len(s) for s in seeds), default=0)
    grid = np.full((len(seeds), length), np.nan)
    for i, s in enumerate(seeds):
        grid[i, :len(s)] = np.fmax.accumulate(np.asarray(s, dtype=float))  # NaN (partial) carries the best on
    x = np.arange(1, length + 1)
    if not length:
        return x, grid[0:0, 0], grid[0:0, 0], grid[0:0, 0]
    return x, np.nanmedian(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
