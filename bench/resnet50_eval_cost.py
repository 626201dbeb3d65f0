"""What one candidate evaluation of ResNet-50 at 224x224 costs, measured on this CPU (or a GPU).

An evaluation is: prune a copy (Torch-Pruning), recalibrate BN on `calib_batches` x 64 training
images (train-mode forwards without gradients), score the held-out split (inference forwards).
This script times each part on random data with torchvision's resnet50 (random weights: speed
does not depend on the values), for the unpruned model and for a uniform 50%-FLOPs policy from
autoprune's own channel space, with the same channels_last layout the evaluator uses.
docs/sweeps.md turns the per-image figures into a cost per evaluation.

    python bench/resnet50_eval_cost.py --threads 1 --batch 64 --batches 2
    python bench/resnet50_eval_cost.py --device cuda --batch 256 --batches 10 --out ...
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from autoprune.budget import parse_budget
from autoprune.evaluate import fast_layout
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace

SHAPE = (3, 224, 224)


def per_image_ms(model: torch.nn.Module, batch: int, batches: int, train: bool,
                 device: torch.device) -> tuple[float, float]:
    """Forward time per image, median over `batches` timed batches after one warm-up: (wall, CPU).

    CPU time (this process's) is what the forward costs on a core of its own; wall time also holds
    whatever a shared machine took away (on the 2-core machine these figures come from, other jobs ran).
    On a GPU the wall time is taken after a synchronize, so it is the kernels' time, not the launches'.
    """
    x = torch.randn(batch, *SHAPE)
    model, x = fast_layout(model.to(device), x, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train(train)
    ctx = torch.no_grad() if train else torch.inference_mode()
    wall, cpu = [], []
    with ctx:
        model(x)
        for _ in range(batches):
            sync()
            t, c = time.perf_counter(), time.process_time()
            model(x)
            sync()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return 1000 * float(np.median(wall)) / batch, 1000 * float(np.median(cpu)) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2, help="timed batches per measurement (after one warm-up)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "resnet50_eval_cost.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = torchvision.models.resnet50().eval()
    graph = build_graph(model, SHAPE, model_id="resnet50")
    space = ChannelSpace(graph)
    base = {"macs": graph.base_macs, "params": graph.base_params}
    # The problem only to project a uniform ratio onto the budget; nothing is evaluated through it.
    problem = Problem(model, space, [parse_budget("50%FLOPs", base)], evaluator=None)
    ratios = problem.project(np.full(space.size, 0.5))
    t = time.perf_counter()
    pruned = space.apply(model, ratios, criterion="l2")
    prune_s = time.perf_counter() - t
    costs = problem.costs(ratios)

    row = {"threads": args.threads, "batch": args.batch, "timed_batches": args.batches, "device": str(device),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "base_gmacs": graph.base_macs / 1e9, "pruned_gmacs": costs["macs"] / 1e9, "prune_seconds": round(prune_s, 2)}
    for name, m in (("base", model), ("pruned50", pruned)):
        for mode in ("eval", "train"):  # eval: held-out scoring; train: BN recalibration (no gradients)
            wall, cpu = per_image_ms(m, args.batch, args.batches, train=mode == "train", device=device)
            row[f"{name}_{mode}_ms_per_image"] = round(wall, 3)
            row[f"{name}_{mode}_cpu_ms_per_image"] = round(cpu, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
