"""Exports rebuilt in their own tools (NNI 2.10.1, Torch-Pruning, onnxruntime) against autoprune's model.

A search's exports are only worth something if the tool a user prunes, fine-tunes or deploys with
rebuilds the model autoprune scored. This bench takes one search result, runs `autoprune export` on
it, and rebuilds the pruned model the way a user of each tool would:

- NNI 2.10.1 (the last NNI with these pruners), in a virtualenv of its own (bench/.venv-nni, made on
  first use: `pip install nni==2.10.1 tensorboard` plus this environment's torch and torchvision):
  ``L2NormPruner(model, config_list)`` + ``ModelSpeedup``, the same ``mode="dependency_aware"``, and
  ``ModelSpeedup(model, dummy_input, nni_masks.pt)`` (bench/export_roundtrip_nni.py);
- Torch-Pruning: `apply_tp_ratio_dict` with tp_pruning_ratio_dict.json and policy.json (the default
  importance: the policy's criterion), and with importance "l1" (the default before issue 16);
- onnxruntime on pruned.onnx, at batch 1 and batch 4; pruned.pt through torch.load.

Every model rebuilt from the unpruned weights gets the adaptive-BN recalibration the search gave its
candidates (autoprune.evaluate.recalibrate_bn on the run's calibration batches) before it is scored on
the run's held-out split; the .pt and .onnx files hold autoprune's already recalibrated model and are
scored as they are. MACs are Torch-Pruning's count_ops_and_params at batch 1 (for the ONNX rows: of the
module the file was exported from). Each row also gives the largest logit difference from autoprune's
model over the held-out split.

    OMP_NUM_THREADS=1 .venv/bin/python bench/export_roundtrip.py --run /tmp/rt-run
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch.utils.data import DataLoader

from autoprune.rebuild import load_run_model
from autoprune.data import CALIB_BATCH
from autoprune.evaluate import accuracy, calibration_batches, recalibrate_bn

sys.path.insert(0, str(Path(__file__).parent))
from search_quality import jsonable, machine_info  # noqa: E402

log = logging.getLogger("export_roundtrip")
REPO = Path(__file__).resolve().parent.parent
NNI_VERSION = "2.10.1"
TARGET_PP = 0.1  # issue 16: held-out within 0.1 pp of autoprune's model, MACs exactly
TARGET_ROWS = ("nni_masks", "tp_policy", "onnx_b1", "onnx_b4")
LABELS = {
    "autoprune": "autoprune (`load_run_model`: apply_policy + adaptive BN)",
    "pt_file": "pruned.pt (`torch.load`)",
    "nni_config_plain": "NNI `L2NormPruner(config_list)` + `ModelSpeedup`",
    "nni_config_dependency_aware": "NNI `L2NormPruner(config_list, mode=\"dependency_aware\")` + `ModelSpeedup`",
    "nni_masks": "NNI `ModelSpeedup(model, dummy_input, nni_masks.pt)`",
    "tp_policy": "Torch-Pruning `apply_tp_ratio_dict(..., policy=policy.json)` (importance: the policy's, l2)",
    "tp_l1": "Torch-Pruning `apply_tp_ratio_dict(..., importance=\"l1\")` (the default before issue 16)",
    "onnx_b1": "onnxruntime, pruned.onnx, batch 1",
    "onnx_b4": "onnxruntime, pruned.onnx, batch 4",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("/tmp/rt-run"),
                   help="run folder of `autoprune search`; searched first (the flags below) when it has no policy.json")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budget", default="50%FLOPs")
    p.add_argument("--agent", default="tpe")
    p.add_argument("--evals", type=int, default=60)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=10)
    p.add_argument("--nni-venv", type=Path, default=REPO / "bench" / ".venv-nni")
    p.add_argument("--work", type=Path, default=Path("/tmp/export_roundtrip"), help="scratch folder (emptied)")
    p.add_argument("--threads", type=int, default=1, help="torch threads here and in the NNI process")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    return p.parse_args(argv)


def run(cmd: list[str], log_file: Path | None = None, **kwargs) -> None:
    """Run a command; its output to `log_file` (NNI logs every replaced module), the tail shown on failure."""
    log.info("$ %s", shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if log_file is not None:
        log_file.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")


def ensure_search(args: argparse.Namespace) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "autoprune"), "search", "--budget", args.budget, args.model,
           "--agent", args.agent, "--evals", str(args.evals), "--heldout", str(args.heldout),
           "--calib-batches", str(args.calib_batches), "--out", str(args.run)]
    if not (args.run / "policy.json").exists():
        run(cmd)
    return cmd


def ensure_nni_venv(venv: Path) -> str:
    """The NNI virtualenv's python: NNI 2.10.1, tensorboard (its pruners import it), and our torch."""
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable if sys.prefix == sys.base_prefix else "python3", "-m", "venv", str(venv)])
        import torchvision

        run([str(python), "-m", "pip", "install", "-q", f"nni=={NNI_VERSION}", "tensorboard",
             f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"])
    out = subprocess.run([str(python), "-c", "import nni; print(nni.__version__)"], capture_output=True, text=True)
    if out.returncode or out.stdout.strip() != NNI_VERSION:
        raise SystemExit(f"{venv} has no NNI {NNI_VERSION}: {out.stdout}{out.stderr[-2000:]}")
    return str(python)


def logits(fn, split, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of `fn` (tensor batch -> numpy logits) over `split`, in order, and the labels."""
    outs, labels = [], []
    for x, y in DataLoader(split, batch_size=batch):
        outs.append(fn(x))
        labels.append(y.numpy())
    return np.concatenate(outs), np.concatenate(labels)


def score_module(model: torch.nn.Module, example: torch.Tensor, data, calib, reference: np.ndarray | None,
                 *, recalibrate: bool) -> dict:
    model = model.cpu().eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    if recalibrate:
        recalibrate_bn(model, calib, torch.device("cpu"))
    model = model.eval()
    with torch.inference_mode():
        out, labels = logits(lambda x: model(x).numpy(), data.heldout, 256)
    return row(out, labels, reference, macs=macs, params=params,
               top1_evaluator=accuracy(model, data.heldout, torch.device("cpu"))["top1"])


def row(out: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, **extra) -> dict:
    r = {"heldout": float((out.argmax(1) == labels).mean()), **extra}
    if reference is not None:
        r["max_logit_diff"] = float(np.abs(out - reference).max())
        r["same_predictions"] = float((out.argmax(1) == reference.argmax(1)).mean())
    return r


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    search_cmd = ensure_search(args)
    nni_python = ensure_nni_venv(args.nni_venv)
    work = args.work
    if work.exists():
        import shutil

        shutil.rmtree(work)
    export_dir = work / "export"
    cli = str(Path(sys.executable).parent / "autoprune")
    run([cli, "export", str(args.run / "policy.json"), "--out", str(export_dir), "--device", "cpu"])
    files = sorted(p.name for p in export_dir.iterdir())

    loaded = load_run_model(args.run / "policy.json", device="cpu")
    meta, data, graph = loaded.policy.meta, loaded.data, loaded.graph
    calib = calibration_batches(data.train, meta.get("calib_batches", 20), CALIB_BATCH, meta.get("seed", 0))
    example = torch.randn(1, *graph.input_shape)
    results: dict[str, dict] = {}
    ours = loaded.pruned.cpu().eval()
    with torch.inference_mode():
        reference, _ = logits(lambda x: ours(x).numpy(), data.heldout, 256)
    results["autoprune"] = score_module(ours, example, data, calib, reference, recalibrate=False)
    results["pt_file"] = score_module(torch.load(export_dir / "pruned.pt", weights_only=False), example, data, calib,
                                      reference, recalibrate=False)

    # NNI, in its own virtualenv: the unpruned model pickled, rebuilt three ways, pickled back
    torch.save(loaded.base.cpu().eval(), export_dir / "base.pt")
    (export_dir / "job.json").write_text(json.dumps({"repo": str(REPO), "input_shape": list(graph.input_shape),
                                                     "threads": args.threads}))
    run([nni_python, str(REPO / "bench" / "export_roundtrip_nni.py"), str(export_dir)],
        log_file=work / "nni.log", env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    nni = json.loads((export_dir / "nni_results.json").read_text())
    for name, res in nni["variants"].items():
        if "error" in res:
            results[name] = {"error": res["error"]}
            continue
        rebuilt = torch.load(export_dir / res["file"], weights_only=False)
        results[name] = score_module(rebuilt, example, data, calib, reference, recalibrate=True)

    # Torch-Pruning, as its user would with the exported files
    from autoprune.export import apply_tp_ratio_dict

    ratio_file = export_dir / "tp_pruning_ratio_dict.json"
    tp_policy = apply_tp_ratio_dict(copy.deepcopy(loaded.base).cpu(), example, ratio_file,
                                    policy=args.run / "policy.json")
    results["tp_policy"] = score_module(tp_policy, example, data, calib, reference, recalibrate=True)
    tp_l1 = apply_tp_ratio_dict(copy.deepcopy(loaded.base).cpu(), example, ratio_file, importance="l1")
    results["tp_l1"] = score_module(tp_l1, example, data, calib, reference, recalibrate=True)

    # onnxruntime on the exported file, at two batch sizes
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_dir / "pruned.onnx"), providers=["CPUExecutionProvider"])
    onnx_shape = [d if isinstance(d, int) else str(d) for d in session.get_inputs()[0].shape]
    for batch in (1, 4):
        out, labels = logits(lambda x: session.run(None, {"input": x.numpy()})[0], data.heldout, batch)
        results[f"onnx_b{batch}"] = row(out, labels, reference, macs=results["autoprune"]["macs"],
                                        params=results["autoprune"]["params"], onnx_input_shape=onnx_shape)

    base_macs = meta["base_macs"]
    for r in results.values():
        if "macs" in r:
            r["macs_fraction"] = r["macs"] / base_macs
    ref = results["autoprune"]
    verdict = {name: ("macs" in results[name] and results[name]["macs"] == ref["macs"]
                      and abs(results[name]["heldout"] - ref["heldout"]) <= TARGET_PP / 100 + 1e-12)
               for name in TARGET_ROWS}
    import onnxruntime

    machine = machine_info("cpu") | {"nni": nni["nni_version"], "onnxruntime": onnxruntime.__version__}
    result = {"command": "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python", "bench/export_roundtrip.py",
                                                              *(argv if argv is not None else sys.argv[1:])]),
              "search_command": "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/autoprune", *search_cmd[1:]]),
              "policy": {k: meta.get(k) for k in ("model", "criterion", "agent", "seed", "budgets", "macs",
                                                  "base_macs", "heldout_accuracy", "heldout_images", "calib_batches")},
              "export_files": files, "results": results, "target": {"rows": list(TARGET_ROWS), "pp": TARGET_PP,
                                                                     "met": verdict, "all_met": all(verdict.values())},
              "nni_log": str(work / "nni.log"), "seconds": round(time.perf_counter() - t0, 1), "machine": machine}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"export_roundtrip-{meta['model']}"
    stem.with_suffix(".json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    log.info("wrote %s.{md,json}", stem)
    return result


def markdown(result: dict) -> str:
    p, m, res = result["policy"], result["machine"], result["results"]
    ref = res["autoprune"]
    lines = [f"# Exports rebuilt in their tools: {p['model']}, {', '.join(p['budgets'])}, {p['agent']} "
             f"(seed {p['seed']}, criterion {p['criterion']})", "", "```",
             result["search_command"], result["command"], "```", "",
             f"The search's policy (held-out {100 * p['heldout_accuracy']:.2f}% on {p['heldout_images']} images, "
             f"{100 * p['macs'] / p['base_macs']:.2f}% MACs) exported with `autoprune export` "
             f"({', '.join(result['export_files'])}) and rebuilt in each tool from the unpruned shipped weights. "
             f"Every rebuilt model gets the search's adaptive-BN recalibration (`recalibrate_bn`, the run's "
             f"{p['calib_batches']}×64 calibration images, seed {p['seed']}) before it is scored on the run's "
             "held-out split; pruned.pt and pruned.onnx hold autoprune's recalibrated model and are scored as they "
             "are. MACs: `tp.utils.count_ops_and_params` at batch 1 (ONNX rows: the module the file came from). "
             "Max |Δ logit| and same-prediction share: against autoprune's model on the held-out split.", "",
             "| rebuilt with | MACs | MACs % | held-out % | Δ pp vs autoprune | max \\|Δ logit\\| "
             "| same predictions |",
             "|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        r = res.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: `{r['error'][:200]}` | | | | | |")
            continue
        diff = "–" if name == "autoprune" else f"{100 * (r['heldout'] - ref['heldout']):+.1f}"
        logit = "–" if "max_logit_diff" not in r or name == "autoprune" else f"{r['max_logit_diff']:.1e}"
        same = "–" if name == "autoprune" else f"{100 * r['same_predictions']:.1f}%"
        lines.append(f"| {label} | {int(r['macs']):,} | {100 * r['macs_fraction']:.2f} | {100 * r['heldout']:.1f} | "
                     f"{diff} | {logit} | {same} |")
    t = result["target"]
    met = [LABELS[n].split(" (")[0] for n, ok in t["met"].items() if ok]
    missed = [LABELS[n].split(" (")[0] for n, ok in t["met"].items() if not ok]
    lines += ["", f"Target (issue 16): every export rebuilt in its tool -- NNI with the masks, Torch-Pruning, "
              f"onnxruntime -- gives autoprune's MACs exactly and held-out within {t['pp']} pp: "
              + ("**met**." if t["all_met"] else f"**missed** by {', '.join(missed)}.")
              + (f" Met by: {', '.join(met)}." if met and not t["all_met"] else ""),
              "", f"pruned.onnx input shape as onnxruntime reports it: `{res['onnx_b1'].get('onnx_input_shape')}`. "
              f"NNI {m['nni']} in bench/.venv-nni, torch {m['torch']}, Torch-Pruning {m['torch_pruning']}, "
              f"onnxruntime {m['onnxruntime']}; {m['cpu']}, {m['torch_threads']} torch thread(s), {m['date']}, "
              f"commit {(m['commit'] or '?')[:7]}; {result['seconds']:.0f} s without the search."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
