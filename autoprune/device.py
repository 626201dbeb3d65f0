"""Device selection: "auto" means CUDA when present, else CPU. Nothing calls .cuda() directly."""
from __future__ import annotations

import torch

from autoprune.errors import UserError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}': auto, cpu, cuda or cuda:N") from None
