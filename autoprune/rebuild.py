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
from autoprune.run_summary import RunSummary
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model


@dataclass
class LoadedRun:
    policy: Policy
    base: nn.Module
    pruned: nn.Module
    graph: PruningGraph
    data: DataBundle


BASE_MODEL_FILE = "base_model.pt"  # a Python API run's unpruned model: policy.json cannot name an object


def run_calibration(meta: RunSummary, train, batch_to_inputs=None) -> list:
    """The calibration batches the search drew from `train` (its count, size and seed): a rebuild refits and
    recalibrates BN on the same images, so it scores what the search reported."""
    return calibration_batches(train, meta.calib_batches, CALIB_BATCH, meta.seed, batch_to_inputs)


def load_run_model(policy_path: Path, *, weights: str | None = None, data: str | None = None,
                   device: str = "auto", recalibrate: bool = True, refit: bool = True) -> LoadedRun:
    """Base model (from the policy's model/weights/data, or overrides) pruned as the policy says.

    BN statistics are recalibrated on training batches, as during the search, unless the
    caller asks otherwise, so the rebuilt model scores what the search reported. `refit=False`
    leaves out the least-squares refit of a run that refitted (a fine-tune's other starting point).
    """
    if not Path(policy_path).exists():
        raise UserError(f"policy file not found: {policy_path}")
    policy = Policy.load(policy_path)
    meta = RunSummary.read(policy.meta)
    if meta.model is None:
        raise UserError(f"{policy_path} does not say which model it prunes")
    if meta.space.get("kind", "channel") != "channel":
        raise UserError("only channel policies can be applied physically; unstructured ones are masks")
    spec = data or meta.data
    if spec == PYTHON_DATA:
        raise UserError(f"{policy_path} was searched on data given as Python objects: pass --data NAME "
                        "(or, in Python, autoprune.apply(model, policy, train=...))")
    data_bundle = load_data(spec, heldout_size=meta.heldout_images or 5000)
    saved_base = Path(policy_path).parent / BASE_MODEL_FILE
    if meta.weights == PYTHON_MODEL and weights is None and saved_base.exists():
        base = torch.load(saved_base, map_location="cpu", weights_only=False)
    else:
        weights = weights or (None if meta.weights in (None, "shipped") else meta.weights)
        bundle = build_model(meta.model, num_classes=data_bundle.num_classes,
                             in_channels=data_bundle.in_channels, dataset=data_bundle.name, weights=weights)
        base = bundle.model
        data_bundle = data_bundle.with_channels(bundle.in_channels)
    calib = run_calibration(meta, data_bundle.train)
    pruned, graph = prune_as_policy(base, policy, calib if recalibrate or meta.reconstruction else None,
                                    device, recalibrate=recalibrate, refit=refit,
                                    input_shape=(data_bundle.in_channels, *data_bundle.input_size))
    return LoadedRun(policy, base, pruned, graph, data_bundle)


PYTHON_MODEL = "python object"  # policy.json's "weights" of a model handed to autoprune.search as an object
PYTHON_DATA = "python objects"  # its "data" when the splits were handed over as Datasets/DataLoaders


def prune_as_policy(base: nn.Module, policy: Policy, calib: list | None, device: str = "auto", *,
                    recalibrate: bool = True, refit: bool = True, input_shape: tuple | None = None,
                    example_inputs=None) -> tuple[nn.Module, PruningGraph]:
    """A pruned copy of `base` as `policy` (with its policy.json meta) says: the same groups, kept channels,
    channel ranking, least-squares refit when the search refitted (and `refit`), then adaptive BN on `calib`
    (None: no recalibration, for a model without BN or a caller who recalibrates itself). `input_shape`
    stands in for a policy.json that does not record it; `example_inputs` for a search traced with the
    user's own."""
    meta = RunSummary.read(policy.meta)
    if meta.example_inputs and example_inputs is None:
        raise UserError(f"this policy's search traced the model with your example_inputs (a "
                        f"{meta.example_inputs}): pass the same example_inputs")
    input_shape = meta.input_shape or input_shape  # a hand-written policy: the data's shape
    if not input_shape:
        raise UserError("the policy does not say the model's input shape (input_shape in policy.json)")
    # the groups the search saw: the same layers left out, the same ones frozen (probed as deep as it probed)
    space_meta = meta.space
    deepest = max(space_meta.get("max_ratio", 0.8), space_meta.get("stem_max_ratio") or 0.0)
    graph = build_graph(base, tuple(input_shape), model_id=meta.model or "model",
                        ignore=meta.ignore or [], prune_stem=bool(meta.prune_stem),
                        example_inputs=example_inputs, deepest=deepest)
    round_to = space_meta.get("round_to")
    space = ChannelSpace(graph, max_ratio=0.999, round_to=None if round_to in (None, "auto") else int(round_to))
    ratios = policy.vector(graph)
    kept = meta.kept_channels
    kept_vec = (torch.tensor([kept[g.name] for g in graph.groups]).double().numpy() if kept
                else space.kept(ratios))
    orders = meta.channel_orders  # written for data-aware criteria: their ranking needs the run's batches
    if orders is not None:
        orders = [torch.tensor(orders[g.name]) for g in graph.groups]
    criterion, seed = meta.criterion, meta.seed
    pruned = apply_policy(base, graph, kept_vec, criterion=criterion, seed=seed, orders=orders)
    dev = resolve_device(device)
    if meta.reconstruction and refit:  # the search refitted its model on these calibration images: so do we
        if calib is None:
            raise UserError("this policy's search refitted the pruned layers by least squares: give training "
                            "data to refit the same way")
        from autoprune.policy import removal_orders
        from autoprune.reconstruct import Reconstructor

        orders = orders or removal_orders(base, graph, criterion=criterion, seed=seed)
        Reconstructor(base, graph, orders, calib, dev, seed)(pruned, kept_vec)
    if recalibrate and calib:
        recalibrate_bn(pruned.to(dev), calib, dev)
    return pruned, graph
