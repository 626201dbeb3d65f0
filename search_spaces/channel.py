"""Structured (channel) search space: one prune ratio per channel group.

Kept channels are rounded to a multiple of `round_to` (hardware likes multiples of 8 on wide
layers) and never fall below 1. The default, round_to=None ("auto"), picks per group the
largest of 8, 4, 2, 1 that still leaves at least 16 choices: 16-channel groups of CIFAR ResNets
keep single-channel resolution, while 128+-channel groups of ImageNet nets round to 8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def auto_round_to(channels: int) -> int:
    for step in (8, 4, 2):
        if channels // step >= 16:
            return step
    return 1


@dataclass
class ChannelSpace:
    channels: np.ndarray  # channels per group, unpruned
    max_ratio: float = 0.8
    round_to: int | None = None  # None = auto per group
    kind: str = "channel"
    steps: np.ndarray = field(init=False)
    min_kept: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in [0, 1), got {self.max_ratio}")
        n = self.channels.astype(np.int64)
        self.steps = np.array([self.round_to or auto_round_to(int(c)) for c in n], dtype=np.int64)
        self.steps = np.minimum(self.steps, n)
        lo = np.maximum(1, np.ceil((1.0 - self.max_ratio) * n - 1e-9)).astype(np.int64)
        self.min_kept = np.minimum(n, np.ceil(lo / self.steps).astype(np.int64) * self.steps)

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def max_ratios(self) -> np.ndarray:
        """Largest effective ratio per group (what the most pruning can remove)."""
        return 1.0 - self.min_kept / self.channels

    def kept(self, ratios: np.ndarray) -> np.ndarray:
        """Kept channels for the given ratios: nearest allowed multiple of the step, within bounds."""
        n = self.channels
        want = (1.0 - np.clip(np.asarray(ratios, dtype=np.float64), 0.0, 1.0)) * n
        snapped = np.round(want / self.steps) * self.steps
        return np.clip(snapped, self.min_kept, n)

    def ratios(self, kept: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(kept, dtype=np.float64) / self.channels

    def snap(self, ratios: np.ndarray) -> np.ndarray:
        """Ratios that apply_policy reproduces exactly (1 - kept/n)."""
        return self.ratios(self.kept(ratios))

    def describe(self) -> dict:
        return {"kind": self.kind, "max_ratio": self.max_ratio, "round_to": self.round_to or "auto"}
