"""Fine-tuning a search result: rebuild the pruned model from a run folder, train, re-test.

Uses the training split only (the held-out split the search scored on stays unseen) with a
cosine schedule, and reports test accuracy before and after. `distill` makes the unpruned model
the teacher (autoprune.train.distillation_loss).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from autoprune.rebuild import LoadedRun, load_run_model
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.train import TrainConfig, train


def finetune_run(run: Path, epochs: int, *, lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                 device: str = "auto", on_epoch=None, distill: bool = False, temperature: float = 4.0,
                 distill_weight: float = 0.5, loaded: LoadedRun | None = None) -> dict:
    """Fine-tune RUN/policy.json's pruned model; writes RUN/finetuned.pt and updates policy.json.

    `loaded`: the base and pruned model and data already in memory (a Python API run, whose model and data
    may exist only as objects); by default they are rebuilt from policy.json.
    """
    if epochs < 1:
        raise UserError("--epochs must be at least 1")
    if temperature <= 0 or not 0.0 <= distill_weight <= 1.0:
        raise UserError("--temperature must be positive and --distill-weight in [0, 1]")
    dev = resolve_device(device)
    loaded = loaded or load_run_model(run / "policy.json", device=device)
    pruned, data = loaded.pruned, loaded.data
    test = (lambda: None) if data.test is None else (lambda: accuracy(pruned.to(dev), data.test, dev)["top1"])
    before = test()
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, schedule="cosine", seed=seed,
                      teacher=loaded.base if distill else None, temperature=temperature, distill_weight=distill_weight)
    history = train(pruned, data, cfg, dev, on_epoch)
    after = test()
    torch.save(pruned.cpu(), run / "finetuned.pt")
    result = {"finetune_epochs": epochs, "finetune_lr": lr, "finetune_distill": distill,
              **({"distill_temperature": temperature, "distill_weight": distill_weight} if distill else {}),
              "test_accuracy_before_finetune": before,
              "finetuned_test_accuracy": after,
              "finetuned_heldout_accuracy": history[-1]["heldout_accuracy"] if history else None,
              "finetune_history": history}
    meta = json.loads((run / "policy.json").read_text())
    meta.update(result)
    (run / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    return result
