"""Two additions to Torch-Pruning: a pruner for convolutions with extra per-channel parameters, and
a `DependencyGraph.get_pruning_group` that walks each channel once.

**Extra parameters.** timm's `ScaledStdConv2d` (NFNets) and `StdConv2d` standardise their weight
with a per-output-channel `gain` parameter; Torch-Pruning's `ConvPruner` prunes `weight` and `bias`
only, so the pruned layer fails (`weight should contain 255 elements not 256`). `customized_pruners`
maps such subclasses to `ExtraParamConvPruner`, which prunes every own parameter whose first dim is
the output channels too -- Torch-Pruning's documented `customized_pruners` hook.

**The walk.** Torch-Pruning 1.6's `get_pruning_group` walks the dependency graph from the root and
pushes every (dependency, channels) pair it reaches, skipping only an exact repeat at a node already
visited, then unions the pairs per layer (`Group.add_and_merge`, quadratic). Where concatenations feed
residual adds (ReXNet: `cat([x[:, :c] + shortcut, x[:, c:]])` in every block) the same layers are
reached along exponentially many paths, each with a different slice of the channels: rexnet_100 at
64x64 spent 570 s in `get_all_groups` (profiled: 89 of 90 s in `Group.has_pruning_op`, a linear scan
per step, and millions of steps). Two changes, installed by `install()`:

* `has_pruning_op` looks its pair up in an index `add_dep` keeps: the same answer in O(1);
* `get_pruning_group` runs Torch-Pruning's own walk for up to `WALK_LIMIT` steps -- every torchvision
  and timm net in the test matrices needs under 600 -- and only past that walks each channel once
  (`linear_pruning_group`): every index mapping Torch-Pruning uses (concat, split, slice, flatten)
  maps channel by channel, so the union it would end with is the closure of single channels. The
  channel sets are Torch-Pruning's (tests/test_graph.py compares them); where one channel is coupled
  to two root channels, the root kept is the first this walk meets, as Torch-Pruning keeps the first
  its walk meets. rexnet_100's whole graph analysis takes 1.4 s.

`install()` runs the first time autoprune builds a dependency graph (nothing happens at import), and
only on the Torch-Pruning release it was written against; other releases keep their own code.
"""
from __future__ import annotations

import threading
import typing
from numbers import Number

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function
from torch_pruning.pruner.function import ConvPruner

ORIGINAL = tp.DependencyGraph.get_pruning_group
_ORIGINAL_ADD, _ORIGINAL_HAS = Group.add_dep, Group.has_pruning_op
WALK_LIMIT = 20_000  # steps of Torch-Pruning's own walk before the linear one takes over
_installed = False
_steps = threading.local()  # steps left to the walk running in this thread (None: no limit)


class _WalkTooLong(Exception):
    pass


class ExtraParamConvPruner(ConvPruner):
    """`ConvPruner` that also prunes the layer's own per-output-channel parameters (`gain`)."""

    def prune_out_channels(self, layer: nn.Module, idxs: typing.Sequence[int]) -> nn.Module:
        n = layer.out_channels
        extra = [name for name, p in layer.named_parameters(recurse=False) if _per_channel(name, p, n)]
        layer = super().prune_out_channels(layer, idxs)
        keep = sorted(set(range(n)) - set(idxs))
        for name in extra:
            setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 0))
        return layer


def _per_channel(name: str, p: nn.Parameter, out_channels: int) -> bool:
    return name not in ("weight", "bias") and p.dim() > 0 and p.shape[0] == out_channels


def customized_pruners(model: nn.Module) -> dict[type, ConvPruner]:
    """{convolution subclass: pruner} for the subclasses in `model` with extra per-channel parameters."""
    return {type(m): ExtraParamConvPruner() for m in model.modules()
            if isinstance(m, ops.TORCH_CONV) and not getattr(m, "transposed", False)
            and any(_per_channel(n, p, m.out_channels) for n, p in m.named_parameters(recurse=False))}


def meta_pruner(model: nn.Module, example_inputs, **kwargs) -> tp.pruner.MetaPruner:
    """Torch-Pruning's `MetaPruner` on `model`, with this module's pruners and walk."""
    install()
    return tp.pruner.MetaPruner(model, example_inputs, customized_pruners=customized_pruners(model), **kwargs)


def install() -> None:
    global _installed
    if not _installed and tp.__version__.startswith("1.6."):
        Group.add_dep, Group.has_pruning_op = _add_dep, _has_pruning_op
        tp.DependencyGraph.get_pruning_group = get_pruning_group
    _installed = True


def _pair_key(dep, idxs) -> tuple:
    return id(dep.target), dep.handler, tuple(idxs)  # what has_pruning_op compares (Node compares by identity)


def _add_dep(self: Group, dep, idxs) -> None:
    left = getattr(_steps, "left", None)
    if left is not None:
        if left <= 0:
            raise _WalkTooLong
        _steps.left = left - 1
    _ORIGINAL_ADD(self, dep, idxs)
    self.__dict__.setdefault("_pair_keys", set()).add(_pair_key(dep, idxs))


def _has_pruning_op(self: Group, dep, idxs) -> bool:
    keys = self.__dict__.get("_pair_keys")
    if keys is None:  # items set some other way: Torch-Pruning's scan
        return _ORIGINAL_HAS(self, dep, idxs)
    return _pair_key(dep, idxs) in keys


def get_pruning_group(self: tp.DependencyGraph, module: nn.Module, pruning_fn: typing.Callable,
                      idxs: typing.Sequence[int]) -> Group:
    """Torch-Pruning's group, by its own walk while that stays under `WALK_LIMIT` steps, else the linear one."""
    _steps.left = WALK_LIMIT
    try:
        return ORIGINAL(self, module, pruning_fn, idxs)
    except _WalkTooLong:
        _steps.left = None
        return linear_pruning_group(self, module, pruning_fn, idxs)
    finally:
        _steps.left = None


def linear_pruning_group(self: tp.DependencyGraph, module: nn.Module, pruning_fn: typing.Callable,
                         idxs: typing.Sequence[int]) -> Group:
    """As `tp.DependencyGraph.get_pruning_group` (same arguments, same channels), each channel walked once."""
    if module not in self.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    if isinstance(idxs, Number):
        idxs = [idxs]
    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    index_mapping.update_index_mapping(self)

    root_node = self.module2node[module]
    root = Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node)
    # (target node, handler) -> [first dependency reaching it, {channel: (channel, root channel)} first seen]:
    # Torch-Pruning's `Group.add_and_merge` result, built as the walk goes instead of by a quadratic merge;
    # its channels are also those already walked from there
    merged: dict[tuple, list] = {(root_node, pruning_fn): [root, {i.idx: i for i in idxs}]}
    # a worklist of (node, handler) with the pairs that reached it since it was last walked: channels
    # arriving along many paths are walked from a node together, not one path at a time
    pending = {(root_node, pruning_fn): list(idxs)}
    work = [(root_node, pruning_fn)]
    while work:
        node, handler = key = work.pop()
        idxs = pending.pop(key)
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(handler):
                continue
            new_indices = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new_indices = mapping(new_indices)
            target = (new_dep.target, new_dep.handler)
            known = merged[target][1] if target in merged else {}
            fresh = {}
            for i in new_indices:
                if i.idx not in known:
                    fresh.setdefault(i.idx, i)  # the first root channel seen, as Torch-Pruning's merge keeps
            if not fresh:
                continue
            merged.setdefault(target, [new_dep, known])[1].update(fresh)
            fresh = list(fresh.values())
            if target not in pending:
                pending[target] = []
                work.append(target)
            pending[target].extend(fresh)

    # As Torch-Pruning: ignored parameters left out, plain and root channels of every item.
    group = Group()
    for dep, channels in merged.values():
        if isinstance(dep.target.module, nn.Parameter) and any(dep.target.module is p for p in self.ignored_params):
            continue
        hybrid_idxs = list(channels.values())
        group.add_dep(dep, _helpers.to_plain_idxs(hybrid_idxs))
        group[-1].root_idxs = _helpers.to_root_idxs(hybrid_idxs)
    group._DG = self
    return group
