"""Console presentation (rich): a search's progress with ETA and best-so-far and its final table; sweep tables."""
from __future__ import annotations

import sys

from rich import box
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoprune.budget import human
from autoprune.progress_lines import ProgressLines, best_so_far
from autoprune.report.html import speedup  # one wording for the console and the report
from autoprune.run_summary import RunSummary
from autoprune.search_job import SearchConfig, execute_search, prepare_search


def run_search_with_progress(cfg: SearchConfig, console: Console) -> dict:
    """A search with a progress bar in a terminal, or plain progress lines in a log (`| tee`, nohup, CI)."""
    # Validate before any bar is drawn, so bad input prints only its one error line.
    with console.status("loading model and data, analysing the graph") as status:
        out, setup = prepare_search(cfg, on_profile=lambda what, done, total: status.update(
            f"profiling latency on this device (once, then cached): {what}, step {done}/{total}"),
            on_stage=lambda text: status.update(f"analysing the graph: {text}"))
    if console.is_terminal and sys.stdout.isatty():
        summary = _search_with_bar(cfg, console, out, setup)
    else:  # a log, `| tee`, `| cat`, nohup, CI: plain lines on stdout, flushed (a pipe is block-buffered)
        with ProgressLines(cfg.n_evals(), lambda text: print(text, flush=True)) as lines:
            summary = execute_search(out, setup, on_result=lines.on_result, on_stage=lines.on_stage,
                                     on_progress=lines.on_progress)
    console.print(summary_table(summary))
    for name, path in summary["files"].items():
        console.print(f"  {name}: {path}")
    return summary


def _search_with_bar(cfg: SearchConfig, console: Console, out, setup) -> dict:
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        TextColumn("{task.fields[best]}"), console=console, transient=False)
    task = progress.add_task("searching", total=cfg.n_evals(), best="")
    inner: list = []  # a searcher's own long step (metapruning's PruningNet training), as a second bar

    def on_progress(what: str, done: int, total: int) -> None:
        if not inner:
            inner.append(progress.add_task(what, total=total, best=""))
        progress.update(inner[0], description=what, completed=done, total=total)

    def on_result(result, problem) -> None:
        progress.update(task, completed=problem.n_evals, best=best_so_far(problem))

    with progress:
        summary = execute_search(out, setup, on_result=on_result, on_progress=on_progress,
                                 on_stage=lambda s: progress.update(task, description=s))
        progress.update(task, description="done")
    return summary


def summary_table(summary: dict) -> Table:
    """The run's figures as the terminal shows them, read through RunSummary (policy.json's keys and defaults)."""
    s = RunSummary.read(summary)
    t = Table(title=f"{s.model} · {', '.join(s.budgets)} · agent {s.agent} · seed {s.seed} · "
                    f"{s.evaluations} evaluations")
    t.add_column("")
    t.add_column("base", justify="right")
    t.add_column("pruned", justify="right")
    t.add_column("ratio", justify="right")
    t.add_row("MACs", human(s.base_macs), human(s.macs), f"{s.macs / s.base_macs:.1%}")
    t.add_row("params", human(s.base_params), human(s.params), f"{s.params / s.base_params:.1%}")
    _accuracy_row(t, "held-out top-1", s.heldout_accuracy, s.base_heldout_accuracy, base_shown=True)
    if s.ladder_heldout_accuracy is not None:
        _accuracy_row(t, f"held-out top-1, after the ladder's {s.ladder['steps']} steps", s.ladder_heldout_accuracy,
                      s.base_heldout_accuracy)
    if s.test_accuracy is not None:  # a Python API run may have no test split
        _accuracy_row(t, "test top-1", s.test_accuracy, s.base_test_accuracy, base_shown=True)
    if "pruningnet" in s.extra:
        p = s.extra["pruningnet"]
        _accuracy_row(t, "held-out top-1, PruningNet weights", p["heldout_accuracy"], s.base_heldout_accuracy)
        _accuracy_row(t, "test top-1, PruningNet weights", p["test_accuracy"], s.base_test_accuracy)
    if s.finetuned_test_accuracy is not None:
        how = (f"fine-tuned{f' {s.finetune_epochs} ep' if s.finetune_epochs else ''}"
               f"{', distilled' if s.finetune_distill else ''}")
        _accuracy_row(t, f"test top-1, {how}", s.finetuned_test_accuracy, s.base_test_accuracy)
    where = f"{(s.latency_device or 'cpu').upper()} latency (batch {s.latency_batch})"
    t.add_row(f"{where}, measured", f"{s.base_latency_ms:.2f} ms", f"{s.latency_ms:.2f} ms",
              speedup(s.base_latency_ms, s.latency_ms))
    if s.predicted_latency_ms is not None:
        t.add_row(f"{where}, lookup table", f"{s.base_predicted_latency_ms:.2f} ms",
                  f"{s.predicted_latency_ms:.2f} ms", speedup(s.base_predicted_latency_ms, s.predicted_latency_ms))
    if s.latency_verification is not None:
        v = s.latency_verification
        kept = v["chosen"]
        verdict = (f"evaluation {kept['evaluation']} meets it" if v["verified"]
                   else f"none of {len(v['checked'])} met it: the search's best is kept, unverified")
        t.add_row(f"latency budget, measured check of {len(v['checked'])} best", "",
                  f"{kept['measured_fraction']:.1%} of base", verdict)
    return t


def _accuracy_row(t: Table, label: str, value: float, base: float | None, *, base_shown: bool = False) -> None:
    """One accuracy row: the unpruned figure in the base column only where it is the same measurement."""
    t.add_row(label, f"{base:.4f}" if base_shown and base is not None else "", f"{value:.4f}",
              "" if base is None else f"{value - base:+.4f}")


def sweep_tables(results: dict) -> list:
    """The sweep's comparison (agent × model × budget, over seeds), one row per trial, then each failure."""
    def pct(v) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    def num(v) -> str:
        return "–" if v is None else f"{v:g}"

    out: list = []
    if any(g["seeds"] > 1 for g in results["groups"]):
        g_t = _compact_table("agent × model × budget, mean over seeds (accuracy %, s: search seconds)")
        for col in ("model", "budget", "agent", "ok", "held-out", "best", "test", "MACs%", "evals", "s"):
            g_t.add_column(col, justify="left" if col in ("model", "budget", "agent") else "right", no_wrap=True)
        for g in results["groups"]:
            g_t.add_row(g["model"], g["budgets"], g["agent"], f"{g['ok']}/{g['seeds']}",
                        pct(g["heldout_accuracy_mean"]), pct(g["heldout_accuracy_best"]), pct(g["test_accuracy_mean"]),
                        num(g["macs_pct_mean"]), num(g["evaluations_mean"]), num(g["search_seconds_mean"]))
        out.append(g_t)
    t = _compact_table(f"{results['ok']} of {results['trials']} trials finished (accuracy %, s: search seconds)")
    for col in ("model", "budget", "agent", "seed", "held-out", "test", "MACs%", "evals", "s", "status"):
        t.add_column(col, justify="left" if col in ("model", "budget", "agent", "status") else "right", no_wrap=True)
    for r in results["rows"]:
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]"
        t.add_row(r["model"], r["budgets"], r["agent"], str(r["seed"]), pct(r["heldout_accuracy"]),
                  pct(r["test_accuracy"]), num(r["macs_pct"]), num(r["evaluations"]), num(r["search_seconds"]), status)
    out.append(t)
    for r in results["rows"]:
        if r["status"] != "ok":
            out.append(f"[red]{r['status']}[/red] {escape(r['model'])} {escape(r['budgets'])} {escape(r['agent'])} "
                       f"seed {r['seed']}: {escape(r['error'] or '')}")
    return out


def _compact_table(title: str) -> Table:
    # ten columns within an 80-column terminal (or a log file): light rules, one space between columns
    return Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)


def profile_with_progress(console: Console, job: Callable[[Callable[[str, int, int], None]], dict]) -> dict:
    """Run `job(on_progress)` (a latency profile) under a progress bar with ETA.

    The bar appears with the first step timed: bad input, refused before any timing, prints only
    its one error line, and a table that is already complete prints no bar at all.
    """
    progress = Progress(TextColumn("[bold]profiling {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
    task = progress.add_task("latency table", total=None)

    def on_progress(what: str, done: int, total: int) -> None:
        progress.start()  # idempotent
        progress.update(task, description=what, completed=done, total=total)

    try:
        return job(on_progress)
    finally:
        progress.stop()
