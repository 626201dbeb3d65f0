"""Search quality: every registered searcher against Torch-Pruning's own pruning, at the same MACs.

For each model and seed, every searcher in `autoprune.agents.REGISTRY` gets a fresh problem and
the same number of evaluations; its best policy is rebuilt and tested. Reference rows go through
the very same evaluator (adaptive BN on the same calibration batches, then the same held-out
split, then the test set): Torch-Pruning's global and uniform magnitude pruning, bisected to the
budget, and the unpruned model. Writes JSON (every run, curves, machine) and a Markdown table.

    python bench/search_quality.py --models resnet20 resnet56 --seeds 0 1 2 --evals 60 --budget 50%FLOPs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from autoprune import agents
from autoprune.budget import TOLERANCE
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.search_job import SearchConfig, Setup, build_setup

REFERENCES = ("tp-global", "tp-uniform")
COST_CALLS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--evals", type=int, default=60, help="evaluations per searcher (uniform/global stop after 1)")
    p.add_argument("--budget", default="50%FLOPs")
    p.add_argument("--weights", default=None, help="default: the shipped weights; 'random' for smoke tests")
    p.add_argument("--heldout", type=int, default=5000, help="held-out images carved from the training set")
    p.add_argument("--agents", nargs="+", default=agents.names(), help="searchers, default: all registered")
    p.add_argument("--device", default="auto")
    p.add_argument("--criterion", default="l2", help="channel importance for every row (autoprune's --criterion)")
    p.add_argument("--reconstruct", action="store_true", help="searcher rows refit pruned layers (--reconstruct)")
    p.add_argument("--fidelity", default="full", help="searcher rows' --fidelity (full or auto)")
    p.add_argument("--reconstruct-top", type=int, default=0,
                   help="with --reconstruct: 0 refits every candidate, K re-ranks the K best afterwards")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--calib-batches", type=int, default=20, help="adaptive-BN batches of 64 per evaluation")
    p.add_argument("--prune-stem", action="store_true",
                   help="let the stem's group be pruned (every row, tp-* included: they ignore the classifier only)")
    p.add_argument("--stem-max-ratio", type=float, default=0.0,
                   help="the stem's group pruned up to this ratio (searcher rows; tp-* rows as with --prune-stem)")
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="run nothing: combine these result JSONs (e.g. one process per agent) into one table")
    p.add_argument("--tag", default="", help="appended to the result file names, e.g. 300evals")
    p.add_argument("--agent-option", action="append", default=[], metavar="AGENT:KEY=VALUE",
                   help="a hyper-parameter of one agent, as `autoprune search --agent-option` (repeatable)")
    p.add_argument("--save-policies", type=Path, default=None,
                   help="folder for the trained policy of searchers that keep one (gnn): AGENT-MODEL-sSEED.pt")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default: torch's own, all cores unless OMP_NUM_THREADS says less")
    args = p.parse_args(argv)
    unknown = [a for a in args.agents if a not in agents.REGISTRY]
    if unknown:
        p.error(f"unknown agent {unknown[0]}: one of {', '.join(agents.names())}")
    return args


def make_setup(args: argparse.Namespace, model: str, seed: int, agent: str) -> Setup:
    """A fresh Setup, hence a fresh Problem: no agent sees another's evaluations.

    torch is seeded first so that with --weights random every agent of a seed prunes the same net.
    """
    torch.manual_seed(seed)
    pairs = [o.split(":", 1)[1] for o in args.agent_option if o.split(":", 1)[0] == agent]
    return build_setup(SearchConfig(model=model, budgets=[args.budget], agent=agent, evals=args.evals, seed=seed,
                                    weights=args.weights, heldout=args.heldout, device=args.device,
                                    criterion=args.criterion, calib_batches=args.calib_batches,
                                    prune_stem=args.prune_stem, stem_max_ratio=args.stem_max_ratio,
                                    reconstruct=args.reconstruct, reconstruct_top=args.reconstruct_top,
                                    fidelity=args.fidelity,
                                    agent_options=agents.parse_options(agent, pairs)))


def tp_count(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """(MACs, params) as Torch-Pruning's op counter sees them, batch 1, on the model's device."""
    example = torch.randn(1, *input_shape, device=next(model.parameters()).device)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


def cost_time_us(problem, ratios: np.ndarray, calls: int = COST_CALLS) -> float:
    """Mean wall time of one `problem.costs(ratios)` (every cost model), in microseconds."""
    start = time.perf_counter()
    for _ in range(calls):
        problem.costs(ratios)
    return (time.perf_counter() - start) / calls * 1e6


def best_so_far(problem) -> list[float]:
    """Held-out accuracy of the best policy found so far, after each evaluation (cache hits included)."""
    full = [-1.0 if r.partial else r.accuracy for r in problem.results]  # a partial score is never a best
    return [float(a) for a in np.maximum.accumulate(full)] if full else []


def run_searcher(setup: Setup, n_evals: int, seed: int) -> dict:
    """Run the setup's searcher for `n_evals` evaluations; score and test its best policy."""
    problem = setup.problem
    start = time.perf_counter()
    setup.searcher.search(problem, n_evals, seed=seed)
    best, reranked = problem.best, None
    if setup.config.reconstruct and setup.config.reconstruct_top and best is not None:
        from autoprune.outcome import rerank

        best, reranked = rerank(problem, setup.config.reconstruct_top)  # part of the search's time
    seconds = time.perf_counter() - start
    row = {"evaluations": problem.n_evals, "cached_evaluations": sum(r.cached for r in problem.results),
           "search_seconds": seconds, "evals_per_second": problem.n_evals / seconds if seconds else None,
           "overhead_share": problem.overhead_share(), "curve": best_so_far(problem),
           # the searcher's own time: proposing (models, samplers, projection), outside problem.evaluate
           "propose_seconds": seconds - sum(problem.timing.values()),
           "accuracies": [float(r.accuracy) for r in problem.results],
           "partial_evaluations": sum(r.partial for r in problem.results)}
    if getattr(setup.searcher, "report", None):  # e.g. metapruning's PruningNet training and proxy scoring
        row["searcher_report"] = setup.searcher.report
    if reranked is not None:
        row["reranked"] = reranked
    if best is None:
        return row
    pruned = problem.pruned_model(best.ratios)  # BN recalibrated on the evaluator's batches
    macs_tp, params_tp = tp_count(pruned, problem.space.graph.input_shape)
    return row | {
        "heldout": best.accuracy, "test": accuracy(pruned, setup.data.test, setup.device)["top1"],
        "macs": best.costs["macs"], "macs_fraction": best.costs["macs"] / problem.base_costs["macs"],
        "params": best.costs["params"], "params_fraction": best.costs["params"] / problem.base_costs["params"],
        "macs_tp": macs_tp, "params_tp": params_tp, "best_evaluation": best.index,
        "cost_us": cost_time_us(problem, best.ratios), "policy": problem.policy(best.ratios).ratios}


def unpruned_row(setup: Setup) -> dict:
    """The trained model as it is: no pruning, no BN recalibration."""
    model, device, problem = setup.bundle.model.to(setup.device), setup.device, setup.problem
    return {"heldout": accuracy(model, setup.data.heldout, device)["top1"],
            "test": accuracy(model, setup.data.test, device)["top1"],
            "macs": problem.base_costs["macs"], "macs_fraction": 1.0, "evaluations": 0,
            "params": problem.base_costs["params"], "params_fraction": 1.0}


def tp_reference(setup: Setup, global_pruning: bool) -> dict:
    """Torch-Pruning's MetaPruner (L1 group magnitude), pruning ratio bisected to the budget.

    The ratio is bisected until the budget's metric, as `tp.utils.count_ops_and_params` counts it,
    lies within autoprune's tolerance (0.5%) below the target. The pruned model is evaluated as
    Torch-Pruning left it -- not snapped to autoprune's grid -- through the problem's evaluator.
    """
    problem, graph = setup.problem, setup.problem.space.graph
    budget = problem.budgets.budgets[0]
    example = torch.randn(1, *graph.input_shape)

    def prune(ratio: float) -> tuple[torch.nn.Module, float, float]:
        model = copy.deepcopy(setup.bundle.model).cpu().eval()
        modules = dict(model.named_modules())
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=1 if setup.config.criterion == "l1" else 2),
            global_pruning=global_pruning,
            pruning_ratio=ratio, ignored_layers=[modules[n] for n in graph.ignored])
        pruner.step()
        return model, *tp_count(model, graph.input_shape)

    start = time.perf_counter()
    lo, hi, found, steps = 0.0, 0.99, None, 0
    for steps in range(1, 31):
        mid = (lo + hi) / 2
        model, macs, params = prune(mid)
        cost = macs if budget.metric == "macs" else params
        if cost <= budget.target:
            hi, found = mid, (mid, model, macs, params)
            if cost >= budget.target * (1 - TOLERANCE):
                break
        else:
            lo = mid
    if found is None:
        return {"evaluations": 0, "search_seconds": time.perf_counter() - start, "bisection_steps": steps}
    ratio, model, macs, params = found
    heldout = problem.evaluator(model)["top1"]  # adaptive BN + held-out, as every searcher's candidates
    seconds = time.perf_counter() - start
    base_macs, base_params = tp_count(copy.deepcopy(setup.bundle.model).cpu(), graph.input_shape)
    return {"heldout": heldout, "test": accuracy(model, setup.data.test, setup.device)["top1"],
            "macs": macs, "macs_fraction": macs / base_macs, "params": params, "params_fraction": params / base_params,
            "evaluations": 1, "search_seconds": seconds, "pruning_ratio": ratio, "bisection_steps": steps,
            "within_tolerance": (macs if budget.metric == "macs" else params) >= budget.target * (1 - TOLERANCE)}


def machine_info(device: str) -> dict:
    """What the timings were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "torch": torch.__version__, "torch_pruning": tp.__version__, "python": platform.python_version(),
            "commit": commit, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def summarise(runs: list[dict], model: str, row: str) -> dict:
    """Medians (and min/max of accuracies) over the seeds of one model and row."""
    rs = [r for r in runs if r["model"] == model and r["row"] == row]

    def values(key: str) -> list[float]:
        return [r[key] for r in rs if r.get(key) is not None]

    def med(key: str) -> float | None:
        v = values(key)
        return statistics.median(v) if v else None

    out = {"seeds": len(rs)}
    for key in ("heldout", "test"):
        v = values(key)
        out[key] = {"median": statistics.median(v), "min": min(v), "max": max(v)} if v else None
    for key in ("macs_fraction", "params_fraction", "search_seconds", "evals_per_second", "overhead_share", "cost_us"):
        out[key] = med(key)
    evals = values("evaluations")
    out["evaluations"] = (min(evals), max(evals)) if evals else None
    out["within_tolerance"] = all(values("within_tolerance"))  # tp-* rows only; True elsewhere
    return out


def margins(runs: list[dict], model: str, row: str, against: list[str]) -> list[str]:
    """'random − uniform +1.23 pp (wins 3/3 seeds)': difference of median held-out accuracies."""
    out = []
    mine = {r["seed"]: r.get("heldout") for r in runs if r["model"] == model and r["row"] == row}
    for other in against:
        theirs = {r["seed"]: r.get("heldout") for r in runs if r["model"] == model and r["row"] == other}
        pairs = [(mine[s], theirs[s]) for s in mine if mine[s] is not None and theirs.get(s) is not None]
        if not pairs:
            continue
        diff = statistics.median(a for a, _ in pairs) - statistics.median(b for _, b in pairs)
        out.append(f"{row} − {other} {100 * diff:+.2f} pp (wins {sum(a > b for a, b in pairs)}/{len(pairs)} seeds)")
    return out


def markdown(result: dict) -> str:
    """The per-model tables and margin lines."""
    args, runs = result["args"], result["runs"]

    def acc(s: dict | None) -> str:
        return f"{100 * s['median']:.2f} ({100 * s['min']:.2f}–{100 * s['max']:.2f})" if s else "–"

    def num(x: float | None, fmt: str) -> str:
        return format(x, fmt) if x is not None else "–"

    m = result["machine"]
    stem_note = f", stem group up to {args['stem_max_ratio']:g}" if args.get("stem_max_ratio") else ""
    lines = [f"# Search quality at {args['budget']}",
             "",
             f"`{result['command']}`",
             "",
             f"{args['evals']} evaluations per searcher, seeds {' '.join(map(str, args['seeds']))}, weights "
             f"{args['weights'] or 'shipped'}, held-out {args['heldout']} images, adaptive BN on "
             f"{args.get('calib_batches', 20)}×64 training images"
             f"{', stem group prunable' if args.get('prune_stem') else ''}"
             f"{stem_note}. {m['cpu']}, {m['torch_threads']} "
             f"torch threads, device {m['device']}, torch {m['torch']}, torch-pruning {m['torch_pruning']}, {m['date']}.",
             "Accuracies: median over seeds (min–max), top-1 %. Searchers and tp-* rows: adaptive BN, then scored; "
             "unpruned: as trained."]
    for model in args["models"]:
        lines += ["", f"## {model}", "",
                  "| row | held-out | test | MACs % | evals | wall s | evals/s | overhead | cost µs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in result["rows"]:
            s = result["summary"][model][row]
            ev = s["evaluations"]
            evals = "–" if ev is None else str(ev[0]) if ev[0] == ev[1] else f"{ev[0]}–{ev[1]}"
            macs = num(100 * s["macs_fraction"] if s["macs_fraction"] is not None else None, ".2f")
            macs += "" if s["within_tolerance"] else " *"
            lines.append(f"| {row} | {acc(s['heldout'])} | {acc(s['test'])} | {macs} | {evals} | "
                         f"{num(s['search_seconds'], '.1f')} | {num(s['evals_per_second'], '.2f')} | "
                         f"{num(s['overhead_share'], '.1%')} | {num(s['cost_us'], '.1f')} |")
        if not all(result["summary"][model][row]["within_tolerance"] for row in result["rows"]):
            lines += ["", f"\\* Torch-Pruning's ratio steps could not land within {TOLERANCE:.1%} below the "
                      "budget for some seed: it ends further below (a handicap for that row)."]
        if "random" in result["rows"]:
            against = [r for r in ("uniform", "global", *REFERENCES) if r in result["rows"]]
            lines += ["", "Margins (median held-out): " + "; ".join(margins(runs, model, "random", against))]
        lines += curve_lines(runs, model, [r for r in result["rows"] if r not in ("unpruned", *REFERENCES)],
                             args["evals"])
        lines += report_lines(runs, model)
    return "\n".join(lines) + "\n"


def report_lines(runs: list[dict], model: str) -> list[str]:
    """What a searcher spent outside its evaluations (metapruning: PruningNet training and proxy scoring)."""
    lines = []
    for r in runs:
        rep = r.get("searcher_report") if r["model"] == model else None
        if not rep:
            continue
        pn, evo = rep.get("pruningnet", {}), rep.get("evolution", {})
        epochs = rep.get("training", {}).get("history", [])
        lines.append(f"- {r['row']} seed {r['seed']}: PruningNet "
                     + (f"reused from {pn['reused']}" if pn.get("reused") else
                        f"trained {pn.get('epochs')} epochs in {pn.get('train_seconds', 0):.0f} s ("
                        + ", ".join(f"{e['seconds']:.0f} s" for e in epochs) + " per epoch)")
                     + f"; {evo.get('candidates')} candidates scored with its weights in {evo.get('seconds', 0):.0f} s "
                     f"(best {100 * (evo.get('best_pruningnet_accuracy') or 0):.2f}); search {r['search_seconds']:.0f} s "
                     "in all")
    return ["", "Outside the evaluations:", "", *lines] if lines else []


CURVE_POINTS = (10, 25, 50, 100, 150, 200, 300, 500, 1000)


def curve_lines(runs: list[dict], model: str, rows: list[str], evals: int) -> list[str]:
    """Median best-so-far held-out accuracy after k evaluations, per searcher; and when a learner passes random.

    A searcher that stopped early (uniform, global) keeps its final value.
    """
    points = [k for k in CURVE_POINTS if k < evals] + [evals]
    curves = {row: [r["curve"] for r in runs if r["model"] == model and r["row"] == row and r.get("curve")]
              for row in rows}
    curves = {row: c for row, c in curves.items() if c}
    if not curves:
        return []
    lines = ["", "Best held-out accuracy so far after k evaluations (median over seeds):", "",
             "| row | " + " | ".join(f"k={k}" for k in points) + " |", "|---|" + "---|" * len(points)]
    for row, cs in curves.items():
        cells = [100 * statistics.median(c[min(k, len(c)) - 1] for c in cs) for k in points]
        lines.append(f"| {row} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    if "random" in curves:
        random_best = {r["seed"]: max(r["curve"]) for r in runs
                       if r["model"] == model and r["row"] == "random" and r.get("curve")}
        for row in curves:
            if row in ("random", "uniform", "global"):
                continue
            passes = []
            for r in runs:
                if r["model"] == model and r["row"] == row and r.get("curve") and r["seed"] in random_best:
                    k = next((i + 1 for i, a in enumerate(r["curve"]) if a > random_best[r["seed"]]), None)
                    passes.append(f"seed {r['seed']}: " + (f"{k}" if k else "never"))
            lines += ["", f"Evaluations {row} needed to pass random's best of the same seed: " + "; ".join(passes)]
            halves = [(np.mean(r["accuracies"][:len(r["accuracies"]) // 3]), np.mean(r["accuracies"][-len(r["accuracies"]) // 3:]))
                      for r in runs if r["model"] == model and r["row"] == row and len(r.get("accuracies", [])) >= 3]
            if halves:  # learning shows as later candidates scoring better than the first ones
                lines += [f"Mean held-out accuracy of {row}'s candidates, first third → last third: " + "; ".join(
                    f"{100 * a:.2f} → {100 * b:.2f}" for a, b in halves)]
    return lines


def save_result(out_dir: Path, stem: str, result: dict, md: str) -> None:
    """`stem`.json (the whole result) and `stem`.md (its table) under `out_dir`; the table also printed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(jsonable(result), indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(md)
    print(md)


def jsonable(obj):
    """numpy scalars, tuples and paths to plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: list[dict] = []
    device = None
    for model in args.models:
        for seed in args.seeds:
            setup = None
            for agent in args.agents:
                setup = make_setup(args, model, seed, agent)
                device = str(setup.device)
                if args.save_policies and getattr(setup.searcher, "checkpoint_file", None):
                    args.save_policies.mkdir(parents=True, exist_ok=True)
                    setup.searcher.checkpoint_path = args.save_policies / f"{agent}-{model}-s{seed}.pt"
                print(f"{model} seed {seed}: {agent} ...", file=sys.stderr, flush=True)
                runs.append({"model": model, "seed": seed, "row": agent, "kind": "searcher",
                             **run_searcher(setup, args.evals, seed)})
            # References use the last agent's setup only for its model, data, evaluator and budget.
            print(f"{model} seed {seed}: references ...", file=sys.stderr, flush=True)
            runs.append({"model": model, "seed": seed, "row": "unpruned", "kind": "reference", **unpruned_row(setup)})
            for ref in REFERENCES:
                runs.append({"model": model, "seed": seed, "row": ref, "kind": "reference",
                             **tp_reference(setup, global_pruning=ref == "tp-global")})
            write_results(args, argv, runs, device, final=False)
    return write_results(args, argv, runs, device, final=True)


def merge(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """One table from several result files; the first file's args (budget, evals, held-out) stand for all.

    Runs are keyed by (model, seed, row): reference rows that several processes computed are kept once.
    """
    results = [json.loads(f.read_text()) for f in args.merge]
    runs, seen = [], set()
    for res in results:
        for r in res["runs"]:
            key = (r["model"], r["seed"], r["row"])
            if key not in seen:
                seen.add(key)
                runs.append(r)
    first = results[0]["args"]
    for key in ("budget", "evals", "heldout", "criterion", "weights", "calib_batches", "prune_stem", "stem_max_ratio",
                "reconstruct", "reconstruct_top", "fidelity"):
        setattr(args, key, first.get(key, getattr(args, key)))
    args.models = list(dict.fromkeys(r["model"] for r in runs))
    args.seeds = sorted({r["seed"] for r in runs})
    args.agents = list(dict.fromkeys(r["row"] for r in runs if r["kind"] == "searcher"))
    args.threads = results[0]["machine"]["torch_threads"]
    out = write_results(args, argv, runs, results[0]["machine"]["device"], final=True)
    return out


def write_results(args: argparse.Namespace, argv: list[str] | None, runs: list[dict], device: str | None,
                  final: bool) -> dict:
    """Summarise the runs so far and write JSON + Markdown (after every seed, so a stopped run keeps its rows)."""
    rows = ["unpruned", *args.agents, *REFERENCES]
    done = sorted({(r["model"], r["seed"]) for r in runs})
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: v for k, v in vars(args).items()},
        "complete": final,
        "done": done,
        "machine": machine_info(device or args.device) | ({"merged_from": [str(f) for f in args.merge]}
                                                          if args.merge else {}),
        "rows": rows,
        "summary": {m: {row: summarise(runs, m, row) for row in rows} for m in args.models
                    if any(d[0] == m for d in done)},
        "runs": runs,
    }
    result = jsonable(result)
    result["args"]["models"] = [m for m in args.models if m in result["summary"]]
    md = markdown(result)
    if not final:
        md = md.replace("\n", f"\n\nPARTIAL: stopped after {len(done)} (model, seed) passes.\n", 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^\w.-]+", "", args.budget.replace("%", "pct"))
    tag = f"-{args.tag}" if args.tag else ""
    stem = str(args.out_dir / f"search_quality-{slug}-{'-'.join(args.models)}-{args.criterion}{tag}")
    Path(stem + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(stem + ".md").write_text(md)
    if final:
        print(md)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # bad input (unknown model, missing weights, infeasible budget): one line
        sys.exit(f"error: {exc}")
