"""Versioned files of trained parts (GNN policies, PruningNets): read safely, refused in one line.

`torch.load(weights_only=True)`: a file from elsewhere cannot run code when it is read.
"""
from __future__ import annotations

from pathlib import Path

import torch

from autoprune.errors import UserError


def load_versioned(path: Path, fmt: str, version: int, what: str) -> dict:
    """The dict saved at `path`, checked to be `what` of format `fmt` at `version`."""
    if not Path(path).is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise UserError(f"cannot read {what} {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{path} is not an autoprune {what}")
    if data.get("version") != version:
        raise UserError(f"{path} is {what} version {data.get('version')}; this autoprune reads {version}")
    return data


def save_atomic(obj: dict, path: Path) -> Path:
    """torch.save through a temporary file and a rename: an interrupt never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path
