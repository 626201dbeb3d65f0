"""Fine-tuned quality: the searched policy against uniform, global, Torch-Pruning and FastNAS after equal fine-tuning.

For each (model, budget, seed) every row is searched (or pruned) at the same budget, then fine-tuned the same
way (one epoch of `autoprune finetune`: SGD Nesterov, cosine from lr 0.01, batch 128, the training split; the
held-out split stays unseen) and tested on the 10,000 test images. Searcher rows run as a user runs them,
through `autoprune.search_job.run_search` and `autoprune.finetune.finetune_run` on the run folder. `tp-global`
is pure Torch-Pruning (global magnitude, ratio bisected to the budget) through the same evaluator and the same
training code. `modelopt-fastnas` rows are read from `modelopt_fastnas-*.json` files written by another bench.

Each finished row is one part file, `parts/finetuned_quality-<model>-<budget>-s<seed>-<row>.json`; a part that
exists is skipped, so a stopped run continues where it was. The aggregate (JSON + Markdown) is rebuilt from every
part present after each row, or alone with --aggregate-only.

    OMP_NUM_THREADS=1 python bench/finetuned_quality.py --models resnet20 --budgets 20%FLOPs 30%FLOPs 50%FLOPs \
        --seeds 0 1 2 --rows tpe uniform tp-global global random --threads 1

The code imported is the checkout this file lies in (or --code DIR), also when the venv holds an editable install
of another checkout: run it from a `git worktree` to freeze the library while others edit it.
"""
from __future__ import annotations

import sys
from pathlib import Path


def _code_root(argv: list[str]) -> Path:
    """--code DIR, else the checkout holding this file."""
    for i, a in enumerate(argv):
        if a == "--code" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--code="):
            return Path(a.split("=", 1)[1]).resolve()
    return Path(__file__).resolve().parents[1]


def pin_code(root: Path) -> None:
    """Import autoprune and its sub-packages (agents/, envs/, search_spaces/ at the top level, mapped by
    setuptools' package-dir) from `root`.

    A PYTHONPATH entry alone is not enough: it wins for `autoprune` itself, but `autoprune.agents` is not under
    `autoprune/`, so the editable install's finder (which maps it to its own checkout) answers for it. Its
    MAPPING is repointed here, before anything of autoprune is imported.
    """
    if "autoprune" in sys.modules:
        raise RuntimeError("pin_code must run before autoprune is imported")
    sys.path.insert(0, str(root))
    dirs = {"autoprune": "autoprune", "autoprune.agents": "agents", "autoprune.envs": "envs",
            "autoprune.search_spaces": "search_spaces"}
    for finder in sys.meta_path:
        module = sys.modules.get(getattr(finder, "__module__", "") or "")
        mapping = getattr(module, "MAPPING", None)
        if isinstance(mapping, dict) and "autoprune" in mapping:
            mapping.update({k: str(root / v) for k, v in dirs.items()})
            namespaces = getattr(module, "NAMESPACES", None)
            if isinstance(namespaces, dict) and "autoprune.zoo.weights" in namespaces:
                namespaces["autoprune.zoo.weights"] = [str(root / "autoprune" / "zoo" / "weights")]


CODE_ROOT = _code_root(sys.argv[1:]) if __name__ == "__main__" else Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    pin_code(CODE_ROOT)

# ruff: noqa: E402 -- the imports below must follow pin_code
import argparse
import copy
import glob
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
import torch_pruning as tp

import autoprune
import autoprune.agents
from autoprune.evaluate import accuracy
from autoprune.finetune import finetune_run
from autoprune.search_job import SearchConfig, build_setup, run_search
from autoprune.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import jsonable, machine_info, tp_count, tp_reference  # noqa: E402

# Every row: how it is made. Searcher rows: agent, evaluations (None: --evals), extra SearchConfig fields.
ROWS: dict[str, dict] = {
    "tpe": {"kind": "searcher", "agent": "tpe"},
    "tpe-ladder": {"kind": "searcher", "agent": "tpe", "extra": {"fidelity": "ladder"}},
    "random": {"kind": "searcher", "agent": "random"},
    "evolution": {"kind": "searcher", "agent": "evolution"},
    "gnn": {"kind": "searcher", "agent": "gnn"},
    "uniform": {"kind": "searcher", "agent": "uniform", "evals": 1},
    "global": {"kind": "searcher", "agent": "global", "evals": 1},
    "tp-global": {"kind": "tp-global"},
    "modelopt-fastnas": {"kind": "external"},  # read from modelopt_fastnas-*.json, never run here
    # FastNAS's widths (that bench's result file, this combo's row) through autoprune's pipeline: bench/fastnas_widths.py
    "fastnas-widths": {"kind": "searcher", "agent": f"{Path(__file__).resolve().parent / 'fastnas_widths.py'}:FastNASWidths",
                       "evals": 1, "extra": {"max_ratio": 0.95}, "combo_options": True},
}
DEFAULT_ROWS = ("tpe", "uniform", "tp-global", "global", "random")
BASELINES = ("uniform", "global", "tp-global", "modelopt-fastnas")
MARGIN_ROWS = ("tpe", "tpe-ladder")  # the margin lines with a verdict
TEST_IMAGES = 10_000


def target_pp(budget: str) -> float:
    """Issue's target for tpe over the best baseline: >= 1.0 pp at 20% and 30% FLOPs, >= 0.3 pp at 50%."""
    m = re.match(r"\s*([\d.]+)\s*%", budget)
    return 0.3 if m and float(m.group(1)) >= 50 else 1.0


def parse_value(v: str):
    """'200' -> 200, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, else the string."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def apply_row_extras(rows: dict[str, dict], specs: list[str]) -> dict[str, dict]:
    """--row-extra NAME:key=value,key=value: more SearchConfig fields for row NAME (a new searcher row when
    NAME is unknown and `agent=` is given; `agent=` and `evals=` set the row's agent and evaluations;
    `ignore=a+b` the modules whose groups stay whole, as --ignore a --ignore b; `opt.KEY=VALUE` an
    --agent-option)."""
    rows = copy.deepcopy(rows)
    for spec in specs:
        name, sep, pairs = spec.partition(":")
        if not sep:
            raise SystemExit(f"--row-extra {spec!r}: expected NAME:key=value[,key=value]")
        row = rows.setdefault(name, {"kind": "searcher"})
        if row["kind"] != "searcher":
            raise SystemExit(f"--row-extra: row {name} is not a searcher row")
        for pair in filter(None, pairs.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise SystemExit(f"--row-extra {spec!r}: {pair!r} is not key=value")
            if key in ("agent", "evals"):
                row[key] = parse_value(value)
            elif key == "ignore":  # SearchConfig.ignore, a list of module names: ignore=a+b
                row.setdefault("extra", {})[key] = value.split("+")
            elif key.startswith("opt."):  # an --agent-option: opt.KEY=VALUE
                row.setdefault("extra", {}).setdefault("agent_options", {})[key[4:]] = parse_value(value)
            else:
                row.setdefault("extra", {})[key] = parse_value(value)
        if "agent" not in row:
            raise SystemExit(f"--row-extra: new row {name} needs agent=NAME")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--budgets", nargs="+", default=["20%FLOPs", "30%FLOPs", "50%FLOPs"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--combos", nargs="+", default=None, metavar="[MODEL:]BUDGET:SEED",
                   help="run these (model, budget, seed) in this order instead of models x seeds x budgets")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="rows run, in this order, per combo")
    p.add_argument("--row-extra", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="extra SearchConfig fields of a searcher row (repeatable), e.g. "
                        "tpe-ladder:fidelity=ladder,ladder_steps=200")
    p.add_argument("--evals", type=int, default=60, help="evaluations per searcher row (uniform/global: 1)")
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--reconstruct-top", type=int, default=10, help="searcher rows: refit and re-rank the K best")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs, every row")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and SearchConfig.threads")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="parts go to OUT_DIR/parts")
    p.add_argument("--tag", default=None, help="aggregate file name's tag (default: <evals>evals-<epochs>ep)")
    p.add_argument("--resume", action="store_true", help="(always on) parts that exist are skipped")
    p.add_argument("--force", action="store_true", help="redo parts that exist")
    p.add_argument("--aggregate-only", action="store_true", help="run nothing: rebuild the aggregate from parts")
    p.add_argument("--code", type=Path, default=None,
                   help="the checkout whose autoprune is imported (default: the one holding this script)")
    p.add_argument("--train-images", type=int, default=None, help="smoke tests only: tp-global fine-tunes on the first N (searcher rows: all)")
    args = p.parse_args(argv)
    args.row_table = apply_row_extras(ROWS, args.row_extra)
    unknown = [r for r in args.rows if r not in args.row_table]
    if unknown:
        p.error(f"unknown row {unknown[0]}: one of {', '.join(args.row_table)} (or define it with --row-extra)")
    if args.tag is None:
        args.tag = f"{args.evals}evals-{args.epochs}ep"
    return args


def combos(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    if not args.combos:
        return [(m, b, s) for m in args.models for s in args.seeds for b in args.budgets]
    out = []
    for c in args.combos:
        bits = c.split(":")
        if len(bits) == 2:
            out += [(m, bits[0], int(bits[1])) for m in args.models]
        elif len(bits) == 3:
            out.append((bits[0], bits[1], int(bits[2])))
        else:
            raise SystemExit(f"--combos {c!r}: expected [MODEL:]BUDGET:SEED")
    return out


def slug(budget: str) -> str:
    return re.sub(r"[^\w.-]+", "", budget.replace("%", "pct"))


def part_path(out_dir: Path, model: str, budget: str, seed: int, row: str) -> Path:
    return out_dir / "parts" / f"finetuned_quality-{model}-{slug(budget)}-s{seed}-{row}.json"


def code_info(root: Path) -> dict:
    """Which code ran: the checkout, its commit, whether it had local changes, where the packages came from."""
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10, cwd=root).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"root": str(root), "commit": git("rev-parse", "HEAD"),
            "changed_files": (git("status", "--porcelain", "--untracked-files=no") or "").splitlines(),
            "autoprune": autoprune.__file__, "autoprune.agents": autoprune.agents.__file__}


def search_config(args: argparse.Namespace, model: str, budget: str, seed: int, row: str, out: Path | None) -> SearchConfig:
    spec = args.row_table[row]
    agent = spec.get("agent", "uniform")
    evals = spec.get("evals") or args.evals
    fields = {"reconstruct": True, "reconstruct_top": args.reconstruct_top} | spec.get("extra", {})  # a row may turn the refit off
    if spec.get("combo_options"):  # the searcher is told the combo it runs in
        fields["agent_options"] = {"model": model, "budget": budget} | fields.get("agent_options", {})
    return SearchConfig(model=model, budgets=[budget], agent=agent, evals=evals, seed=seed, heldout=args.heldout,
                        calib_batches=args.calib_batches, device=args.device, threads=args.threads, out=out, **fields)


def run_searcher_row(args, model: str, budget: str, seed: int, row: str) -> dict:
    """Search as `autoprune search` does, fine-tune the run folder as `autoprune finetune --epochs N` does."""
    tmp = Path(tempfile.mkdtemp(prefix=f"fq-{model}-{slug(budget)}-s{seed}-{row}-"))
    run = tmp / "run"
    try:
        cfg = search_config(args, model, budget, seed, row, run)
        torch.manual_seed(seed)
        start = time.perf_counter()
        summary = run_search(cfg)
        search_wall = time.perf_counter() - start
        start = time.perf_counter()
        ft = finetune_run(run, args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, device=args.device)
        finetune_seconds = time.perf_counter() - start
        policy = json.loads((run / "policy.json").read_text())
        return {"macs_pct": 100 * summary["macs"] / summary["base_macs"],
                "heldout": summary["heldout_accuracy"], "test": summary["test_accuracy"],
                "rebuilt_test": ft["test_accuracy_before_finetune"], "finetuned_test": ft["finetuned_test_accuracy"],
                "finetuned_heldout": ft["finetuned_heldout_accuracy"],
                "search_seconds": summary["search_seconds"], "search_wall_seconds": search_wall,
                "finetune_seconds": finetune_seconds, "evaluations": summary["evaluations"],
                "search_config": jsonable(_asdict(cfg)) | {"out": "<temporary run folder>"},
                "finetune_history": ft["finetune_history"],
                "policy": {"ratios": policy.get("ratios"), "reconstruction": policy.get("reconstruction")}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _asdict(cfg: SearchConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def run_tp_global(args, model: str, budget: str, seed: int) -> dict:
    """search_quality.tp_reference (Torch-Pruning global magnitude, ratio bisected to the budget, adaptive BN and
    held-out through the problem's evaluator), rebuilt at its ratio and fine-tuned with autoprune.train."""
    cfg = search_config(args, model, budget, seed, "uniform", None)  # the problem only: model, data, evaluator
    torch.manual_seed(seed)
    start = time.perf_counter()
    setup = build_setup(cfg)
    ref = tp_reference(setup, global_pruning=True)
    wall = time.perf_counter() - start  # as a searcher row's run_search: setup, bisection, held-out, test
    if "pruning_ratio" not in ref:
        raise RuntimeError(f"Torch-Pruning's bisection found no ratio within {budget}")
    # tp_reference keeps only figures: the same pruning again at its ratio (deterministic), then the evaluator
    problem, graph = setup.problem, setup.problem.space.graph
    pruned = copy.deepcopy(setup.bundle.model).cpu().eval()
    modules = dict(pruned.named_modules())
    tp.pruner.MetaPruner(pruned, torch.randn(1, *graph.input_shape),
                         importance=tp.importance.GroupMagnitudeImportance(p=1 if cfg.criterion == "l1" else 2),
                         global_pruning=True, pruning_ratio=ref["pruning_ratio"],
                         ignored_layers=[modules[n] for n in graph.ignored]).step()
    heldout = problem.evaluator(pruned)["top1"]  # adaptive BN (in place) + held-out
    if abs(heldout - ref["heldout"]) > 1e-9:
        raise RuntimeError(f"tp-global rebuilt at ratio {ref['pruning_ratio']} scores {heldout}, not {ref['heldout']}")
    macs, _ = tp_count(pruned, graph.input_shape)
    data, device = setup.data, setup.device
    if args.train_images:  # smoke tests only
        data.train = data.train.subset(torch.arange(args.train_images))
    start = time.perf_counter()
    history = train(pruned, data, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                              schedule="cosine", seed=seed), device)
    finetune_seconds = time.perf_counter() - start
    return {"macs_pct": 100 * ref["macs_fraction"], "macs_tp": macs, "heldout": ref["heldout"], "test": ref["test"],
            "finetuned_test": accuracy(pruned, data.test, device)["top1"],
            "finetuned_heldout": history[-1]["heldout_accuracy"],
            "search_seconds": ref["search_seconds"], "search_wall_seconds": wall,
            "finetune_seconds": finetune_seconds, "evaluations": 1,
            "pruning_ratio": ref["pruning_ratio"], "bisection_steps": ref["bisection_steps"],
            "within_tolerance": ref["within_tolerance"],
            "search_config": jsonable(_asdict(cfg)) | {"agent": "(tp-global: setup only)", "out": None},
            "finetune_history": history}


def run_part(args, model: str, budget: str, seed: int, row: str) -> dict | None:
    spec = args.row_table[row]
    if spec["kind"] == "external":
        print(f"{row}: not run here (read from modelopt_fastnas-*.json at aggregation)", file=sys.stderr)
        return None
    load_start, start = os.getloadavg(), time.time()
    if spec["kind"] == "tp-global":
        body = run_tp_global(args, model, budget, seed)
    else:
        body = run_searcher_row(args, model, budget, seed, row)
    return {"model": model, "budget": budget, "seed": seed, "row": row, "kind": spec["kind"],
            "row_spec": spec, **body, "finetune": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                                    "schedule": "cosine", "seed": seed},
            "part_seconds": time.time() - start, "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()), "code": code_info(CODE_ROOT), "machine": machine_info(args.device),
            "command": command(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def command() -> str:
    return "python " + " ".join([sys.argv[0], *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------- aggregation


def _frac(x):
    """Accuracies as fractions (a file that wrote percent is divided by 100)."""
    return None if x is None else x / 100 if x > 1.5 else x


def external_rows(out_dir: Path) -> tuple[list[dict], list[str]]:
    """modelopt-fastnas rows from OUT_DIR/modelopt_fastnas-*.json (fields as this bench's parts)."""
    rows, files = [], sorted(glob.glob(str(out_dir / "modelopt_fastnas-*.json")))
    for f in files:
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {f}: {exc}", file=sys.stderr)
            continue
        for r in data.get("rows", []):
            macs = r.get("macs_pct")
            rows.append({**r, "row": r.get("row", "modelopt-fastnas"), "kind": "external", "source": f,
                         "evaluations": r.get("evaluations", r.get("candidates")),
                         "macs_pct": None if macs is None else macs * 100 if macs <= 1.5 else macs,
                         "heldout": _frac(r.get("heldout")), "test": _frac(r.get("test")),
                         "test_bn": _frac(r.get("test_bn")), "finetuned_test": _frac(r.get("finetuned_test"))})
    return rows, files


def load_parts(out_dir: Path) -> list[dict]:
    parts = []
    for f in sorted((out_dir / "parts").glob("finetuned_quality-*.json")):
        parts.append(json.loads(f.read_text()) | {"source": str(f)})
    return parts


def _budget_key(b: str) -> tuple[float, str]:
    m = re.match(r"\s*([\d.]+)", b)
    return (float(m.group(1)) if m else math.inf, b)


def stats(values: list[float]) -> dict | None:
    if not values:
        return None
    n = len(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": n,
            "se": statistics.stdev(values) / math.sqrt(n) if n > 1 else None}


def margin(parts: list[dict], model: str, budget: str, row: str) -> dict | None:
    """Per seed: `row`'s fine-tuned test minus the best baseline's of that seed; their median; the verdict."""
    mine = {p["seed"]: p["finetuned_test"] for p in parts
            if (p["model"], p["budget"], p["row"]) == (model, budget, row) and p.get("finetuned_test") is not None}
    per_seed = {}
    for seed, acc in sorted(mine.items()):
        base = {p["row"]: p["finetuned_test"] for p in parts if (p["model"], p["budget"], p["seed"]) == (model, budget, seed)
                and p["row"] in BASELINES and p.get("finetuned_test") is not None}
        if base:
            best = max(base, key=base.get)
            per_seed[seed] = {"diff_pp": 100 * (acc - base[best]), "best_baseline": best,
                              "baselines": sorted(base)}
    if not per_seed:
        return None
    med = statistics.median(d["diff_pp"] for d in per_seed.values())
    target = target_pp(budget)
    return {"per_seed": per_seed, "median_pp": med, "target_pp": target, "met": med >= target}


def proxy_rank(points: list[dict]) -> dict | None:
    """How well the score a search ranks by predicts what a user keeps: Spearman of the test accuracy before the
    fine-tune (after adaptive BN; an external row's `test_bn`, as its raw `test` had no BN recalibration) with the
    fine-tuned test accuracy, over every (row, seed) of one model and budget."""
    from scipy.stats import spearmanr

    pairs = [(p.get("test_bn", p.get("test")), p["finetuned_test"]) for p in points
             if p.get("finetuned_test") is not None and p.get("test_bn", p.get("test")) is not None]
    if len(pairs) < 5:
        return None
    rho = spearmanr(*zip(*pairs)).statistic
    return {"spearman": None if math.isnan(rho) else float(rho), "n": len(pairs)}


def aggregate(args: argparse.Namespace) -> dict:
    parts = load_parts(args.out_dir)
    ext, ext_files = external_rows(args.out_dir)
    everything = parts + ext
    models = sorted({p["model"] for p in parts} | {p["model"] for p in ext if any(q["model"] == p["model"] for q in parts)})
    order = list(dict.fromkeys([*args.rows, *DEFAULT_ROWS, *args.row_table]))
    tables = {}
    for model in models:
        for budget in sorted({p["budget"] for p in everything if p["model"] == model}, key=_budget_key):
            here = [p for p in everything if (p["model"], p["budget"]) == (model, budget)]
            rows = [r for r in order if any(p["row"] == r for p in here)]
            rows += sorted({p["row"] for p in here} - set(rows))
            table = {}
            for row in rows:
                ps = sorted((p for p in here if p["row"] == row), key=lambda p: p["seed"])

                def vals(key: str) -> list[float]:
                    return [p[key] for p in ps if p.get(key) is not None]

                ev = vals("evaluations")
                ft = stats(vals("finetuned_test"))
                table[row] = {
                    "seeds": [p["seed"] for p in ps], "macs_pct": stats(vals("macs_pct")),
                    "evaluations": [min(ev), max(ev)] if ev else None, "search_seconds": stats(vals("search_seconds")),
                    "finetune_seconds": stats(vals("finetune_seconds")),
                    "wall_seconds": stats(vals("search_wall_seconds")),
                    "total_seconds": stats([p["search_wall_seconds"] + p["finetune_seconds"] for p in ps
                                            if p.get("search_wall_seconds") is not None
                                            and p.get("finetune_seconds") is not None]),
                    "heldout": stats(vals("heldout")), "test": stats(vals("test")), "finetuned_test": ft,
                    "binomial_se": math.sqrt(ft["median"] * (1 - ft["median"]) / TEST_IMAGES) if ft else None,
                    "per_seed": {p["seed"]: p.get("finetuned_test") for p in ps},
                    "within_tolerance": all(p.get("within_tolerance", True) for p in ps)}
            margins = {r: margin(everything, model, budget, r) for r in rows
                       if args.row_table.get(r, {}).get("kind") == "searcher" and r not in ("uniform", "global")}
            tables[f"{model} {budget}"] = {"model": model, "budget": budget, "rows": table,
                                           "margins": {k: v for k, v in margins.items() if v},
                                           "proxy_rank": proxy_rank(here)}
    commits = sorted({p["code"]["commit"] for p in parts if p.get("code")})
    dirty = sorted({f for p in parts for f in (p.get("code") or {}).get("changed_files", [])})
    loads = [max(p["loadavg_start"][0], p["loadavg_end"][0]) for p in parts if p.get("loadavg_start")]
    result = {"command": command(), "models": models, "tag": args.tag, "tables": tables,
              "parts": [p["source"] for p in parts], "external_files": ext_files, "commits": commits,
              "code_changed_files": dirty, "machine": parts[-1]["machine"] if parts else machine_info(args.device),
              "loadavg_1min_max": max(loads) if loads else None, "loadavg_1min_median": statistics.median(loads) if loads else None,
              "search_commands": sorted({p["command"] for p in parts if p.get("command")}),
              "settings": {"heldout": args.heldout, "calib_batches": args.calib_batches, "evals": args.evals,
                           "reconstruct_top": args.reconstruct_top, "epochs": args.epochs, "lr": args.lr,
                           "batch_size": args.batch_size},
              "missing": missing(args, parts)}
    name = f"finetuned_quality-{'-'.join(models) or 'none'}-{args.tag}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(jsonable(result), indent=1) + "\n")
    md = markdown(jsonable(result))
    (args.out_dir / f"{name}.md").write_text(md)
    print(f"wrote {args.out_dir / name}.json and .md", file=sys.stderr)
    return result


def missing(args: argparse.Namespace, parts: list[dict]) -> list[str]:
    """The parts this command plans that are not present (external rows are not planned here)."""
    have = {(p["model"], p["budget"], p["seed"], p["row"]) for p in parts}
    return [f"{m} {b} s{s} {r}" for m, b, s in combos(args) for r in args.rows
            if args.row_table[r]["kind"] != "external" and (m, b, s, r) not in have]


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]

    def pct(x: float | None, digits: int = 2) -> str:
        return "–" if x is None else f"{100 * x:.{digits}f}"

    def acc(st: dict | None) -> str:
        if not st:
            return "–"
        return pct(st["median"]) if st["n"] == 1 else f"{pct(st['median'])} ({pct(st['min'])}–{pct(st['max'])})"

    def med(st: dict | None, fmt: str) -> str:
        return "–" if not st else format(st["median"], fmt)

    lines = ["# Searched winners after equal fine-tuning", "",
             *([f"`{c}`" for c in result["search_commands"]] or [f"`{result['command']}`"]), "",
             f"Searcher rows: `run_search(SearchConfig(..., heldout={s['heldout']}, calib_batches={s['calib_batches']}, "
             f"reconstruct=True, reconstruct_top={s['reconstruct_top']}, device='cpu', threads=1))` with {s['evals']} "
             "evaluations (uniform, global: 1), then `finetune_run(run, "
             f"{s['epochs']})` on the run folder (rebuilt from policy.json: apply_policy, least-squares refit, adaptive "
             "BN). tp-global: Torch-Pruning's global L2 group magnitude, pruning ratio bisected to the budget "
             "(`search_quality.tp_reference`), adaptive BN through the same evaluator, fine-tuned with the same "
             f"`autoprune.train.train` call. Fine-tune, every row: {s['epochs']} epoch, SGD Nesterov, cosine from lr "
             f"{s['lr']}, batch {s['batch_size']}, weight decay 5e-4, the training split (held-out excluded), seed = the "
             "row's seed. modelopt-fastnas: its held-out and test figures as that bench gives them (its own "
             "definitions; evals = its candidates), read from " + (", ".join(f"`{Path(f).name}`" for f in result["external_files"])
                                                           or "no modelopt_fastnas-*.json (none present)") + ".",
             "", f"{m['cpu']}, {m['torch_threads']} torch thread, torch {m['torch']}, torch-pruning {m['torch_pruning']}; "
             f"code at commit {', '.join(c[:7] for c in result['commits']) or '?'}"
             + (f" with local changes in {', '.join(result['code_changed_files'])}" if result["code_changed_files"] else "")
             + (f". 1-min load average during the parts: median {result['loadavg_1min_median']:.2f}, max "
                f"{result['loadavg_1min_max']:.2f} (another benchmark shared the 2-core machine)" if result["loadavg_1min_max"] else "")
             + ".", "",
             "Accuracies are top-1 %, median over seeds (min–max). SE: std over seeds / √n. One run's binomial SE on "
             "10,000 test images is √(p(1−p)/10000) ≈ 0.25 pp at these accuracies. Search s: policy.json's search_seconds "
             "(the searcher's proposals and evaluations; tp-global: bisection + one evaluation). Run wall s: the whole "
             "`run_search` call a user waits for (setup, search, top-K refit and re-rank, test, latency, exports, "
             "report; tp-global: setup + bisection + test). Wall + FT s: that plus the fine-tune. Medians; compare "
             "rows at equal wall time as well as at equal candidates."]
    for key, t in result["tables"].items():
        lines += ["", f"## {t['model']} at {t['budget']}", "",
                  "| row | MACs % | evals | search s | run wall s | wall + FT s | held-out | test before FT | fine-tuned test | "
                  "SE seeds (binomial) pp | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row, r in t["rows"].items():
            ev = r["evaluations"]
            evals = "–" if ev is None else str(ev[0]) if ev[0] == ev[1] else f"{ev[0]}–{ev[1]}"
            ft = r["finetuned_test"]
            se = "–" if not ft else (f"{100 * ft['se']:.2f}" if ft["se"] is not None else "–") + \
                f" ({100 * r['binomial_se']:.2f})"
            macs = med(r["macs_pct"], ".2f") + ("" if r["within_tolerance"] else " *")
            lines.append(f"| {row} | {macs} | {evals} | {med(r['search_seconds'], '.0f')} | "
                         f"{med(r['wall_seconds'], '.0f')} | {med(r['total_seconds'], '.0f')} | {acc(r['heldout'])} | {acc(r['test'])} | {acc(ft)} | {se} | "
                         f"{' '.join(map(str, r['seeds']))} |")
        if not all(r["within_tolerance"] for r in t["rows"].values()):
            lines += ["", "\\* Torch-Pruning's ratio steps did not land within 0.5% below the budget for some seed: it "
                      "ends further below (a handicap for that row)."]
        for row, mg in t["margins"].items():
            seeds = "; ".join(f"s{sd} {d['diff_pp']:+.2f} (vs {d['best_baseline']})" for sd, d in mg["per_seed"].items())
            verdict = (f"target ≥ {mg['target_pp']:.1f} pp: **{'met' if mg['met'] else 'not met'}**"
                       if row in MARGIN_ROWS else "no target (informational)")
            n_base = sorted({b for d in mg["per_seed"].values() for b in d["baselines"]})
            lines += ["", f"Margin {row} − best of {{{', '.join(n_base)}}} (fine-tuned test, pp): {seeds}; "
                      f"median {mg['median_pp']:+.2f} pp over {len(mg['per_seed'])} seed(s); {verdict}."]
        if t.get("proxy_rank") and t["proxy_rank"]["spearman"] is not None:
            pr = t["proxy_rank"]
            lines += ["", f"Test before the fine-tune (after adaptive BN; FastNAS: `test_bn`) against fine-tuned test, over "
                      f"all {pr['n']} row × seed points: Spearman {pr['spearman']:+.2f}."]
    if result["missing"]:
        lines += ["", f"Not present ({len(result['missing'])} parts this command plans): " + "; ".join(result["missing"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"code: autoprune {autoprune.__file__}, agents {autoprune.agents.__file__}", file=sys.stderr, flush=True)
    if args.aggregate_only:
        aggregate(args)
        return
    for model, budget, seed in combos(args):
        for row in args.rows:
            path = part_path(args.out_dir, model, budget, seed, row)
            if path.exists() and not args.force:
                print(f"{model} {budget} s{seed} {row}: part exists, skipped", file=sys.stderr, flush=True)
                continue
            print(f"{model} {budget} s{seed} {row} ...", file=sys.stderr, flush=True)
            try:
                part = run_part(args, model, budget, seed, row)
            except Exception as exc:  # one row failing (e.g. a SearchConfig field this code lacks) stops no other
                print(f"{model} {budget} s{seed} {row}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            if part is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(jsonable(part), indent=1) + "\n")
            print(f"  fine-tuned test {100 * part['finetuned_test']:.2f} (before {100 * part['test']:.2f}, held-out "
                  f"{100 * part['heldout']:.2f}, MACs {part['macs_pct']:.2f}%), search {part['search_seconds']:.0f} s, "
                  f"fine-tune {part['finetune_seconds']:.0f} s", file=sys.stderr, flush=True)
            aggregate(args)
    aggregate(args)


if __name__ == "__main__":
    main()
