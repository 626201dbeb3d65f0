"""Where the fine-tune starts: the same policy fine-tuned from its refitted weights and from its plainly pruned ones.

A search scores its candidates after a least-squares refit (the default since issue 22), and the run's model --
pruned.pt, and what `autoprune finetune` trains -- is the refitted one. On ResNet-56 at 30% FLOPs, FastNAS's
widths fine-tuned from autoprune's refitted model tested 0.2-0.5 pp below FastNAS's own model, and the same
widths without the refit matched it (bench/results/finetuned_quality-resnet20-resnet56-60evals-1ep.md, rows
fastnas-widths and fastnas-widths-norefit). This bench asks the question for the policies the searchers return:
for each finished part of bench/finetuned_quality.py named on the command line it rebuilds the part's policy
twice in one process -- `refit`: apply_policy + least-squares refit + adaptive BN (what the run keeps), `plain`:
apply_policy + adaptive BN -- fine-tunes each with the part's schedule and seed (`autoprune.train.train`, as
`autoprune finetune` does) and tests both.

    OMP_NUM_THREADS=1 python bench/finetune_start.py --rows tpe --combos resnet56:30%FLOPs:0 resnet56:30%FLOPs:1

Results: one JSON per (model, budget, seed, row) in bench/results/parts/finetune_start-*.json (a part that exists is
skipped), and the aggregate bench/results/finetune_start.md / .json rebuilt after each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.evaluate import accuracy
from autoprune.search_job import SearchConfig, build_setup
from autoprune.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetuned_quality import code_info, part_path, slug  # noqa: E402
from search_quality import jsonable, machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STARTS = ("refit", "plain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--combos", nargs="+", required=True, metavar="MODEL:BUDGET:SEED")
    p.add_argument("--rows", nargs="+", default=["tpe"], help="finetuned_quality rows whose policies are rebuilt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--aggregate-only", action="store_true")
    return p.parse_args(argv)


def start_path(out_dir: Path, model: str, budget: str, seed: int, row: str) -> Path:
    return out_dir / "parts" / f"finetune_start-{model}-{slug(budget)}-s{seed}-{row}.json"


def one_part(args, source: dict) -> dict:
    """Both starting points of one finished part's policy, fine-tuned with that part's schedule."""
    model, budget, seed = source["model"], source["budget"], source["seed"]
    cfg = source["search_config"]
    setup = build_setup(SearchConfig(model=model, budgets=[budget], agent="uniform", seed=seed, heldout=cfg["heldout"],
                                     calib_batches=cfg["calib_batches"], max_ratio=cfg["max_ratio"],
                                     criterion=cfg["criterion"], reconstruct=True, device=args.device,
                                     threads=args.threads))
    problem, data = setup.problem, setup.data
    names = problem.space.graph.group_names()
    given = source["policy"]["ratios"]
    ratios = np.array([given.get(n, 0.0) for n in names], dtype=np.float64)
    ft = source["finetune"]
    out = {"model": model, "budget": budget, "seed": seed, "row": source["row"], "source": source["source"],
           "finetune": ft, "part_finetuned_test": source["finetuned_test"], "macs_pct": source["macs_pct"]}
    for start in STARTS:
        problem.use_reconstruction(start == "refit")
        pruned = problem.pruned_model(ratios)  # adaptive BN; with the refit first for "refit"
        heldout = problem.evaluator(pruned)["top1"]
        before = accuracy(pruned, data.test, setup.device)["top1"]
        t0 = time.perf_counter()
        train(pruned, data, TrainConfig(epochs=ft["epochs"], lr=ft["lr"], batch_size=ft["batch_size"],
                                        schedule=ft["schedule"], seed=ft["seed"]), setup.device)
        out[start] = {"heldout_before": heldout, "test_before": before,
                      "finetuned_test": accuracy(pruned, data.test, setup.device)["top1"],
                      "finetune_seconds": time.perf_counter() - t0}
        print(f"  {start}: test {100 * before:.2f} -> {100 * out[start]['finetuned_test']:.2f}", file=sys.stderr)
    out["plain_minus_refit_pp"] = 100 * (out["plain"]["finetuned_test"] - out["refit"]["finetuned_test"])
    return out


def aggregate(out_dir: Path) -> None:
    parts = [json.loads(f.read_text()) for f in sorted((out_dir / "parts").glob("finetune_start-*.json"))]
    groups: dict[tuple, list[dict]] = {}
    for p in parts:
        groups.setdefault((p["model"], p["budget"], p["row"]), []).append(p)
    cmds = sorted({p["command"] for p in parts})
    lines = ["# Fine-tuning from the refitted or the plainly pruned model", "", *[f"`{c}`" for c in cmds], "",
             "Each row: a policy a searcher returned in bench/finetuned_quality.py (its part file), rebuilt in one "
             "process as `refit` (apply_policy, least-squares refit, adaptive BN: the run's pruned.pt) and as `plain` "
             "(apply_policy, adaptive BN), each fine-tuned with the part's schedule and seed (1 epoch, SGD Nesterov, "
             "cosine from 0.01, batch 128) and tested on 10,000 images (one run's binomial SE ≈ 0.25 pp). "
             f"{parts[0]['machine']['cpu'] if parts else ''}, 1 torch thread; code at "
             f"{', '.join(sorted({(p['code']['commit'] or '?')[:7] for p in parts}))}.", "",
             "| model | budget | row | seed | test before FT refit / plain | fine-tuned refit | fine-tuned plain | "
             "plain − refit pp |", "|---|---|---|---|---|---|---|---|"]
    summary = []
    for (model, budget, row), ps in sorted(groups.items()):
        for p in sorted(ps, key=lambda p: p["seed"]):
            r, q = p["refit"], p["plain"]
            lines.append(f"| {model} | {budget} | {row} | {p['seed']} | {100 * r['test_before']:.2f} / "
                         f"{100 * q['test_before']:.2f} | {100 * r['finetuned_test']:.2f} | "
                         f"{100 * q['finetuned_test']:.2f} | {p['plain_minus_refit_pp']:+.2f} |")
        diffs = [p["plain_minus_refit_pp"] for p in ps]
        summary.append({"model": model, "budget": budget, "row": row, "n": len(ps),
                        "median_plain_minus_refit_pp": statistics.median(diffs), "diffs": diffs})
    lines += ["", "Median plain − refit (pp) per model, budget and row: " + "; ".join(
        f"{s['model']} {s['budget']} {s['row']} {s['median_plain_minus_refit_pp']:+.2f} over {s['n']} seed(s)"
        for s in summary) + "."]
    all_diffs = [d for s in summary for d in s["diffs"]]
    if all_diffs:
        lines += [f"All {len(all_diffs)} pairs: median {statistics.median(all_diffs):+.2f} pp, plain ahead in "
                  f"{sum(d > 0 for d in all_diffs)} of {len(all_diffs)}."]
    (out_dir / "finetune_start.md").write_text("\n".join(lines) + "\n")
    (out_dir / "finetune_start.json").write_text(json.dumps(jsonable({"parts": parts, "summary": summary}), indent=1) + "\n")
    print(f"wrote {out_dir / 'finetune_start.md'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.aggregate_only:
        for combo in args.combos:
            model, budget, seed = combo.split(":")
            for row in args.rows:
                dest = start_path(args.out_dir, model, budget, int(seed), row)
                if dest.exists():
                    continue
                src_file = part_path(args.out_dir, model, budget, int(seed), row)
                source = json.loads(src_file.read_text()) | {"source": str(src_file.relative_to(args.out_dir.parent.parent))}
                print(f"{model} {budget} s{seed} {row} ...", file=sys.stderr)
                t0, load = time.time(), os.getloadavg()
                body = one_part(args, source)
                body |= {"part_seconds": time.time() - t0, "loadavg_start": list(load), "loadavg_end": list(os.getloadavg()),
                         "code": code_info(Path(__file__).resolve().parents[1]), "machine": machine_info(args.device),
                         "command": "python bench/finetune_start.py " + " ".join(sys.argv[1:])}
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(json.dumps(jsonable(body), indent=1) + "\n")
                aggregate(args.out_dir)
    aggregate(args.out_dir)


if __name__ == "__main__":
    main()
