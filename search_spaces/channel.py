"""Structured (channel) search space: one prune ratio per channel group.

Kept channels are rounded to a multiple of `round_to` (hardware likes multiples of 8 on wide
layers) and never fall below 1. The default, round_to=None ("auto"), picks per group the
largest of 8, 4, 2, 1 that still leaves at least 32 choices: the 16- and 32-channel groups of
CIFAR ResNets keep single-channel resolution (a coarser grid could not hit a FLOPs target within
0.5%: one step would cost ~0.7% of a ResNet-20), while 256+-channel groups of ImageNet nets
round to 8. A group of grouped convolutions (divisor G: G chunks that shrink alike) keeps a
multiple of G, at least one channel per chunk; its step is G times the auto step of one chunk,
or the least common multiple of G and an explicit `round_to`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from autoprune.graph import PruningGraph


def auto_round_to(channels: int) -> int:
    for step in (8, 4, 2):
        if channels // step >= 32:
            return step
    return 1


@dataclass
class ChannelSpace:
    """Ratios address the graph's channel groups; costs are the graph's analytic polynomials."""

    graph: PruningGraph
    max_ratio: float = 0.8
    round_to: int | None = None  # None = auto per group
    stem_max_ratio: float | None = None  # the stem's group's own cap (a ResNet's stage-1 residual group)
    kind: str = "channel"
    channels: np.ndarray = field(init=False)
    steps: np.ndarray = field(init=False)
    min_kept: np.ndarray = field(init=False)
    levels: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in [0, 1), got {self.max_ratio}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        self.channels = self.graph.channels
        n = self.channels.astype(np.int64)
        divisors = np.array([g.divisor for g in self.graph.groups], dtype=np.int64)
        self.steps = np.array([math.lcm(self.round_to, int(d)) if self.round_to else int(d) * auto_round_to(int(c) // int(d))
                               for c, d in zip(n, divisors)], dtype=np.int64)
        self.steps = np.minimum(self.steps, n)
        if self.stem_max_ratio is not None and not 0.0 <= self.stem_max_ratio < 1.0:
            raise ValueError(f"stem_max_ratio must be in [0, 1), got {self.stem_max_ratio}")
        caps = np.full(len(n), self.max_ratio)
        if self.stem_max_ratio is not None and self.graph.stem_group is not None:
            caps[self.graph.stem_group] = min(self.stem_max_ratio, self.max_ratio)
        lo = np.maximum(divisors, np.ceil((1.0 - caps) * n - 1e-9)).astype(np.int64)
        self.min_kept = np.minimum(n, np.ceil(lo / self.steps).astype(np.int64) * self.steps)
        # allowed kept counts per group: multiples of the step from min_kept up, plus full width
        self.levels = [np.unique(np.append(np.arange(lo_i, c + 1, st), c))
                       for lo_i, c, st in zip(self.min_kept, n, self.steps)]

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def names(self) -> list[str]:
        return self.graph.group_names()

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

    def step(self, ratios: np.ndarray, i: int, direction: int) -> np.ndarray | None:
        """Ratios with group i pruned one grid step more (+1) or less (-1); None at a bound."""
        kept = self.kept(ratios)
        levels = self.levels[i]
        pos = int(np.searchsorted(levels, kept[i])) + (-1 if direction > 0 else 1)
        if not 0 <= pos < len(levels):
            return None
        kept = kept.copy()
        kept[i] = levels[pos]
        return self.ratios(kept)

    def macs(self, ratios: np.ndarray) -> float:
        return self.graph.macs(self.kept(ratios))

    def params(self, ratios: np.ndarray) -> float:
        return self.graph.params(self.kept(ratios))

    def apply(self, model: nn.Module, ratios: np.ndarray, *, criterion: str = "l2", seed: int = 0,
              orders: list | None = None) -> nn.Module:
        """Physically pruned copy (Torch-Pruning), channels chosen by `criterion` (or by fixed `orders`)."""
        from autoprune.policy import apply_policy

        return apply_policy(model, self.graph, self.kept(ratios), criterion=criterion, seed=seed, orders=orders)

    def describe(self) -> dict:
        return {"kind": self.kind, "max_ratio": self.max_ratio, "round_to": self.round_to or "auto",
                "stem_max_ratio": self.stem_max_ratio}
