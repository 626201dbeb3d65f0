"""Which channels a policy keeps, per layer, as the masks NNI's ``ModelSpeedup`` takes.

A ratio (NNI's ``config_list``, Torch-Pruning's ``pruning_ratio_dict``) fixes how many channels a
layer keeps, not which: the target tool then ranks channels by its own criterion, and NNI 2.x does
so layer by layer (coupled residual layers end up with different channels, which its speedup
resolves by keeping their union) or, dependency-aware, with a group score that differs from
Torch-Pruning's. Either way the rebuilt model is not the one autoprune scored. The masks name the
exact channels instead: they come from the same removal orders `apply_policy` used (the run's
``channel_orders`` for data-aware criteria, else the criterion ranking the unpruned weights), so
``ModelSpeedup(base, dummy_input, masks).speedup_model()`` rebuilds autoprune's architecture and
channels, and `apply_masks` (zeroing, as NNI's simulated pruning does) gives its outputs.

Format (NNI 2.x, as ``Pruner.compress()`` returns and ``export_model(mask_path=...)`` saves it):
``{module_name: {"weight": mask, "bias": mask}}``, masks of the parameters' shapes and dtypes, ones
for kept and zeros for removed output channels; ``"bias"`` only where the layer has one. Every
conv, linear and batch-norm layer whose output channels the policy removes is listed, batch norms
included so that a removed channel is exactly zero after its normalisation.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.graph import PruningGraph
from autoprune.importance import DATA_CRITERIA
from autoprune.policy import Policy, removal_plan
from autoprune.run_summary import RunSummary

log = logging.getLogger(__name__)

NNI_MASKS_FILE = "nni_masks.pt"
_MASKED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def policy_kept(graph: PruningGraph, policy: Policy) -> list[int]:
    """Kept channels per group: policy.json's ``kept_channels`` when written, else round((1 - r) * n)."""
    recorded = RunSummary.read(policy.meta).kept_channels
    if recorded:
        missing = [g.name for g in graph.groups if g.name not in recorded]
        if missing:
            raise UserError(f"policy's kept_channels does not name group {missing[0]}")
        return [int(recorded[g.name]) for g in graph.groups]
    vector = policy.vector(graph)
    return [int(round((1.0 - r) * g.channels)) for g, r in zip(graph.groups, vector)]


def policy_orders(graph: PruningGraph, policy: Policy) -> list[torch.Tensor] | None:
    """The run's removal orders (policy.json's ``channel_orders``, written for data-aware criteria), or None."""
    orders = RunSummary.read(policy.meta).channel_orders
    if orders is None:
        return None
    missing = [g.name for g in graph.groups if g.name not in orders]
    if missing:
        raise UserError(f"policy's channel_orders does not name group {missing[0]}")
    return [torch.tensor(orders[g.name]) for g in graph.groups]


def removed_channels(base: nn.Module, graph: PruningGraph, policy: Policy, *,
                     orders: Sequence[torch.Tensor] | None = None) -> dict[str, list[int]]:
    """Output channels the policy removes, per conv / linear / batch-norm module name of `base`.

    Mirrors `apply_policy` step by step -- one dependency graph of an unpruned copy, each group's
    removal order from `orders` (default: policy.json's ``channel_orders``) or from the policy's
    criterion and seed scored on `base` -- then reads off every layer of each Torch-Pruning group
    whose output channels shrink: the root, the coupled layers of a residual stream, their batch
    norms, depthwise convolutions fed by the group.
    """
    criterion = RunSummary.read(policy.meta).criterion
    seed = int(RunSummary.read(policy.meta).seed)
    if orders is None:
        orders = policy_orders(graph, policy)
    if orders is None and criterion in DATA_CRITERIA:
        raise UserError(f"criterion '{criterion}' ranks channels with training data, and the policy has no "
                        "channel_orders: pass the run's orders")
    kept = policy_kept(graph, policy)
    scratch = copy.deepcopy(base).cpu().eval()
    names = {m: n for n, m in scratch.named_modules()}
    # apply_policy's own plan, so that even the random criterion draws the same numbers
    dg, plans = removal_plan(scratch, graph, kept, criterion=criterion, seed=seed, orders=orders)
    removed: dict[str, set[int]] = {}
    for root, fn, idxs in plans:
        for dep, dep_idxs in dg.get_pruning_group(root, fn, idxs=idxs).items:
            module = dep.target.module
            if isinstance(module, _MASKED_TYPES) and dg.is_out_channel_pruning_fn(dep.handler):
                removed.setdefault(names[module], set()).update(int(i) for i in dep_idxs)
    return {name: sorted(idxs) for name, idxs in removed.items()}


def nni_masks(base: nn.Module, graph: PruningGraph, policy: Policy, *,
              orders: Sequence[torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The NNI 2.x masks dict of the policy: ``ModelSpeedup(base, dummy_input, masks)`` rebuilds its model.

    `base` is the unpruned model the policy was searched on (the masks are built from its weights'
    ranking, and keyed by its module names). See the module docstring for the format.
    """
    if RunSummary.read(policy.meta).reconstruction:
        log.warning("the policy's run refitted its pruned weights by least squares: the masks give its channels, "
                    "but only pruned.pt holds the refitted weights")
    modules = dict(base.named_modules())
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for name, idxs in removed_channels(base, graph, policy, orders=orders).items():
        module = modules[name]
        entry = {}
        for pname in ("weight", "bias"):
            param = getattr(module, pname, None)
            if param is None:
                continue
            mask = torch.ones_like(param, device="cpu")
            mask[idxs] = 0  # dim 0 is the output channel of conv, linear and batch-norm parameters
            entry[pname] = mask
        masks[name] = entry
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> nn.Module:
    """Multiply `model`'s parameters by `masks` in place -- NNI's simulated pruning, before its speedup.

    With the masks of `nni_masks` the masked model computes what the physically pruned one does:
    a removed channel is zero after its batch norm, so every consumer sees nothing from it.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, entry in masks.items():
            if name not in modules:
                raise UserError(f"masks name no module of the model: {name}")
            for pname, mask in entry.items():
                param = getattr(modules[name], pname, None)
                if param is None or param.shape != mask.shape:
                    raise UserError(f"mask {name}.{pname} does not fit the model's parameter")
                param.mul_(mask.to(param.device, param.dtype))
    return model
