"""NVIDIA ModelOpt FastNAS (`mtp.prune(mode="fastnas")`) on autoprune's task, fine-tuned with autoprune's schedule.

The same data and model autoprune's search sees: `load_data("fashion-mnist", heldout_size=1000)` (train =
the training split minus 1000 held-out images) and the zoo's shipped ResNet-20 (or -56) weights. ModelOpt
gets one constraint, `{"flops": "30%"}` (and 50%, 20%), `dummy_input` (1, 1, 28, 28), a DataLoader over
data.train (batch 64, shuffled with the row's seed) for its BN calibration, and as score_func the held-out
top-1 (`autoprune.evaluate.accuracy(model, data.heldout)`). FastNAS then scores every searchable layer at
every width with the other layers at full width (its sensitivity map) and binary-searches a surrogate
(the largest per-layer degradation) for the widest sub-net within the budget; the surrogate search calls
no score_func, so `candidates` counts the real scores only (the unpruned model plus the sensitivity map).

Settings (all in the result file):

- channel divisor 4 (`--divisor`): ModelOpt's default 32 leaves 16- and 32-channel layers no choice
  below full width, so a 20-50% FLOPs budget is infeasible on these nets; with 4 a 16-channel layer has
  4 widths (4..16), a 64-channel one 16, the widths still multiples of 4. 8 would leave 16-channel
  layers only 8 or 16.
- BN calibration on 10 batches of 64 (`--calib-batches`), the 10x64 adaptive BN of autoprune's search:
  `max_iter_data_loader=10`, and ModelOpt's queue of cached calibration batches set to 10 as well
  (`modelopt.torch.nas.autonas.MODELOPT_QUEUE_MAXLEN`, 50 in ModelOpt 0.47): with max_iter 10 and the
  50-batch queue ModelOpt warns "modelopt data queue not filled!" and scores every candidate without
  recalibrating. The counts of that warning per row are in the JSON (`queue_warnings`, should be 0).
- The model mtp.prune returns is scored as it is (`heldout`, `test`): ModelOpt selects the best sub-net
  and exports it without recalibrating BN, so its statistics are those of the last sensitivity-map
  candidate. `heldout_bn` / `test_bn` are the same model after autoprune's adaptive BN (10x64 training
  images, `recalibrate_bn`), on a copy; the fine-tune starts from the returned model.
- Fine-tune: `train(model, data, TrainConfig(epochs=1, lr=0.01, batch_size=128, schedule="cosine",
  seed=seed), cpu)` = `autoprune finetune --epochs 1` (SGD Nesterov, wd 5e-4, cosine from 0.01, the
  training split only), then test top-1 (`finetuned_test`).
- MACs: Torch-Pruning's count_ops_and_params at (1, 1, 28, 28), as autoprune counts them, as % of the
  unpruned model's.

ModelOpt lives in a virtualenv of its own, bench/.venv-modelopt, made on first use: python3 -m venv,
torch 2.14.1 / torchvision 0.29.1 (this machine's local wheels; pip is held to them by a constraints
file), nvidia-modelopt huggingface_hub torchprofile==0.0.4, and `pip install -e` of this repo. Run the
script with that venv's python (a run with another python makes the venv and re-executes itself in it):

    OMP_NUM_THREADS=1 bench/.venv-modelopt/bin/python bench/modelopt_fastnas.py --model resnet20 --resume

Each (budget, seed) row is written to the JSON as soon as it finishes; --resume skips rows already there.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "bench" / ".venv-modelopt"
TORCH, TORCHVISION = "2.14.1", "0.29.1"
MODELOPT_PKGS = ["nvidia-modelopt", "huggingface_hub", "torchprofile==0.0.4"]
BUDGETS = ("30%", "20%", "50%")
TEST_N = 10_000


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_modelopt_venv(venv: Path = VENV) -> Path:
    """The ModelOpt virtualenv's python, made on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        run(["python3", "-m", "venv", str(venv)])
        constraints = venv / "constraints.txt"
        constraints.write_text(f"torch=={TORCH}\ntorchvision=={TORCHVISION}\n")
        pip = [str(python), "-m", "pip", "install", "-q", "-c", str(constraints)]
        run(pip + [f"torch=={TORCH}", f"torchvision=={TORCHVISION}"])
        run(pip + MODELOPT_PKGS)
        run(pip + ["-e", str(REPO)])
    out = subprocess.run([str(python), "-c", "import modelopt, torch; print(modelopt.__version__, torch.__version__)"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{venv}: modelopt does not import:\n{out.stderr[-3000:]}")
    return python


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budgets", default=",".join(BUDGETS), help="FLOPs budgets, e.g. 30%%,20%%,50%%")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--divisor", type=int, default=4, help="FastNAS channel_divisor for Conv2d / feature_divisor")
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/modelopt_fastnas-<model>.json")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md-only", action="store_true", help="rewrite the .md from the JSON, run nothing")
    return p.parse_args(argv)


def stderr_of(p: float, n: int = TEST_N) -> float:
    return math.sqrt(p * (1 - p) / n)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("nvidia-modelopt", "torch", "torchvision", "torch-pruning", "torchprofile", "huggingface_hub",
                "pydantic", "numpy", "autoprune"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def one_row(args, budget: str, seed: int, data, device) -> dict:
    import numpy as np
    import torch
    import torch_pruning as tp
    from torch.utils.data import DataLoader

    import modelopt.torch.nas.autonas as mo_autonas
    import modelopt.torch.prune as mtp

    from autoprune.evaluate import accuracy, calibration_batches, recalibrate_bn, set_layout
    from autoprune.data import CALIB_BATCH
    from autoprune.train import TrainConfig, train
    from autoprune.zoo import build_model

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    example = torch.randn(1, 1, 28, 28)
    model = build_model(args.model, num_classes=10, in_channels=1, dataset="fashion-mnist", seed=seed).model.eval()
    base_macs, base_params = tp.utils.count_ops_and_params(model, example)
    base_test = accuracy(model, data.test, device)["top1"]
    set_layout(model)  # accuracy() leaves channels_last, which ModelOpt's convert refuses

    mo_autonas.MODELOPT_QUEUE_MAXLEN = args.calib_batches  # see the module docstring
    loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    calls = {"n": 0, "seconds": 0.0}

    def score_func(m) -> float:
        t = time.perf_counter()
        calls["n"] += 1
        s = accuracy(m, data.heldout, device)["top1"]
        set_layout(m)  # back to contiguous for ModelOpt
        calls["seconds"] += time.perf_counter() - t
        return s

    div = args.divisor
    mode = [("fastnas", {"nn.Conv2d": {"*": {"channel_divisor": div}},
                         "nn.BatchNorm2d": {"*": {"feature_divisor": div}},
                         "nn.Linear": {"*": {"feature_divisor": div}}})]
    with tempfile.TemporaryDirectory(prefix="modelopt-fastnas-") as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = {"data_loader": loader, "score_func": score_func, "checkpoint": str(Path(tmp) / "search.pth"),
                  "max_iter_data_loader": args.calib_batches, "verbose": False}
        t0 = time.perf_counter()
        pruned, state = mtp.prune(model, mode=mode, constraints={"flops": budget}, dummy_input=example, config=config)
        search_seconds = time.perf_counter() - t0
    queue_warnings = sum("queue not filled" in str(w.message) for w in caught)
    best = state.get("best", {}) if isinstance(state, dict) else {}
    pruned = pruned.eval()
    macs, params = tp.utils.count_ops_and_params(pruned, example)
    heldout = accuracy(pruned, data.heldout, device)["top1"]
    test = accuracy(pruned, data.test, device)["top1"]

    recal = copy.deepcopy(pruned)
    recalibrate_bn(recal, calibration_batches(data.train, args.calib_batches, CALIB_BATCH, seed), device)
    heldout_bn = accuracy(recal, data.heldout, device)["top1"]
    test_bn = accuracy(recal, data.test, device)["top1"]
    del recal

    t0 = time.perf_counter()
    train(pruned, data, TrainConfig(epochs=args.epochs, lr=0.01, batch_size=128, schedule="cosine", seed=seed), device)
    finetune_seconds = time.perf_counter() - t0
    finetuned_test = accuracy(pruned, data.test, device)["top1"]

    widths = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return {
        "model": args.model, "budget": f"{budget}FLOPs", "seed": seed, "row": "modelopt-fastnas",
        "macs_pct": 100.0 * macs / base_macs, "params_pct": 100.0 * params / base_params,
        "macs": int(macs), "base_macs": int(base_macs), "base_test": base_test,
        "heldout": heldout, "test": test, "test_se": stderr_of(test),
        "heldout_bn": heldout_bn, "test_bn": test_bn, "test_bn_se": stderr_of(test_bn),
        "finetuned_test": finetuned_test, "finetuned_test_se": stderr_of(finetuned_test),
        "search_seconds": search_seconds, "score_seconds": calls["seconds"], "finetune_seconds": finetune_seconds,
        "candidates": calls["n"], "channel_divisor": div, "calib_batches": args.calib_batches,
        "queue_warnings": queue_warnings,
        "modelopt_best": {"metric": best.get("metric"), "constraints": best.get("constraints")},
        "widths": widths,
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def markdown(result: dict) -> str:
    rows = result["rows"]
    s = result["settings"]
    lines = [f"# ModelOpt FastNAS on {s['model']} / Fashion-MNIST, fine-tuned 1 epoch", "",
             "```", result["command"], "```", "",
             f"- nvidia-modelopt {result['versions'].get('nvidia-modelopt')}, torch {result['versions'].get('torch')}, "
             f"torchvision {result['versions'].get('torchvision')}, torch-pruning {result['versions'].get('torch-pruning')}, "
             f"torchprofile {result['versions'].get('torchprofile')}, python {result['versions'].get('python')}; "
             f"{result['machine']}",
             "- `mtp.prune(model, mode=[(\"fastnas\", {\"nn.Conv2d\": {\"*\": {\"channel_divisor\": "
             f"{s['divisor']}}}}}, \"nn.BatchNorm2d\": {{\"*\": {{\"feature_divisor\": {s['divisor']}}}}}, ...)], "
             "constraints={\"flops\": budget}, dummy_input=torch.randn(1, 1, 28, 28), config={data_loader: "
             f"data.train, batch 64, shuffled by seed; max_iter_data_loader: {s['calib_batches']}; score_func: "
             "held-out top-1; checkpoint: a temp dir})`",
             f"- channel divisor {s['divisor']}: ModelOpt's default 32 gives 16- and 32-channel layers no width below "
             "full, which makes these budgets infeasible; with 4 a 16-channel layer has widths 4/8/12/16.",
             f"- BN calibration: {s['calib_batches']} batches of 64 (autoprune's 10x64 adaptive BN), with ModelOpt's "
             f"calibration-batch queue set to {s['calib_batches']} (its 50-batch queue otherwise leaves every candidate "
             "uncalibrated when max_iter_data_loader < 50: 'modelopt data queue not filled!').",
             f"- Data: `load_data(\"fashion-mnist\", heldout_size={s['heldout']})`; model: the zoo's shipped weights "
             f"(unpruned test top-1 {rows[0]['base_test'] * 100:.2f}%)." if rows else "",
             "- heldout / test: the model mtp.prune returns, as returned (ModelOpt exports the best sub-net without "
             "recalibrating BN); heldout_bn / test_bn: that model after autoprune's adaptive BN (10x64), on a copy; "
             "fine-tuned: `train(model, data, TrainConfig(epochs=1, lr=0.01, batch_size=128, schedule=\"cosine\", "
             "seed=seed))` from the returned model, then test top-1.",
             "- MACs: torch_pruning count_ops_and_params at (1, 1, 28, 28), % of the unpruned model. candidates: "
             "score_func calls (the unpruned model plus FastNAS's sensitivity map; its binary search over the "
             "surrogate scores none). Test standard error: sqrt(p(1-p)/10000).",
             "- ModelOpt's search space here (from `widths`): every block's first conv and the stage-1/2 residual "
             "widths (stem + layer1.*.conv2, layer2.*.conv2 + downsample); the stage-3 residual width (layer3.*.conv2 "
             "+ downsample, feeding the pooled fc) stays at 64 in every row: FastNAS does not make it searchable.",
             "- The seeds change only ModelOpt's 10 calibration batches, the adaptive-BN batches and the fine-tune: "
             "the held-out split (1000 images, split seed 0) and the weights are the same, so the sub-nets nearly "
             "coincide across seeds (`widths` in the JSON).",
             "- `modelopt_best.metric` in the JSON is FastNAS's surrogate for the chosen sub-net: minus the largest "
             "single-layer held-out drop in its sensitivity map (e.g. -0.10 at 30%: no layer alone costs more than "
             "10 pp); together the layers cost far more (held-out+BN column).",
             ""]
    cols = ["seed", "MACs %", "held-out %", "test %", "held-out+BN %", "test+BN %", "fine-tuned test %",
            "candidates", "search s", "fine-tune s"]
    for budget in dict.fromkeys(r["budget"] for r in rows):
        rs = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["seed"])
        lines += [f"## {budget}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

        def fmt(r):
            return [str(r["seed"]), f"{r['macs_pct']:.2f}", f"{r['heldout'] * 100:.2f}",
                    f"{r['test'] * 100:.2f} ± {r['test_se'] * 100:.2f}", f"{r['heldout_bn'] * 100:.2f}",
                    f"{r['test_bn'] * 100:.2f} ± {r['test_bn_se'] * 100:.2f}",
                    f"{r['finetuned_test'] * 100:.2f} ± {r['finetuned_test_se'] * 100:.2f}",
                    str(r["candidates"]), f"{r['search_seconds']:.0f}", f"{r['finetune_seconds']:.0f}"]
        for r in rs:
            lines.append("| " + " | ".join(fmt(r)) + " |")
        if len(rs) > 1:
            m = {k: median([r[k] for r in rs]) for k in ("macs_pct", "heldout", "test", "heldout_bn", "test_bn",
                                                         "finetuned_test", "candidates", "search_seconds",
                                                         "finetune_seconds")}
            lines.append("| **median** | " + " | ".join([
                f"{m['macs_pct']:.2f}", f"{m['heldout'] * 100:.2f}", f"{m['test'] * 100:.2f}",
                f"{m['heldout_bn'] * 100:.2f}", f"{m['test_bn'] * 100:.2f}", f"{m['finetuned_test'] * 100:.2f}",
                f"{m['candidates']:g}", f"{m['search_seconds']:.0f}", f"{m['finetune_seconds']:.0f}"]) + " |")
        warned = [r["seed"] for r in rs if r.get("queue_warnings")]
        if warned:
            lines.append(f"\nseeds {warned}: ModelOpt warned its BN queue was not filled (uncalibrated scores).")
        lines.append("")
    if result.get("missing"):
        lines += ["## Missing rows", "", *[f"- {m}" for m in result["missing"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = ensure_modelopt_venv()
        os.execv(str(python), [str(python), __file__, *(sys.argv[1:] if argv is None else argv)])
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from autoprune.data import load_data

    out = args.out or REPO / "bench" / "results" / f"modelopt_fastnas-{args.model}.json"
    command = "OMP_NUM_THREADS=1 bench/.venv-modelopt/bin/python bench/modelopt_fastnas.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from search_quality import machine_info

    mi = machine_info("cpu")
    machine = f"{mi['cpu']}, {mi['cores']} cores, {mi['torch_threads']} torch thread(s), CPU only"
    result = {"command": command, "versions": versions(), "machine": machine, "machine_info": mi,
              "settings": {"model": args.model, "divisor": args.divisor, "calib_batches": args.calib_batches,
                           "heldout": args.heldout, "epochs": args.epochs,
                           "finetune": "TrainConfig(epochs=1, lr=0.01, batch_size=128, schedule='cosine', seed=seed)"},
              "rows": []}
    if (args.resume or args.md_only) and out.exists():
        saved = json.loads(out.read_text())
        result["rows"] = saved["rows"]
        if args.md_only:
            result = {**saved, "missing": saved.get("missing", [])}
            out.with_suffix(".md").write_text(markdown(result))
            return
    budgets = [b if b.endswith("%") else b + "%" for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    order = [(b, seeds[0]) for b in budgets] + [(b, s) for s in seeds[1:] for b in budgets]
    done = {(r["budget"], r["seed"]) for r in result["rows"]}
    data = load_data("fashion-mnist", heldout_size=args.heldout)
    device = torch.device("cpu")

    def save():
        result["missing"] = [f"{b}FLOPs seed {s}" for b, s in order if (f"{b}FLOPs", s) not in
                             {(r["budget"], r["seed"]) for r in result["rows"]}]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(result))

    for budget, seed in order:
        if (f"{budget}FLOPs", seed) in done:
            continue
        print(f"=== {args.model} {budget} FLOPs seed {seed}", flush=True)
        row = one_row(args, budget, seed, data, device)
        print(json.dumps({k: v for k, v in row.items() if k != "widths"}), flush=True)
        result["rows"].append(row)
        save()
    save()


if __name__ == "__main__":
    main()
