"""GNN policy transfer: a gnn policy trained on one network warm-starts the search on another.

For each seed, the policy that `search_quality.py --agents gnn --save-policies DIR` trained on the
source network (DIR/gnn-SOURCE-sSEED.pt) starts a gnn search on the target network for `--evals`
evaluations, with the same evaluator settings as the cold runs it is compared with. From the cold
result files (search_quality JSONs holding the target's gnn and random rows at their evaluation
count) it reports, per seed, how many evaluations the warm search needed to reach the cold gnn
search's best and random search's best, and the best-so-far curves side by side.

    python bench/gnn_transfer.py --source resnet20 --target resnet56 --policies bench/results/parts/gnn-policies \
        --cold bench/results/search_quality-50pctFLOPs-resnet56-l2-300evals-gnn.json \
               bench/results/search_quality-50pctFLOPs-resnet56-l2-300evals-w30.json \
        --seeds 0 1 2 --evals 150 --heldout 1000 --calib-batches 10 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import CURVE_POINTS, jsonable, machine_info, run_searcher  # noqa: E402

from autoprune.search_job import SearchConfig, build_setup  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="resnet20")
    p.add_argument("--target", default="resnet56")
    p.add_argument("--policies", type=Path, required=True, help="folder of gnn-SOURCE-sSEED.pt")
    p.add_argument("--cold", nargs="+", type=Path, required=True, help="search_quality JSONs with the cold rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--evals", type=int, default=150)
    p.add_argument("--budget", default="50%FLOPs")
    p.add_argument("--weights", default=None)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def cold_curves(files: list[Path], model: str) -> dict[tuple[str, int], list[float]]:
    """(row, seed) -> best-so-far curve of the target's cold runs, from every given result file."""
    out = {}
    for f in files:
        for r in json.loads(f.read_text())["runs"]:
            if r["model"] == model and r.get("curve"):
                out.setdefault((r["row"], r["seed"]), r["curve"])
    return out


def reached(curve: list[float], target: float) -> int | None:
    """Evaluations until the best-so-far first reaches `target` (1-based), None if never."""
    return next((i + 1 for i, a in enumerate(curve) if a >= target - 1e-12), None)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cold = cold_curves(args.cold, args.target)
    rows = []
    for seed in args.seeds:
        policy = args.policies / f"gnn-{args.source}-s{seed}.pt"
        torch.manual_seed(seed)
        setup = build_setup(SearchConfig(model=args.target, budgets=[args.budget], agent="gnn", evals=args.evals,
                                         seed=seed, weights=args.weights, heldout=args.heldout,
                                         calib_batches=args.calib_batches, init_from=policy))
        print(f"{args.target} seed {seed}: gnn warm-started from {policy} ...", file=sys.stderr, flush=True)
        run = run_searcher(setup, args.evals, seed)
        warm = run["curve"]
        row = {"seed": seed, "policy": str(policy), "warm": run}
        for ref in ("gnn", "random"):
            curve = cold.get((ref, seed))
            if curve:
                best = max(curve)
                row[f"cold_{ref}"] = {"evaluations": len(curve), "best": best, "best_at": reached(curve, best),
                                      "warm_reached_at": reached(warm, best)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "warm"}, indent=1), file=sys.stderr)
    result = jsonable({"command": "python bench/gnn_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "args": vars(args), "machine": machine_info("cpu"), "rows": rows})
    stem = args.out_dir / f"gnn_transfer-{args.source}-to-{args.target}{'-' + args.tag if args.tag else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(result, cold))
    print(markdown(result, cold))
    return result


def markdown(result: dict, cold: dict) -> str:
    a = result["args"]
    lines = [f"# GNN transfer: {a['source']} -> {a['target']} at {a['budget']}", "", f"`{result['command']}`", "",
             f"Warm: gnn on {a['target']} starting from the policy trained by the cold gnn search on {a['source']} "
             f"(same seed), {a['evals']} evaluations; held-out {a['heldout']}, BN {a['calib_batches']}x64, "
             f"{a['threads']} thread(s). Cold rows from {', '.join(Path(f).name for f in a['cold'])}.", "",
             "| seed | warm best | cold gnn best (at eval) | warm reached it at | random best | warm reached it at |",
             "|---|---|---|---|---|---|"]
    def reach(d: dict) -> str:
        return "–" if not d else "never" if d["warm_reached_at"] is None else str(d["warm_reached_at"])

    for r in result["rows"]:
        g, rnd = r.get("cold_gnn", {}), r.get("cold_random", {})
        cold_gnn = f"{100 * g['best']:.2f} ({g['best_at']}/{g['evaluations']})" if g else "–"
        random_best = f"{100 * rnd['best']:.2f}" if rnd else "–"
        lines.append(f"| {r['seed']} | {100 * r['warm']['heldout']:.2f} | {cold_gnn} | {reach(g)} | {random_best} | "
                     f"{reach(rnd)} |")
    points = [k for k in CURVE_POINTS if k < a["evals"]] + [a["evals"]]
    lines += ["", "Best held-out accuracy so far after k evaluations (median over seeds):", "",
              "| row | " + " | ".join(f"k={k}" for k in points) + " |", "|---|" + "---|" * len(points)]
    curves = {"gnn warm": [r["warm"]["curve"] for r in result["rows"]]}
    for ref in ("gnn", "random"):
        cs = [cold[(ref, r["seed"])] for r in result["rows"] if (ref, r["seed"]) in cold]
        if cs:
            curves[f"{ref} cold"] = cs
    for name, cs in curves.items():
        cells = [100 * statistics.median(c[min(k, len(c)) - 1] for c in cs) for k in points]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
