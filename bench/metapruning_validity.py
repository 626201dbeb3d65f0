"""Does a PruningNet rank candidates honestly? MetaPruning's premise, measured.

For `--random` random policies at the budget plus the `--top` best of an evolution scored with the
PruningNet (all distinct), three numbers per policy:
  (a) held-out accuracy with PruningNet-generated weights, after adaptive BN (the metapruning fitness);
  (b) held-out accuracy of the pretrained model physically pruned, after adaptive BN (every other
      searcher's fitness, `problem.score`);
  (c) test accuracy of (b)'s model after the same short fine-tune (`--finetune-images` training
      images, one epoch, SGD cosine from `--finetune-lr`): what a user gets after fine-tuning;
  (d) (b) with the least-squares refit of `--reconstruct` before adaptive BN.
Reports Spearman's rank correlation of (a), (b) and (d) with (c), and the PruningNet's training time
per epoch. The PruningNet is trained here (or loaded with --pruningnet) with the searcher's code.

    python bench/metapruning_validity.py --model resnet20 --epochs 2 --random 20 --top 10 --threads 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info  # noqa: E402

from autoprune.agents.evolution import evolve  # noqa: E402
from autoprune.evaluate import accuracy  # noqa: E402
from autoprune.search_job import SearchConfig, build_setup  # noqa: E402
from autoprune.train import TrainConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budget", default="50%FLOPs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2, help="PruningNet training epochs")
    p.add_argument("--pruningnet", type=Path, default=None, help="reuse a trained PruningNet instead")
    p.add_argument("--random", type=int, default=20)
    p.add_argument("--top", type=int, default=10, help="best of the PruningNet-scored evolution")
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--finetune-images", type=int, default=10000)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = build_setup(SearchConfig(model=args.model, budgets=[args.budget], agent="metapruning", seed=args.seed,
                                     heldout=args.heldout, calib_batches=args.calib_batches,
                                     agent_options={"pruningnet_epochs": args.epochs, "pruningnet": args.pruningnet}))
    problem, searcher, data = setup.problem, setup.searcher, setup.data
    args.out_dir.mkdir(parents=True, exist_ok=True)
    searcher.checkpoint_path = args.out_dir / "parts" / f"pruningnet-{args.model}-s{args.seed}.pt"
    searcher.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    searcher.pnet = searcher._pruningnet(problem, args.seed)
    train_seconds = time.perf_counter() - t
    searcher.pnet.eval()
    print(f"PruningNet ready in {train_seconds:.0f} s", file=sys.stderr, flush=True)

    rng = np.random.default_rng(args.seed + 100)
    random = [problem.project(rng.uniform(0, problem.space.max_ratios), rng) for _ in range(args.random)]
    ranked = evolve(problem, lambda b: searcher.score(problem, b), args.population * args.generations, seed=args.seed,
                    population=args.population, generations=args.generations)
    policies, keys = [], set()
    for r in random + [r for _, r in ranked[:args.top]]:
        key = problem.policy(r).key()
        if key not in keys:
            keys.add(key)
            policies.append(r)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))[:args.finetune_images]
    short = dataclasses.replace(data, train=data.train.subset(idx))
    rows = []
    for i, r in enumerate(policies):
        pnet_acc = searcher.score(problem, [r])[0]
        pruned = problem.pruned_model(r)  # physical pruning + adaptive BN
        bn_acc = problem.evaluator(pruned, recalibrate=False)["top1"]
        problem.use_reconstruction()  # the same, refitted by least squares first (--reconstruct)
        rec_acc = problem.score(r)[0]["top1"]
        problem.use_reconstruction(False)
        t0 = time.perf_counter()
        train(pruned, short, TrainConfig(epochs=1, lr=args.finetune_lr, schedule="cosine", seed=args.seed),
              setup.device)
        rows.append({"source": "random" if i < len(random) else "evolution", "ratios": [float(x) for x in r],
                     "pruningnet_heldout": pnet_acc, "adaptive_bn_heldout": bn_acc, "reconstructed_heldout": rec_acc,
                     "finetuned_test": accuracy(pruned, data.test, setup.device)["top1"],
                     "finetune_seconds": time.perf_counter() - t0})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "ratios"}), file=sys.stderr, flush=True)
    a, b, c, d = (np.array([row[k] for row in rows]) for k in ("pruningnet_heldout", "adaptive_bn_heldout",
                                                               "finetuned_test", "reconstructed_heldout"))
    history = searcher.report.get("training", {}).get("history", [])
    result = jsonable({
        "command": "python bench/metapruning_validity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args), "machine": machine_info(str(setup.device)), "policies": len(rows),
        "pruningnet_seconds": train_seconds, "pruningnet_epoch_seconds": [h["seconds"] for h in history],
        "spearman": {"pruningnet_vs_finetuned": float(spearmanr(a, c)[0]),
                     "adaptive_bn_vs_finetuned": float(spearmanr(b, c)[0]),
                     "reconstructed_vs_finetuned": float(spearmanr(d, c)[0]),
                     "pruningnet_vs_adaptive_bn": float(spearmanr(a, b)[0])},
        "rows": rows})
    stem = args.out_dir / f"metapruning_validity-{args.model}-s{args.seed}"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    Path(f"{stem}.md").write_text(md)
    print(md)
    return result


def markdown(result: dict) -> str:
    a, s = result["args"], result["spearman"]
    epochs = ", ".join(f"{x:.0f} s" for x in result["pruningnet_epoch_seconds"]) or "loaded, not trained"
    lines = [f"# Does the PruningNet rank candidates honestly? {a['model']}, {a['budget']}, seed {a['seed']}", "",
             f"`{result['command']}`", "",
             f"{result['policies']} policies ({a['random']} random, the rest the best of a PruningNet-scored "
             f"evolution, population {a['population']} x {a['generations']} generations); held-out {a['heldout']}, "
             f"BN {a['calib_batches']}x64, {a['threads']} threads. PruningNet: {a['epochs']} epochs ({epochs} per "
             f"epoch). Fine-tune: 1 epoch on {a['finetune_images']} training images, SGD cosine from "
             f"{a['finetune_lr']}.", "",
             "| Spearman | with fine-tuned test accuracy |", "|---|---|",
             f"| PruningNet-scored held-out (metapruning's fitness) | {s['pruningnet_vs_finetuned']:.3f} |",
             f"| pretrained, pruned, adaptive BN held-out (every other searcher's) | {s['adaptive_bn_vs_finetuned']:.3f} |",
             f"| the same, refitted by least squares first (`--reconstruct`) | {s['reconstructed_vs_finetuned']:.3f} |",
             "", f"PruningNet vs adaptive BN: {s['pruningnet_vs_adaptive_bn']:.3f}.", "",
             "| source | PruningNet held-out | adaptive-BN held-out | reconstructed held-out | fine-tuned test |",
             "|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: -r["finetuned_test"]):
        lines.append(f"| {r['source']} | {100 * r['pruningnet_heldout']:.2f} | {100 * r['adaptive_bn_heldout']:.2f} | "
                     f"{100 * r['reconstructed_heldout']:.2f} | {100 * r['finetuned_test']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
