"""Console presentation of a search (rich): progress with ETA and best-so-far, final table."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoprune.budget import human
from autoprune.search import SearchConfig, execute_search, prepare_search


def run_search_with_progress(cfg: SearchConfig, console: Console) -> dict:
    # Validate before any bar is drawn, so bad input prints only its one error line.
    with console.status("loading model and data, analysing the graph"):
        out, setup = prepare_search(cfg)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        TextColumn("{task.fields[best]}"), console=console, transient=False)
    task = progress.add_task("searching", total=cfg.n_evals(), best="")

    def on_result(result, problem) -> None:
        best = problem.best
        progress.update(task, completed=problem.n_evals,
                        best=f"best held-out {best.accuracy:.4f} @ {best.costs['macs'] / problem.base_costs['macs']:.1%} MACs")

    with progress:
        summary = execute_search(out, setup, on_result=on_result,
                                 on_stage=lambda s: progress.update(task, description=s))
        progress.update(task, description="done")
    console.print(summary_table(summary))
    for name, path in summary["files"].items():
        console.print(f"  {name}: {path}")
    return summary


def summary_table(s: dict) -> Table:
    t = Table(title=f"{s['model']} · {', '.join(s['budgets'])} · agent {s['agent']} · seed {s['seed']} · "
                    f"{s['evaluations']} evaluations")
    t.add_column("")
    t.add_column("base", justify="right")
    t.add_column("pruned", justify="right")
    t.add_column("ratio", justify="right")
    t.add_row("MACs", human(s["base_macs"]), human(s["macs"]), f"{s['macs'] / s['base_macs']:.1%}")
    t.add_row("params", human(s["base_params"]), human(s["params"]), f"{s['params'] / s['base_params']:.1%}")
    t.add_row("held-out top-1", f"{s['base_heldout_accuracy']:.4f}", f"{s['heldout_accuracy']:.4f}",
              f"{s['heldout_accuracy'] - s['base_heldout_accuracy']:+.4f}")
    t.add_row("test top-1", f"{s['base_test_accuracy']:.4f}", f"{s['test_accuracy']:.4f}",
              f"{s['test_accuracy'] - s['base_test_accuracy']:+.4f}")
    if "finetuned_test_accuracy" in s:
        t.add_row(f"test top-1, fine-tuned {s['finetune_epochs']} ep", "", f"{s['finetuned_test_accuracy']:.4f}",
                  f"{s['finetuned_test_accuracy'] - s['base_test_accuracy']:+.4f}")
    t.add_row("CPU latency (batch 1)", f"{s['base_latency_ms']:.2f} ms", f"{s['latency_ms']:.2f} ms",
              f"{s['base_latency_ms'] / s['latency_ms']:.2f}x faster")
    return t
