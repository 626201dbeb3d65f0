"""Policies (group -> prune ratio), their versioned JSON form, and physical application.

`apply_policy` returns a pruned *copy* built with Torch-Pruning: for every group it scores the
channels with the chosen importance criterion on the unpruned model, then removes the lowest
scored channels of all groups, so the result does not depend on the order groups are visited.
A group of grouped convolutions (`Group.divisor` chunks) is ranked as Torch-Pruning's MetaPruner
ranks it: scores averaged over the chunks, and the same positions removed from every chunk.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError
from autoprune.graph import PruningGraph, _dependency_graph, chunk_positions
from autoprune.importance import CRITERIA, DATA_CRITERIA, importance, prepare  # noqa: F401 (CRITERIA re-exported)

POLICY_FORMAT = "autoprune.policy"
POLICY_VERSION = 1


@dataclass
class Policy:
    """Prune ratio per group name (effective: 1 - kept/channels)."""

    ratios: dict[str, float]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_vector(cls, graph: PruningGraph, ratios: np.ndarray) -> Policy:
        return cls({g.name: round(float(r), 6) for g, r in zip(graph.groups, ratios)})

    def vector(self, graph: PruningGraph) -> np.ndarray:
        unknown = set(self.ratios) - set(graph.group_names())
        if unknown:
            raise UserError(f"policy names group '{sorted(unknown)[0]}' that this model does not have")
        return np.array([self.ratios.get(g.name, 0.0) for g in graph.groups], dtype=np.float64)

    def key(self) -> str:
        """Stable identity for caching and the study: the rounded ratios, hashed."""
        text = json.dumps({k: round(v, 6) for k, v in sorted(self.ratios.items())})
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, **self.meta, "ratios": self.ratios}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read policy {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT or not isinstance(data.get("ratios"), dict):
            raise UserError(f"{path} is not an autoprune policy file")
        if data.get("version", 0) > POLICY_VERSION:
            raise UserError(f"{path} has policy format version {data['version']}; this autoprune reads {POLICY_VERSION}")
        ratios = {str(k): float(v) for k, v in data.pop("ratios").items()}
        return cls(ratios, data)


def _chunk_order(dg: tp.DependencyGraph, root: nn.Module, g, imp: tp.importance.Importance) -> torch.Tensor:
    """Positions within one of the group's chunks, least important first (scores averaged over chunks)."""
    fn = dg.get_pruner_of_module(root).prune_out_channels
    scores = imp(dg.get_pruning_group(root, fn, idxs=list(range(g.channels))))
    size = g.channels // g.divisor
    if scores is None:
        return torch.arange(size)
    return torch.argsort(scores.view(g.divisor, size).mean(dim=0), stable=True)


def removal_orders(model: nn.Module, graph: PruningGraph, *, criterion: str = "l2", seed: int = 0,
                   batches: list | None = None) -> list[torch.Tensor]:
    """Per group, its chunk positions in the order `apply_policy` removes them (the criterion on `model`).

    For weights that must be pruned as `model`'s would be (MetaPruning's generated ones), and for
    the data-aware criteria (scored once on `batches`, labelled training images): pass the result
    to `apply_policy(orders=...)`.
    """
    scratch = copy.deepcopy(model).cpu().eval()
    modules = dict(scratch.named_modules())
    imp = importance(criterion, seed)
    prepare(scratch, imp, criterion, batches or [])  # before tracing: the trace's forward must not overwrite
    dg = _dependency_graph(scratch, graph.example())
    return [_chunk_order(dg, modules[g.name], g, imp) for g in graph.groups]


def apply_policy(model: nn.Module, graph: PruningGraph, kept: np.ndarray, *, criterion: str = "l2",
                 seed: int = 0, orders: list[torch.Tensor] | None = None) -> nn.Module:
    """A physically pruned copy of `model` keeping `kept[g]` channels of every group g.

    `orders` (from `removal_orders`) fixes which channels go instead of scoring `model`'s own weights.
    """
    pruned = copy.deepcopy(model).cpu().eval()
    dg, plans = removal_plan(pruned, graph, kept, criterion=criterion, seed=seed, orders=orders)
    for root, fn, idxs in plans:
        dg.get_pruning_group(root, fn, idxs=idxs).prune()
    return pruned


def removal_plan(model: nn.Module, graph: PruningGraph, kept: np.ndarray, *, criterion: str = "l2",
                 seed: int = 0, orders: list[torch.Tensor] | None = None) -> tuple[tp.DependencyGraph, list]:
    """Torch-Pruning's dependency graph of `model` and, for every group that loses channels, (root module,
    its pruning function, the channel indices that go): what `apply_policy` prunes and `autoprune.masks`
    reads off as masks. The random calls happen in one fixed order, so even the random criterion repeats."""
    modules = dict(model.named_modules())
    dg = _dependency_graph(model, graph.example())
    if orders is None and criterion in DATA_CRITERIA:
        raise UserError(f"criterion '{criterion}' ranks channels with training data: pass its removal orders")
    imp = importance(criterion, seed) if orders is None else None
    plans = []
    for g in graph.groups:
        n_remove = g.channels - int(kept[g.index])
        if n_remove <= 0:
            continue
        if n_remove % g.divisor:
            raise UserError(f"group {g.name} keeps {int(kept[g.index])} of {g.channels} channels; its grouped "
                            f"convolution needs a multiple of {g.divisor}")
        root = modules[g.name]
        order = orders[g.index] if orders is not None else _chunk_order(dg, root, g, imp)
        fn = dg.get_pruner_of_module(root).prune_out_channels
        plans.append((root, fn, chunk_positions(g.channels, g.divisor, order[:n_remove // g.divisor].tolist())))
    return dg, plans
