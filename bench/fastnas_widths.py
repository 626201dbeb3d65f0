"""A bench-only searcher: ModelOpt FastNAS's returned widths, scored and fine-tuned through autoprune's pipeline.

FastNAS's model leads autoprune's searched ones on ResNet-56 at 30% FLOPs after the same fine-tune. Two things
differ: the per-layer widths it picked, and everything else (which channels it kept, no refit, its BN). This
searcher takes only the widths (`widths` in bench/results/modelopt_fastnas-<model>.json, the row of this run's
budget and seed), turns them into per-group ratios and evaluates that one policy, so autoprune's channel choice,
least-squares refit, adaptive BN and fine-tune do the rest. If the row then matches FastNAS, the lead is the
widths; if it matches tpe, it is the rest.

    python bench/finetuned_quality.py --combos resnet56:30%FLOPs:0 --rows fastnas-widths
    python bench/finetuned_quality.py --combos resnet56:30%FLOPs:0 --rows fastnas-widths-norefit --row-extra \
        fastnas-widths-norefit:agent=bench/fastnas_widths.py:FastNASWidths,max_ratio=0.95,opt.budget=30%,reconstruct=false

FastNAS prunes inner convolutions down to 4 of 64 channels (94%), so the row's space needs `max_ratio=0.95`
(the named row sets it, and tells the searcher its model and budget).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoprune.agents.base import Searcher

RESULTS = Path(__file__).resolve().parent / "results"


class FastNASWidths(Searcher):
    name = "fastnas-widths"
    default_evals = 1

    def __init__(self, *, budget: str = "30%", model: str = "resnet56") -> None:
        self.budget = budget.removesuffix("FLOPs")
        self.model = model

    def widths(self, seed: int) -> dict[str, int]:
        rows = json.loads((RESULTS / f"modelopt_fastnas-{self.model}.json").read_text())["rows"]
        for row in rows:
            if row["budget"] == f"{self.budget}FLOPs" and row["seed"] == seed:
                return row["widths"]
        raise ValueError(f"no FastNAS row for {self.model} at {self.budget} FLOPs, seed {seed}")

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        widths = self.widths(seed)
        space = problem.space
        kept = np.array([widths[name] for name in space.graph.group_names()], dtype=np.float64)
        ratios = 1.0 - kept / space.channels
        if np.any(ratios > space.max_ratios + 1e-9):
            raise ValueError(f"FastNAS's widths need a deeper space (max_ratio >= {ratios.max():.4f})")
        if not problem.feasible(ratios):  # FastNAS counts FLOPs its own way: spend the same budget as the others
            ratios = problem.project(ratios, None)
        problem.evaluate(ratios)
