"""Evaluation throughput of one search with 1 and with N Ray workers (each worker on its own threads).

The same deterministic proposer (EagleEye random search, same seed) runs once per worker count;
the table gives evaluations per second, the speed-up over one worker, the workers' start-up time
(kept apart: it is paid once per search) and whether the runs evaluated the same policies.

    python bench/workers_throughput.py --model resnet56 --workers 1 2 --evals 24 --threads 1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info  # noqa: E402  (same machine record as the other bench)

from autoprune.search_job import SearchConfig, build_setup  # noqa: E402
from autoprune.workers import WorkerPool  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--budget", default="50%FLOPs")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--evals", type=int, default=24)
    p.add_argument("--heldout", type=int, default=5000)
    p.add_argument("--calib-batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (and of the 1-worker run)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)  # one row, JSON on stdout
    return p.parse_args(argv)


def run(args: argparse.Namespace, workers: int) -> dict:
    cfg = SearchConfig(model=args.model, budgets=[args.budget], agent="random", evals=args.evals, seed=0,
                       heldout=args.heldout, calib_batches=args.calib_batches, workers=workers)
    setup = build_setup(cfg)
    problem = setup.problem
    startup = 0.0
    pool = None
    if workers > 1:
        t = time.perf_counter()
        pool = WorkerPool(cfg, workers, threads=args.threads)
        pool.score([problem.space.snap(problem.space.max_ratios * 0)] * workers)  # wait until every actor is up
        startup = time.perf_counter() - t
    else:
        torch.set_num_threads(args.threads)
    try:
        t = time.perf_counter()
        with problem.scoring_on(pool):  # pool None: in this process
            setup.searcher.search(problem, args.evals, seed=0)
        seconds = time.perf_counter() - t
    finally:
        if pool is not None:
            pool.close()
    return {"workers": workers, "threads_per_worker": args.threads, "evaluations": problem.n_evals,
            "seconds": seconds, "evals_per_second": problem.n_evals / seconds, "startup_seconds": startup,
            "keys": [r.key for r in problem.results], "accuracies": [r.accuracy for r in problem.results]}


def run_in_fresh_process(argv: list[str], workers: int) -> dict:
    """One row in its own interpreter: no thread pools, Ray session or caches carried between rows."""
    out = subprocess.run([sys.executable, __file__, *argv, "--single", str(workers)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.single is not None:
        print(json.dumps(jsonable(run(args, args.single))))
        return {}
    rows = [run_in_fresh_process(argv, w) for w in args.workers]
    base = rows[0]["evals_per_second"]
    for r in rows:
        r["speedup"] = r["evals_per_second"] / base
        r["same_policies_as_first"] = r["keys"] == rows[0]["keys"]
        r["max_accuracy_difference"] = max(abs(a - b) for a, b in zip(r["accuracies"], rows[0]["accuracies"]))
    result = jsonable({"command": "python " + " ".join(sys.argv), "args": vars(args),
                       "machine": machine_info("cpu"), "rows": rows})
    lines = [f"# Evaluation throughput with Ray workers: {args.model}, {args.budget}", "",
             f"`{result['command']}`", "",
             f"{args.evals} evaluations of EagleEye random search (seed 0), held-out {args.heldout} images, "
             f"adaptive BN on {args.calib_batches}×64. {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['date']}.", "",
             "| workers | threads each | evals/s | speed-up | start-up s | same policies | max acc. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['threads_per_worker']} | {r['evals_per_second']:.3f} | "
                     f"{r['speedup']:.2f}× | {r['startup_seconds']:.1f} | {r['same_policies_as_first']} | "
                     f"{r['max_accuracy_difference']:.4f} |")
    md = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"workers_throughput-{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
