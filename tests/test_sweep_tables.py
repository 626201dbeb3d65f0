"""The sweep's tables gain the fine-tuned test accuracy when its trials fine-tuned (finetune_epochs), and
bench/sweeps/finetuned-quality.yaml (the fine-tuned benchmark as a sweep) parses into its 54 trials."""
from __future__ import annotations

from pathlib import Path

from autoprune.report.sweep import aggregate, markdown
from autoprune.tune import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def _row(agent: str, seed: int, finetuned: float | None) -> dict:
    return {"model": "resnet20", "budgets": "30%FLOPs", "agent": agent, "seed": seed, "status": "ok",
            "heldout_accuracy": 0.88, "test_accuracy": 0.885, "macs_pct": 29.9, "params_pct": 40.0,
            "evaluations": 60, "search_seconds": 70.0, "finetuned_test_accuracy": finetuned, "policy": "p",
            "error": None}


def _results(rows: list[dict]) -> dict:
    return {"sweep": "s", "trials": len(rows), "ok": len(rows), "failed": 0, "rows": rows, "groups": aggregate(rows)}


def test_the_fine_tuned_column_appears_only_when_the_trials_fine_tuned():
    tuned = markdown(_results([_row("tpe", 0, 0.9159), _row("tpe", 1, 0.9141)]))
    assert "fine-tuned test" in tuned and "| 91.50 |" in tuned  # the group's mean over seeds
    assert "fine-tuned" not in markdown(_results([_row("tpe", 0, None)]))


def test_the_fine_tuned_benchmark_sweep_file_parses():
    spec = load_sweep(ROOT / "bench" / "sweeps" / "finetuned-quality.yaml")
    trials = spec.trials()
    assert len(trials) == 54 and all(t["config"]["finetune_epochs"] == 1 for t in trials)
