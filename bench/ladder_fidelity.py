"""The fidelity ladder's rungs against what a user keeps: Spearman of each rung's score with the accuracy
after the benchmark's fine-tune, and each rung's cost.

For random policies at a budget (EagleEye's sampling: uniform ratios projected onto the budget), every
rung of autoprune.ladder is scored on the same candidate -- rung 0 as the ladder scores it (a cheap
refit, BN on 2 batches, a fifth of the held-out split) and two variants of it (no refit; the full
refit), rung 1 (refit + BN on every batch + the whole split), rung 2 at several step counts -- and then the rung-1 model is fine-tuned with the benchmark's
schedule (1 epoch, as `autoprune finetune --epochs 1`, bench/finetuned_quality.py) and tested. The
Spearman of each rung's held-out score with that fine-tuned test accuracy says how well the rung
ranks what the user keeps; the seconds per candidate say what it costs. Candidates per second of
rung 0 against rung 1 is the ladder's speed-up at its first rung.

    OMP_NUM_THREADS=1 python bench/ladder_fidelity.py --budget 30%FLOPs --candidates 16 --steps 50 100 200
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.evaluate import accuracy
from autoprune.ladder import Ladder
from autoprune.search_job import SearchConfig, build_setup
from autoprune.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budget", default="30%FLOPs")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--steps", nargs="+", type=int, default=[50, 100, 200], help="rung-2 fine-tune lengths")
    p.add_argument("--finetune-epochs", type=int, default=1, help="the benchmark's fine-tune (ground truth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SearchConfig(model=args.model, budgets=[args.budget], agent="random", seed=args.seed, heldout=args.heldout,
                       calib_batches=args.calib_batches, device="cpu", threads=args.threads)
    setup = build_setup(cfg)
    problem, data, device = setup.problem, setup.data, setup.device
    problem.use_reconstruction()
    rng = np.random.default_rng(args.seed)
    candidates = [problem.project(rng.uniform(0.0, problem.space.max_ratios), rng) for _ in range(args.candidates)]
    out = args.out or Path("bench/results") / f"ladder_fidelity-{args.model}-{args.budget.replace('%', 'pct')}.json"
    rows = []
    for i, ratios in enumerate(candidates):
        row: dict = {"candidate": i, "macs_pct": 100 * problem.costs(problem.space.snap(ratios))["macs"]
                     / problem.base_costs["macs"]}
        t = time.perf_counter()
        row["rung0"] = problem.evaluator.quick(problem.prune(ratios))["top1"]
        row["rung0_s"] = time.perf_counter() - t
        t = time.perf_counter()
        acc, seconds = problem.score(ratios, keep=True)
        full = acc.pop("model")
        row["rung1"], row["rung1_s"] = acc["top1"], time.perf_counter() - t
        t = time.perf_counter()
        row["rung0_refit"] = problem.evaluator.quick(copy.deepcopy(full))["top1"]
        row["rung0_refit_s"] = time.perf_counter() - t + seconds["prune"] + seconds["reconstruct"]
        t = time.perf_counter()
        acc, _ = problem._score_rung(ratios, 0, None, dict.fromkeys(("prune", "reconstruct", "forward"), 0.0))
        row["rung0_cheap"], row["rung0_cheap_s"] = acc["top1"], time.perf_counter() - t
        for steps in args.steps:
            model = copy.deepcopy(full)
            ladder = Ladder(steps=steps, seed=args.seed, data=data)
            row[f"rung2_{steps}_s"] = ladder.finetune(model, problem.model, device)
            row[f"rung2_{steps}"] = problem.evaluator(model, recalibrate=False)["top1"]
        model = copy.deepcopy(full)
        t = time.perf_counter()
        train(model, data, TrainConfig(epochs=args.finetune_epochs, lr=0.01, batch_size=128, schedule="cosine",
                                       seed=args.seed), device)
        row["finetune_s"] = time.perf_counter() - t
        row["finetuned_heldout"] = accuracy(model, data.heldout, device)["top1"]
        row["finetuned_test"] = accuracy(model, data.test, device)["top1"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(out, args, argv, rows)
    return write(out, args, argv, rows)


def write(out: Path, args: argparse.Namespace, argv: list[str] | None, rows: list[dict]) -> dict:
    keys = ["rung0", "rung0_cheap", "rung0_refit", "rung1"] + [f"rung2_{s}" for s in args.steps]
    truth = [r["finetuned_test"] for r in rows]
    summary = {}
    for k in keys:
        rho = spearmanr([r[k] for r in rows], truth).statistic if len(rows) > 2 else None
        summary[k] = {"spearman_vs_finetuned_test": None if rho is None or np.isnan(rho) else float(rho),
                      "seconds_per_candidate": statistics.median(r[f"{k}_s"] for r in rows) if rows else None}
    rho_ho = spearmanr([r["finetuned_heldout"] for r in rows], truth).statistic if len(rows) > 2 else None
    rho_ho = None if rho_ho is None or np.isnan(rho_ho) else rho_ho
    summary["finetuned_heldout"] = {"spearman_vs_finetuned_test": None if rho_ho is None else float(rho_ho)}
    command = "OMP_NUM_THREADS=1 " + shlex.join(["python", "bench/ladder_fidelity.py", *(sys.argv[1:] if argv is None
                                                                                        else argv)])
    result = {"command": command, "args": vars(args), "machine": machine_info("cpu"),
              "load_average": os.getloadavg(), "summary": summary, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(result), indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, keys))
    return result


def markdown(result: dict, keys: list[str]) -> str:
    a, rows, summary = result["args"], result["rows"], result["summary"]
    lines = ["# The ladder's rungs against the accuracy after fine-tuning", "", f"`{result['command']}`", "",
             f"{a['model']}, shipped weights, Fashion-MNIST, {a['budget']}, {len(rows)} random policies (uniform "
             f"ratios projected onto the budget, seed {a['seed']}), held-out {a['heldout']} images, "
             f"{a['calib_batches']}x64 BN batches. Ground truth: the rung-1 model fine-tuned "
             f"{a['finetune_epochs']} epoch(s) (SGD Nesterov, cosine from 0.01, batch 128), test top-1 on 10,000 "
             f"images. {a['threads']} thread(s); load average at the end {result['load_average'][0]:.1f} "
             "(other jobs ran on this 2-core machine: seconds are comparable within this file only).", "",
             "| score | Spearman with fine-tuned test | s per candidate (median) | candidates/s vs rung 1 |",
             "|---|---|---|---|"]
    full_s = summary["rung1"]["seconds_per_candidate"]
    names = {"rung0": "rung 0: quick (2 BN batches, 1/5 of held-out, no refit)",
             "rung0_cheap": "rung 0 as the ladder scores it: cheap refit (64 images, 1024 rows), 2 BN batches, 1/5",
             "rung0_refit": "rung 0 with the full refit (2 BN batches, 1/5 of held-out)",
             "rung1": "rung 1: full (refit, all BN batches, all held-out)"}
    for k in keys:
        s = summary[k]
        rho = "—" if s["spearman_vs_finetuned_test"] is None else f"{s['spearman_vs_finetuned_test']:.2f}"
        sec = s["seconds_per_candidate"]
        label = names[k] if k in names else f"rung 2: {k.split('_')[1]} fine-tune steps, then all held-out"
        lines.append(f"| {label} | {rho} | {sec:.2f} | {full_s / sec:.2f}x |")
    ho = summary["finetuned_heldout"]["spearman_vs_finetuned_test"]
    lines += ["", f"For scale: the fine-tuned model's own held-out score ranks its test accuracy with Spearman "
              f"{'—' if ho is None else f'{ho:.2f}'} (the noise of {a['heldout']} held-out images).", "",
              "| # | MACs % | rung 0 | rung 0 cheap refit | rung 0 refit | rung 1 | " + " | ".join(f"rung 2 @{s}" for s in a["steps"])
              + " | fine-tuned test |", "|---" * (6 + len(a["steps"])) + "|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['macs_pct']:.2f} | {100 * r['rung0']:.1f} | {100 * r['rung0_cheap']:.1f} | "
                     f"{100 * r['rung0_refit']:.1f}"
                     f" | {100 * r['rung1']:.1f} | " + " | ".join(f"{100 * r[f'rung2_{s}']:.1f}" for s in a["steps"])
                     + f" | {100 * r['finetuned_test']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
