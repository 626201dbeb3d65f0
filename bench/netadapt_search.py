"""NetAdapt's point, searched: at the same measured latency, does a latency budget find a more accurate model
than a FLOPs budget?

For each seed: search under a FLOPs budget (50% by default) and time its best policy on this CPU,
interleaved with the unpruned model. Then run the same searcher, for the same number of evaluations, under
a latency budget set to that measured latency fraction. The budget is scored by the profiled lookup table, as
`autoprune search --budget 84%latency` would score it. Two latency rows come from that search: "latency",
the table's best as is, and "latency+check", what `autoprune search` returns by default (the best of up to
--verify candidates whose measured latency meets the budget, autoprune/verify.py). Every row reports
held-out and test accuracy, FLOPs, measured and table-predicted latency. Medians are taken over seeds.

    python bench/netadapt_search.py --model resnet56 --seeds 0 1 2 --evals 60 --agent random
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from autoprune.evaluate import accuracy
from autoprune.search_job import SearchConfig, build_setup
from autoprune.verify import timed_against_base, verify_latency

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info, run_searcher, save_result  # noqa: E402


ARMS = ("flops", "latency", "latency+check")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--evals", type=int, default=60)
    p.add_argument("--agent", default="random")
    p.add_argument("--flops-budget", default="50%FLOPs")
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads for evaluation, profiling and timing")
    p.add_argument("--measure-seconds", type=float, default=2.0, help="timing span per measured policy")
    p.add_argument("--verify", type=int, default=10, help="candidates the measured check may time (search's default)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def measure(problem, ratios: np.ndarray, base_model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Latency of the pruned model over the unpruned one, timed interleaved, median of 3 such timings.

    One timing on a busy machine can be far off (a ResNet-56 policy once timed at 144% of the unpruned
    model and at 81-83% three times after), and the FLOPs row's timing sets the latency row's budget.
    """
    t = timed_against_base(problem, ratios, base_model, threads=args.threads, min_seconds=args.measure_seconds)
    return {"measured_ms": t["measured_ms"], "unpruned_alongside_ms": t["unpruned_alongside_ms"],
            "latency_fraction": t["measured_fraction"], "speedup": 1 / t["measured_fraction"]}


def run_arm(args: argparse.Namespace, seed: int, budget: str, table: Path) -> list[dict]:
    """The searcher's best under `budget`; under a latency budget also the best that passes the measured check."""
    torch.manual_seed(seed)
    cfg = SearchConfig(model=args.model, budgets=[budget], agent=args.agent, evals=args.evals, seed=seed,
                       heldout=args.heldout, calib_batches=args.calib_batches, device="cpu", threads=args.threads,
                       latency_table=table)
    setup = build_setup(cfg)
    row = run_searcher(setup, args.evals, seed)
    problem = setup.problem
    row |= {"budget": budget, "seed": seed} | measure(problem, problem.best.ratios,
                                                        copy.deepcopy(problem.model), args)
    if "latency_ms" not in problem.best.costs:
        return [row | {"arm": "flops"}]
    row["predicted_latency_fraction"] = problem.best.costs["latency_ms"] / problem.base_costs["latency_ms"]
    # what `autoprune search` returns by default: the best candidate whose measured latency meets the budget
    chosen, report = verify_latency(problem, problem.model, top=args.verify, threads=args.threads,
                                    min_seconds=args.measure_seconds)
    kept = report["chosen"]  # the returned candidate's own timing (the search's best when none passed)
    checked = {"heldout": chosen.accuracy, "macs_fraction": chosen.costs["macs"] / problem.base_costs["macs"],
               "test": accuracy(problem.pruned_model(chosen.ratios), setup.data.test, setup.device)["top1"],
               "best_evaluation": chosen.index, "budget": budget, "seed": seed, "verification": report,
               "predicted_latency_fraction": chosen.costs["latency_ms"] / problem.base_costs["latency_ms"],
               "measured_ms": kept["measured_ms"], "unpruned_alongside_ms": kept["unpruned_alongside_ms"],
               "latency_fraction": kept["measured_fraction"], "speedup": 1 / kept["measured_fraction"]}
    return [row | {"arm": "latency"}, checked | {"arm": "latency+check"}]


def summary(runs: list[dict]) -> dict:
    keys = ["heldout", "test", "macs_fraction", "latency_fraction", "speedup"]
    return {k: float(np.median([r[k] for r in runs])) for k in keys} | {"n": len(runs)}


def markdown(result: dict) -> str:
    a, m = result["args"], result["machine"]
    lines = [f"# NetAdapt point: FLOPs budget vs latency budget at the same measured latency ({a['model']})", "",
             f"`{result['command']}`", "",
             f"{a['agent']}, {a['evals']} evaluations per search, seeds {' '.join(map(str, a['seeds']))}, held-out "
             f"{a['heldout']} images, adaptive BN on {a['calib_batches']}×64. Latency: CPU, batch 1, {a['threads']} "
             f"thread(s), each best policy timed interleaved with the unpruned model. {m['cpu']}, torch {m['torch']}, "
             f"{m['date']}.", "",
             "Per seed the latency arm's budget is the FLOPs arm's measured latency fraction.", "",
             "| seed | arm | budget | held-out | test | FLOPs % | measured latency % | table latency % | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        table = f"{r['predicted_latency_fraction']:.1%}" if "predicted_latency_fraction" in r else "–"
        lines.append(f"| {r['seed']} | {r['arm']} | {r['budget']} | {r['heldout']:.2%} | {r['test']:.2%} | "
                     f"{r['macs_fraction']:.1%} | {r['latency_fraction']:.1%} | {table} | {r['speedup']:.2f}x |")
    lines += ["", "Median over seeds:", "", "| arm | held-out | test | FLOPs % | measured latency % | speedup |",
              "|---|---|---|---|---|---|"]
    for arm, s in result["summary"].items():
        lines.append(f"| {arm} | {s['heldout']:.2%} | {s['test']:.2%} | {s['macs_fraction']:.1%} | "
                     f"{s['latency_fraction']:.1%} | {s['speedup']:.2f}x |")
    f = result["summary"]["flops"]
    for arm in ARMS[1:]:
        lat = result["summary"][arm]
        lines += ["", f"{arm} − flops: held-out {100 * (lat['heldout'] - f['heldout']):+.2f} pp, measured latency "
                      f"{100 * (lat['latency_fraction'] - f['latency_fraction']):+.1f} pp of the unpruned."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / f"{args.model}-latency.json"  # profiled once, by the first latency arm
        for seed in args.seeds:
            (flops,) = run_arm(args, seed, args.flops_budget, table)
            latency_budget = f"{100 * flops['latency_fraction']:.3g}%latency"
            rows = [flops, *run_arm(args, seed, latency_budget, table)]
            runs += rows
            for r in rows:
                print(f"seed {seed} {r['arm']:7s} {r['budget']:>14s}: held-out {r['heldout']:.4f}, FLOPs "
                      f"{r['macs_fraction']:.1%}, measured latency {r['latency_fraction']:.1%}", file=sys.stderr)
    result = {"command": " ".join(["python", "bench/netadapt_search.py", *(argv or sys.argv[1:])]),
              "args": jsonable(vars(args)), "machine": machine_info("cpu"), "runs": runs,
              "summary": {arm: summary([r for r in runs if r["arm"] == arm]) for arm in ARMS}}
    stem = f"netadapt_search-{args.model}-{args.agent}{'-' + args.tag if args.tag else ''}"
    save_result(args.out_dir, stem, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
