"""Rebuilding a pruned model from a policy file and the base model it was searched on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.data import CALIB_BATCH, DataBundle, load_data
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.evaluate import calibration_batches, recalibrate_bn
from autoprune.graph import PruningGraph, build_graph
from autoprune.policy import Policy, apply_policy
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model


@dataclass
class LoadedRun:
    policy: Policy
    base: nn.Module
    pruned: nn.Module
    graph: PruningGraph
    data: DataBundle


def load_run_model(policy_path: Path, *, weights: str | None = None, data: str | None = None,
                   device: str = "auto", recalibrate: bool = True) -> LoadedRun:
    """Base model (from the policy's model/weights/data, or overrides) pruned as the policy says.

    BN statistics are recalibrated on training batches, as during the search, unless the
    caller asks otherwise, so the rebuilt model scores what the search reported.
    """
    if not Path(policy_path).exists():
        raise UserError(f"policy file not found: {policy_path}")
    policy = Policy.load(policy_path)
    meta = policy.meta
    if "model" not in meta:
        raise UserError(f"{policy_path} does not say which model it prunes")
    if meta.get("space", {}).get("kind", "channel") != "channel":
        raise UserError("only channel policies can be applied physically; unstructured ones are masks")
    data_bundle = load_data(data or meta.get("data", "fashion-mnist"), heldout_size=meta.get("heldout_images", 5000))
    weights = weights or (None if meta.get("weights") in (None, "shipped") else meta["weights"])
    bundle = build_model(meta["model"], num_classes=data_bundle.num_classes, in_channels=data_bundle.in_channels,
                         dataset=data_bundle.name, weights=weights)
    data_bundle = data_bundle.with_channels(bundle.in_channels)
    input_shape = tuple(meta.get("input_shape") or (data_bundle.in_channels, *data_bundle.input_size))
    # the groups the search saw: the same layers left out
    graph = build_graph(bundle.model, input_shape, model_id=meta["model"], ignore=meta.get("ignore") or [],
                        prune_stem=bool(meta.get("prune_stem", False)))
    space_meta = meta.get("space", {})
    round_to = space_meta.get("round_to")
    space = ChannelSpace(graph, max_ratio=0.999, round_to=None if round_to in (None, "auto") else int(round_to))
    ratios = policy.vector(graph)
    kept = meta.get("kept_channels")
    kept_vec = (torch.tensor([kept[g.name] for g in graph.groups]).double().numpy() if kept
                else space.kept(ratios))
    orders = meta.get("channel_orders")  # written for data-aware criteria: their ranking needs the run's batches
    if orders is not None:
        orders = [torch.tensor(orders[g.name]) for g in graph.groups]
    criterion, seed = meta.get("criterion", "l2"), meta.get("seed", 0)
    pruned = apply_policy(bundle.model, graph, kept_vec, criterion=criterion, seed=seed, orders=orders)
    dev = resolve_device(device)
    calib = calibration_batches(data_bundle.train, meta.get("calib_batches", 20), CALIB_BATCH, seed)
    if meta.get("reconstruction"):  # the search refitted its model on these calibration images: so do we
        from autoprune.policy import removal_orders
        from autoprune.reconstruct import Reconstructor

        orders = orders or removal_orders(bundle.model, graph, criterion=criterion, seed=seed)
        Reconstructor(bundle.model, graph, orders, calib, dev, seed)(pruned, kept_vec)
    if recalibrate:
        recalibrate_bn(pruned.to(dev), calib, dev)
    return LoadedRun(policy, bundle.model, pruned, graph, data_bundle)
