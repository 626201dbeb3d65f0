"""Saving trained weights together with their model card (recipe, seed, accuracies)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def save_weights(model: nn.Module, path: Path, card: dict) -> None:
    """Write PATH (state_dict) and PATH.json + PATH.md (the model card) side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"# {card.get('model')} on {card.get('dataset')}", ""]
    for key, value in card.items():
        if key != "history":
            lines.append(f"- **{key}**: {value}")
    if card.get("history"):
        lines += ["", "| epoch | loss | held-out acc | seconds |", "|---|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['heldout_accuracy']:.4f} | {h['seconds']:.0f} |"
                  for h in card["history"]]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
