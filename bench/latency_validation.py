"""Latency validation: the lookup table's predictions against measured latency of real pruned models.

For each model: profile a latency table (timed), draw random policies projected onto random FLOPs
targets (30-90% by default), and for each compare the table's prediction with the measured
latency of the physically pruned model (same timing routine, same threads). Reports the share of
predictions within ±10%, MAPE, Spearman's rank correlation, and the same for the naive
"latency proportional to FLOPs" predictor. The NetAdapt point (ResNet-56): measured speedup of
50%-FLOPs policies (uniform, random, and the searched ones checked in under bench/results) over
the unpruned model, and what policies projected onto a latency budget instead give.
Writes JSON (every policy, machine, profile) and a Markdown summary.

    python bench/latency_validation.py --threads 1 --policies 50
    python bench/latency_validation.py --models resnet20 --policies 10      # small check
    python bench/latency_validation.py --threads 1 --policies 50 --load 2 --tag loaded

`--load N` starts N background processes that alternate busy and idle spells (0.2-2 s each, seeded)
while each table is profiled, and stops them before any policy is measured: a table profiled on a
busy machine, judged against quiet truth. Every prediction is also checked against the table's
measured floor (the thinnest policy the space allows, timed whole).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.budget import Budget, BudgetSet, parse_budget
from autoprune.cost.lut import LatencyTableCost
from autoprune.cost.measured import median_latencies_ms
from autoprune.cost.profile import ProfileSettings, profile_latency
from autoprune.graph import build_graph
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import SMALL_MODELS, build_model, shipped_weights

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info, save_result  # noqa: E402

# name -> (input shape, classes); torchvision nets at ImageNet size with random weights
MODELS = {"resnet20": ((1, 28, 28), 10), "resnet56": ((1, 28, 28), 10), "mobilenetv2": ((1, 28, 28), 10),
          "resnet18": ((3, 224, 224), 1000)}
SEARCHED = Path(__file__).parent / "results" / "search_quality-50pctFLOPs-resnet56-l2.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--policies", type=int, default=50, help="random policies per model")
    p.add_argument("--flops", nargs=2, type=float, default=[0.3, 0.9], help="range of FLOPs targets (fractions)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid", type=int, default=8, help="table grid points per prunable axis")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per measured policy (median), at least")
    p.add_argument("--measure-seconds", type=float, default=2.0,
                   help="each measured policy's runs are spread over at least this long (fast and slow spells)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where tables go; default a fresh temporary folder, so profiling is timed from scratch")
    p.add_argument("--netadapt", type=int, default=10,
                   help="random policies per arm of the ResNet-56 speedup comparison (0: skip it)")
    p.add_argument("--speedup", type=float, default=1.6, help="latency target of the latency-budgeted arm")
    p.add_argument("--load", type=int, default=0,
                   help="background processes alternating busy/idle spells while profiling (0: a quiet profile)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def _spells(seed: int, stop) -> None:
    """Busy for 0.2-2 s, idle for 0.2-2 s, until told to stop: the slow spells of a shared machine."""
    rng = random.Random(seed)
    while not stop.is_set():
        until = time.perf_counter() + rng.uniform(0.2, 2.0)
        while time.perf_counter() < until:
            pass
        stop.wait(rng.uniform(0.2, 2.0))


@contextlib.contextmanager
def background_load(n: int, seed: int):
    """`n` processes of busy/idle spells for the duration of the block (nothing when n is 0)."""
    if n <= 0:
        yield
        return
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spells, args=(seed + i, stop), daemon=True) for i in range(n)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()


def setup_model(name: str) -> tuple[torch.nn.Module, ChannelSpace, str]:
    shape, classes = MODELS[name]
    weights = None if name in SMALL_MODELS and shipped_weights(name, "fashion-mnist") else "random"
    bundle = build_model(name, num_classes=classes, in_channels=shape[0], dataset="fashion-mnist",
                         weights=weights)
    graph = build_graph(bundle.model.eval(), shape, model_id=name)
    return bundle.model.eval(), ChannelSpace(graph), bundle.weights


def projector(space: ChannelSpace, costs, budgets: list[Budget], base: dict) -> BudgetSet:
    return BudgetSet(budgets, costs, base, space.max_ratios)


def random_policies(space: ChannelSpace, n: int, flops: tuple[float, float], rng: np.random.Generator):
    """EagleEye-style: a random direction per policy, projected onto a random FLOPs target."""
    base = {"macs": space.graph.base_macs}
    out = []
    for _ in range(n):
        target = rng.uniform(*flops)
        budget = Budget("macs", target * base["macs"], f"{target:.0%}FLOPs", target)
        bs = projector(space, lambda r: {"macs": space.macs(r)}, [budget], base)
        out.append(bs.project(rng.uniform(0, space.max_ratios), space.snap, space.step, rng))
    return out


def stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    err = (predicted - measured) / measured
    return {"n": len(err), "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
            "mape": float(np.mean(np.abs(err))), "median_ape": float(np.median(np.abs(err))),
            "max_ape": float(np.max(np.abs(err))), "bias": float(np.mean(err)),
            "spearman": float(spearmanr(predicted, measured)[0]) if len(err) > 2 else None}


def validate_model(name: str, args: argparse.Namespace, cache: Path) -> dict:
    model, space, weights = setup_model(name)
    shape = space.graph.input_shape
    settings = ProfileSettings(device=args.device, batch=args.batch, threads=args.threads, grid=args.grid)
    start = time.perf_counter()
    with background_load(args.load, args.seed):
        prof = profile_latency(model, space.graph, settings, path=cache / f"{name}.json", floor_kept=space.min_kept)
    profile_wall = time.perf_counter() - start
    lut = LatencyTableCost(space, prof.predictor, prof.table)
    timing = dict(batch=args.batch, device=args.device, threads=args.threads, repeats=args.repeats,
                  min_seconds=args.measure_seconds, max_seconds=max(5.0, args.measure_seconds), rounds=5)
    base_model = copy.deepcopy(model)
    rng = np.random.default_rng(args.seed)
    rows = []
    start = time.perf_counter()
    for r in random_policies(space, args.policies, tuple(args.flops), rng):
        # timed interleaved with the unpruned model, so the speedup is free of the machine's slow spells
        measured, base = median_latencies_ms([(space.apply(model, r), shape), (base_model, shape)], **timing)
        rows.append({"ratios": [float(x) for x in r], "macs_fraction": space.macs(r) / space.graph.base_macs,
                     "predicted_ms": lut.cost(r), "measured_ms": measured, "unpruned_alongside_ms": base})
    measure_seconds = time.perf_counter() - start
    base_ms = float(np.median([r["unpruned_alongside_ms"] for r in rows]))
    for r in rows:
        r["measured_normalised_ms"] = r["measured_ms"] / r["unpruned_alongside_ms"] * base_ms
        r["flops_proportional_ms"] = base_ms * r["macs_fraction"]
    pred = np.array([r["predicted_ms"] for r in rows])
    # the floor and the thinnest policy's prediction (every group at its maximum ratio), next to the policies'
    floor, thinnest = lut.floor_ms, lut.cost(space.max_ratios)
    meas = np.array([r["measured_ms"] for r in rows])
    norm = np.array([r["measured_normalised_ms"] for r in rows])
    naive = np.array([r["flops_proportional_ms"] for r in rows])
    return {"model": name, "input_shape": list(shape), "weights": weights, "groups": space.size,
            "table": {"path": str(prof.path), "layer_shapes": len(prof.table.tables), "layers": len(prof.units),
                      "profile_seconds": prof.table.seconds, "profile_wall_seconds": profile_wall,
                      "base_ms": prof.table.base_ms, "calibration": {k: v for k, v in prof.table.calibration.items()
                                                                     if k != "points"},
                      "settings": prof.table.settings, "fingerprint": prof.table.fingerprint,
                      "stability": {k: v for k, v in prof.table.stability.items() if k != "base_checks_ms"},
                      "base_checks": len(prof.table.stability.get("base_checks_ms", []))},
            "floor_ms": floor, "thinnest_predicted_ms": thinnest,
            "predictions_below_floor": int(np.sum(pred < floor - 1e-12)), "background_load": args.load,
            "base_measured_ms": base_ms, "lut": stats(pred, meas), "lut_vs_normalised": stats(pred, norm),
            "flops_proportional": stats(naive, meas),
            "flops_vs_latency_spearman": float(spearmanr([r["macs_fraction"] for r in rows], meas)[0]),
            "measure_seconds": measure_seconds, "policies": rows}


def netadapt(args: argparse.Namespace, cache: Path) -> dict:
    """ResNet-56: measured speedup of 50%-FLOPs policies, and of policies held to a latency budget."""
    model, space, weights = setup_model("resnet56")
    shape = space.graph.input_shape
    settings = ProfileSettings(device=args.device, batch=args.batch, threads=args.threads, grid=args.grid)
    prof = profile_latency(model, space.graph, settings, path=cache / "resnet56.json")
    lut = LatencyTableCost(space, prof.predictor, prof.table)
    timing = dict(batch=args.batch, device=args.device, threads=args.threads, repeats=args.repeats,
                  min_seconds=args.measure_seconds, max_seconds=max(5.0, args.measure_seconds), rounds=5)
    base_model = copy.deepcopy(model)
    zeros = np.zeros(space.size)
    base = {"macs": space.graph.base_macs, "latency_ms": lut.cost(zeros)}

    def costs(r):
        return {"macs": space.macs(r), "latency_ms": lut.cost(r)}

    flops_budget = projector(space, costs, [parse_budget("50%FLOPs", base)], base)
    latency_budget = projector(space, costs, [parse_budget(f"{100 / args.speedup:.4g}%latency", base)], base)
    rng = np.random.default_rng(args.seed + 1)
    arms: dict[str, list[np.ndarray]] = {
        "uniform 50% FLOPs": [flops_budget.project(np.full(space.size, 0.5), space.snap, space.step)],
        "random 50% FLOPs": [flops_budget.project(rng.uniform(0, space.max_ratios), space.snap, space.step, rng)
                             for _ in range(args.netadapt)],
        f"random, {args.speedup}x latency budget (table)": [
            latency_budget.project(rng.uniform(0, space.max_ratios), space.snap, space.step, rng)
            for _ in range(args.netadapt)],
    }
    if SEARCHED.exists():  # the best policies of the search-quality benchmark, by searcher
        for run in json.loads(SEARCHED.read_text())["runs"]:
            if run.get("policy"):
                arms[f"searched 50% FLOPs ({run['row']}, held-out {run['heldout']:.4f})"] = [
                    np.array([run["policy"][n] for n in space.names])]
    # the most the space can prune, as the table sees it: a latency target below it cannot be met
    floor = lut.cost(space.max_ratios) / base["latency_ms"]
    out = {"weights": weights, "base_predicted_ms": base["latency_ms"],
           "min_predicted_latency_fraction": floor, "latency_target_fraction": 1 / args.speedup, "arms": {}}
    unpruned = []
    for arm, policies in arms.items():
        rows = []
        for r in policies:  # speedup over the unpruned model timed interleaved with it
            ms, base_ms = median_latencies_ms([(space.apply(model, r), shape), (base_model, shape)], **timing)
            unpruned.append(base_ms)
            rows.append({"macs_fraction": space.macs(r) / space.graph.base_macs, "measured_ms": ms,
                         "unpruned_alongside_ms": base_ms, "predicted_ms": lut.cost(r), "speedup": base_ms / ms,
                         "predicted_speedup": base["latency_ms"] / lut.cost(r)})
        speedups = [row["speedup"] for row in rows]
        out["arms"][arm] = {"n": len(rows), "median_speedup": float(np.median(speedups)),
                            "max_speedup": float(np.max(speedups)),
                            "median_macs_fraction": float(np.median([row["macs_fraction"] for row in rows])),
                            "rows": rows}
    out["base_measured_ms"] = float(np.median(unpruned))
    return out


def markdown(result: dict) -> str:
    a, m = result["args"], result["machine"]
    lines = [f"# Latency table vs measured latency ({a['device']}, batch {a['batch']}, {a['threads']} thread(s))", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; {a['policies']} random policies per "
             f"model projected onto {a['flops'][0]:.0%}-{a['flops'][1]:.0%} FLOPs; table grid {a['grid']}.", "",
             "Table vs measured: each policy's median latency as timed. vs normalised: that measurement times "
             "(median unpruned latency / the unpruned model's latency timed interleaved with this policy), "
             "which takes the machine's slow spells out of the truth.", "",
             (f"Tables profiled under load: {a['load']} background processes of busy/idle spells, stopped before "
              "any policy was measured." if a.get("load") else "Tables profiled on a quiet machine."), "",
             "| model | input | layer shapes / layers | profile s | within ±10% | MAPE | Spearman | "
             "vs normalised: within ±10% / MAPE / Spearman | bias vs normalised | FLOPs-proportional: within ±10% / "
             "MAPE | Spearman(FLOPs, latency) | unpruned ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        t, s, f, v = r["table"], r["lut"], r["flops_proportional"], r["lut_vs_normalised"]
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | {t['layer_shapes']} / {t['layers']} | "
                     f"{t['profile_seconds']:.0f} | {s['within_10pct']:.0%} | {s['mape']:.1%} | {s['spearman']:.3f} | "
                     f"{v['within_10pct']:.0%} / {v['mape']:.1%} / {v['spearman']:.3f} | {v['bias']:+.1%} | "
                     f"{f['within_10pct']:.0%} / {f['mape']:.1%} | {r['flops_vs_latency_spearman']:.3f} | "
                     f"{r['base_measured_ms']:.2f} |")
    lines += ["", "| model | calibration (LOO MAPE ratio / line) | timing spread while profiling | units timed again | "
              "floor ms | thinnest predicted ms | predictions below the floor |", "|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        fit, st = r["table"]["calibration"].get("fit", {}), r["table"]["stability"]
        loo = "/".join("–" if fit.get(k) is None else f"{fit[k]:.1%}" for k in ("loo_mape_ratio", "loo_mape_line"))
        lines.append(f"| {r['model']} | {fit.get('model')}: {fit.get('a', 1):.3f}·raw {fit.get('b', 0):+.3f} ms ({loo}) | "
                     f"{st.get('spread', 0):.1%} | {st.get('retimed', 0)} | {r['floor_ms']:.3f} | "
                     f"{r['thinnest_predicted_ms']:.3f} | {r['predictions_below_floor']} |")
    if result.get("netadapt"):
        n = result["netadapt"]
        lines += ["", f"## ResNet-56: measured speedup over the unpruned model ({n['base_measured_ms']:.2f} ms)", "",
                  f"The most pruned policy the space allows (every group at its maximum ratio) is predicted at "
                  f"{n['min_predicted_latency_fraction']:.0%} of the unpruned latency; the latency-budgeted arm "
                  f"asks for {n['latency_target_fraction']:.1%}"
                  + (" and is therefore infeasible: its policies sit at that floor." if
                     n['min_predicted_latency_fraction'] > n['latency_target_fraction'] else "."), "",
                  "| policies | n | FLOPs (median) | measured speedup median | max | table's speedup median |",
                  "|---|---|---|---|---|---|"]
        for arm, s in n["arms"].items():
            predicted = np.median([row["predicted_speedup"] for row in s["rows"]])
            lines.append(f"| {arm} | {s['n']} | {s['median_macs_fraction']:.1%} | {s['median_speedup']:.2f}x | "
                         f"{s['max_speedup']:.2f}x | {predicted:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        models = []
        for name in args.models:
            print(f"{name}: profiling, then {args.policies} policies", file=sys.stderr)
            models.append(validate_model(name, args, cache))
            s = models[-1]["lut"]
            v = models[-1]["lut_vs_normalised"]
            print(f"{name}: profile {models[-1]['table']['profile_seconds']:.0f} s, within ±10% "
                  f"{s['within_10pct']:.0%}, MAPE {s['mape']:.1%}, Spearman {s['spearman']:.3f}; vs normalised "
                  f"{v['within_10pct']:.0%}, {v['mape']:.1%}, {v['spearman']:.3f}", file=sys.stderr)
        na = netadapt(args, cache) if args.netadapt > 0 and "resnet56" in args.models else None
    result = {"command": " ".join(["python", "bench/latency_validation.py", *(argv or sys.argv[1:])]),
              "args": jsonable(vars(args)), "machine": machine_info(args.device), "models": models,
              "netadapt": na}
    stem = f"latency_validation-{'-'.join(args.models)}{'-' + args.tag if args.tag else ''}"
    save_result(args.out_dir, stem, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
