"""Fine-tuning a search result: rebuild the pruned model from a run folder, train, re-test.

Uses the training split only (the held-out split the search scored on stays unseen) with a
cosine schedule, and reports test accuracy before and after. `distill` makes the unpruned model
the teacher (autoprune.train.distillation_loss).

`start` picks the weights training starts from when the search refitted its models: "refit" (the
run's pruned.pt: least-squares refit + adaptive BN, the better model before training) or "plain"
(the kept channels' own weights + adaptive BN). Neither wins everywhere after a 1-epoch fine-tune
(bench/results/finetune_start.md): plain lifted TPE's ResNet-56 winners at 30% FLOPs on every seed
(+0.27 pp median) and not uniform's or global's; refit was ahead on ResNet-20 at 20%, where the
plain model starts near chance; over all 18 pairs they are even.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from autoprune.rebuild import LoadedRun, load_run_model, prune_as_policy, run_calibration
from autoprune.run_summary import RunSummary
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.train import TrainConfig, train

FINETUNE_STARTS = ("refit", "plain")


def finetune_run(run: Path, epochs: int, *, lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                 device: str = "auto", on_epoch=None, distill: bool = False, temperature: float = 4.0,
                 distill_weight: float = 0.5, loaded: LoadedRun | None = None, start: str = "refit") -> dict:
    """Fine-tune RUN/policy.json's pruned model; writes RUN/finetuned.pt and updates policy.json.

    `loaded`: the base and pruned model and data already in memory (a Python API run, whose model and data
    may exist only as objects); by default they are rebuilt from policy.json. `start`: "refit" or "plain"
    (the module's docstring).
    """
    if epochs < 1:
        raise UserError("--epochs must be at least 1")
    if temperature <= 0 or not 0.0 <= distill_weight <= 1.0:
        raise UserError("--temperature must be positive and --distill-weight in [0, 1]")
    if start not in FINETUNE_STARTS:
        raise UserError(f"--start must be one of {', '.join(FINETUNE_STARTS)}, got '{start}'")
    dev = resolve_device(device)
    loaded = starting_point(run, loaded, start, device)
    pruned, data = loaded.pruned, loaded.data
    test = (lambda: None) if data.test is None else (lambda: accuracy(pruned.to(dev), data.test, dev)["top1"])
    before = test()
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, schedule="cosine", seed=seed,
                      teacher=loaded.base if distill else None, temperature=temperature, distill_weight=distill_weight)
    history = train(pruned, data, cfg, dev, on_epoch)
    after = test()
    torch.save(pruned.cpu(), run / "finetuned.pt")
    result = {"finetune_epochs": epochs, "finetune_lr": lr, "finetune_distill": distill, "finetune_start": start,
              **({"distill_temperature": temperature, "distill_weight": distill_weight} if distill else {}),
              "test_accuracy_before_finetune": before,
              "finetuned_test_accuracy": after,
              "finetuned_heldout_accuracy": history[-1]["heldout_accuracy"] if history else None,
              "finetune_history": history}
    meta = json.loads((run / "policy.json").read_text())
    meta.update(result)
    (run / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    return result


def starting_point(run: Path, loaded: LoadedRun | None, start: str, device: str) -> LoadedRun:
    """The run's models with the pruned one `start` asks for: rebuilt from policy.json, or from the base model
    in memory when the run's pruned model there is refitted and "plain" is asked."""
    if loaded is None:
        return load_run_model(run / "policy.json", device=device, refit=start == "refit")
    meta = RunSummary.read(loaded.policy.meta)
    if start == "refit" or not meta.reconstruction:
        return loaded
    pruned, _ = prune_as_policy(loaded.base, loaded.policy, run_calibration(meta, loaded.data.train), device,
                                refit=False)
    return dataclasses.replace(loaded, pruned=pruned)
