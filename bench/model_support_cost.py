"""What graph analysis and one candidate evaluation cost on big torchvision nets, on this CPU.

For each model (random weights: speed does not depend on the values) at 3x224x224: the graph
analysis (`build_graph`: tracing, the cost-polynomial probe, the layer table), median of
`--repeats`; then, unless `--graph-only`, one evaluation of the uniform 50%-FLOPs policy through
`Problem.score` (prune a copy, adaptive BN on `--calib-batches` x 64 images, score `--heldout`
images), the evaluator the searches use. Random tensors stand in for the data.

    python bench/model_support_cost.py resnext50_32x4d densenet121 --threads 2 --out bench/results/model_support_cost.json
    # the graph analysis of an older checkout, for a before/after in one run:
    PYTHONPATH=/path/to/old/checkout python bench/model_support_cost.py densenet121 --graph-only
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.budget import parse_budget
from autoprune.data import TensorSplit
from autoprune.evaluate import Evaluator
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (3, 224, 224)


def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    model = build_model(name, num_classes=1000, in_channels=3, weights="random").model.eval()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        graph = build_graph(model, SHAPE, model_id=name)
        times.append(time.perf_counter() - t)
    row = {"model": name, "groups": len(graph.groups), "graph_seconds": round(statistics.median(times), 2),
           "graph_seconds_all": [round(s, 2) for s in times]}
    if args.graph_only:
        return row
    g = torch.Generator().manual_seed(0)
    train = TensorSplit(torch.randn(args.calib_batches * 64, *SHAPE, generator=g), torch.zeros(args.calib_batches * 64,
                                                                                                dtype=torch.long))
    heldout = TensorSplit(torch.randn(args.heldout, *SHAPE, generator=g), torch.zeros(args.heldout, dtype=torch.long))
    space = ChannelSpace(graph)
    base = {"macs": graph.base_macs, "params": graph.base_params}
    evaluator = Evaluator(train, heldout, torch.device("cpu"), calib_batches=args.calib_batches)
    problem = Problem(model, space, [parse_budget("50%FLOPs", base)], evaluator)
    ratios = problem.project(np.full(space.size, 0.5))
    t = time.perf_counter()
    _, seconds = problem.score(ratios)
    row.update({"macs_fraction": round(problem.costs(ratios)["macs"] / graph.base_macs, 4),
                "calib_images": args.calib_batches * 64, "heldout_images": args.heldout,
                "prune_seconds": round(seconds["prune"], 2),
                "bn_and_heldout_seconds": round(seconds["forward"], 2),
                "evaluation_seconds": round(time.perf_counter() - t, 2)})
    row["graph_plus_evaluation_seconds"] = round(row["graph_seconds"] + row["evaluation_seconds"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="graph analyses per model (median)")
    ap.add_argument("--graph-only", action="store_true")
    ap.add_argument("--calib-batches", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, args) for name in args.models]
    result = {"command": "python bench/model_support_cost.py " + " ".join(args.models),
              "threads": args.threads, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
