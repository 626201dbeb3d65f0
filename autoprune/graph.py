"""The pruning graph: coupled channel groups, the layer table, DAG edges, and analytic costs.

Torch-Pruning's `DependencyGraph` finds which channels must be removed together (residual adds,
concatenations, depthwise and grouped convolutions), so no architecture needs a hand-written
table. On top of its groups this module learns, once per model, how every tensor and parameter
dimension depends on the channels kept in each group: it removes one channel per channel chunk
from each group in turn on a scratch copy (a group feeding a convolution with G groups, as in
ResNeXt and RegNet, is G chunks that must shrink alike: its `divisor`) and records which
dimensions shrink (`autoprune.probe`). Every dimension is then an affine function of
the kept-channel vector, and MACs and params of any policy are sums of products of those
functions (`autoprune.cost_terms.CostPolynomial`) -- exact, microseconds, no model built. MACs follow
`torch_pruning.utils.count_ops_and_params` (convolution, linear, norm, activation, pooling ops).

A group whose removal (one channel per chunk, or `deepest` of them) breaks the model -- a fixed
`split_with_sizes` or `view`, an add Torch-Pruning does not couple, a shape that stops shrinking in
step with the channels -- is frozen -- left whole, as its root would be in Torch-Pruning's
`ignored_layers` -- and listed in `PruningGraph.frozen`; the rest of the network is searched.
"""
from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune import tp_extensions
from autoprune.cost_terms import (CONV_TYPES, LAYER_TYPES, CostPolynomial, cost_terms, is_depthwise, polynomial,
                                  term_value)
from autoprune.errors import UserError
from autoprune.probe import FrozenGroup, article, probe_groups, record
from autoprune.support import refuse_unsupported, trace_failure

log = logging.getLogger(__name__)



@dataclass
class Group:
    """A set of channels that must be pruned together, named after its root layer."""

    index: int
    name: str
    channels: int
    kind: str  # conv | linear | residual | depthwise
    layers: list[str]  # layers whose output channels this group removes
    consumers: list[str]  # layers whose input channels this group removes
    in_channels: int
    kernel: int
    stride: int
    out_hw: int  # output positions of the root layer (h*w)
    macs: float = 0.0  # base MACs of every op whose size depends on this group
    params: float = 0.0
    # kept channels must be a multiple of this: the group is `divisor` equal chunks (grouped convolutions),
    # and pruning removes the same positions from every chunk, as Torch-Pruning's pruners do
    divisor: int = 1


@dataclass
class Layer:
    """A convolution or linear layer, a node of the layer-level DAG."""

    index: int
    name: str
    kind: str  # conv | depthwise | linear
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    out_hw: int
    macs: float
    params: float
    group: int  # group that prunes its output channels, -1 if fixed
    in_hw: int = 1  # input positions (h*w) of the layer


@dataclass
class PruningGraph:
    model_id: str
    input_shape: tuple[int, ...]
    groups: list[Group]
    layers: list[Layer]
    edges: list[tuple[int, int]]  # layer index -> layer index, data flow
    macs_poly: CostPolynomial
    params_poly: CostPolynomial
    base_macs: float
    base_params: float
    ignored: list[str] = field(default_factory=list)
    # (n_layers, 2, n_groups + 1): in and out channels of every layer as affine functions of the
    # kept vector ([coefficients | constant]); exact for residual, concatenated and depthwise layers
    layer_io: np.ndarray | None = None
    stem: str = ""  # the first layer to see the input
    frozen: list[FrozenGroup] = field(default_factory=list)  # groups left whole: pruning them breaks the model
    # the user's example input (a tensor, tuple or dict, batch included), when not a tensor of input_shape
    example_inputs: object = None

    def example(self):
        """An input to run the model on: the user's example, or a random batch of one of `input_shape`."""
        return self.example_inputs if self.example_inputs is not None else torch.randn(1, *self.input_shape)

    @property
    def takes_one_tensor(self) -> bool:
        """Whether the model's input is one tensor (latency tables, ONNX and reconstruction need that)."""
        return self.example_inputs is None or isinstance(self.example_inputs, torch.Tensor)

    def ignored_layers(self) -> list[str]:
        """What a Torch-Pruning user passes as `ignored_layers`: stem, classifier, --ignore, frozen roots."""
        return sorted(set(self.ignored) | {f.name for f in self.frozen})

    @property
    def stem_group(self) -> int | None:
        """Index of the group whose channels the stem produces (None while the stem is left out)."""
        return next((g.index for g in self.groups if self.stem in g.layers), None)

    @property
    def channels(self) -> np.ndarray:
        return np.array([g.channels for g in self.groups], dtype=np.float64)

    def macs(self, kept: np.ndarray) -> float:
        return self.macs_poly(kept)

    def params(self, kept: np.ndarray) -> float:
        return self.params_poly(kept)

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def layer_channels(self, kept: np.ndarray) -> np.ndarray:
        """(n_layers, 2) in and out channels of every layer when each group keeps `kept` channels."""
        return self.layer_io[:, :, :-1] @ np.asarray(kept, dtype=np.float64) + self.layer_io[:, :, -1]


def _dependency_graph(model: nn.Module, example) -> tp.DependencyGraph:
    tp_extensions.install()
    try:
        with warnings.catch_warnings():
            # ConvNeXt's layer_scale: tp prunes its channel dim, as it should; the warning would only alarm users
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                        customized_pruners=tp_extensions.customized_pruners(model))
    except Exception as exc:  # tracing failures come in many types
        raise trace_failure(exc) from None


def channel_divisor(dg: tp.DependencyGraph, group) -> int:
    """Chunks a Torch-Pruning group must shrink alike: the lcm of its grouped layers' channel groups.

    As Torch-Pruning's MetaPruner counts them (`get_in/out_channel_groups`: convolution groups,
    GroupNorm groups), skipping depthwise convolutions, which shrink with any channel. The lcm, not
    tp's max, so that two different groupings in one group are both respected.
    """
    divisor = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, CONV_TYPES) and m.groups == m.out_channels:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None:
            continue
        get = pruner.get_out_channel_groups if dg.is_out_channel_pruning_fn(dep.handler) else pruner.get_in_channel_groups
        divisor = math.lcm(divisor, int(get(m)))
    return divisor


def chunk_positions(channels: int, divisor: int, positions) -> list[int]:
    """Channel indices of `positions` (within one chunk) repeated in each of `divisor` chunks."""
    size = channels // divisor
    return [int(p) + j * size for j in range(divisor) for p in positions]


def input_shape_of(example) -> tuple[int, ...]:
    """(C, H, W) of the first tensor of an example input (batch dropped): what latency tables time."""
    first = example
    while isinstance(first, (tuple, list, dict)) and first:
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if not isinstance(first, torch.Tensor) or first.dim() < 1:
        raise UserError(f"example_inputs must be a tensor, or a tuple, list or dict of tensors; "
                        f"got {type(example).__name__}")
    return tuple(int(d) for d in first.shape[1:])


def build_graph(model: nn.Module, input_shape: tuple[int, ...] | None = None, *, model_id: str = "model",
                ignore: list[str] | None = None, prune_stem: bool = False, example_inputs=None,
                deepest: float = 0.8, progress=None) -> PruningGraph:
    """Analyse `model` (left untouched) for an input of `input_shape` (C, H, W), batch 1.

    `example_inputs` (a tensor, tuple or dict, batch included, as Torch-Pruning takes it) replaces
    the random input of `input_shape`. A group is kept only if the model still runs, with its costs
    exact, at `deepest` of its channels removed (the search's largest prune ratio). `progress(message)`
    hears what is being analysed.
    """
    say = progress or (lambda message: log.info("%s", message))
    start = time.monotonic()
    refuse_unsupported(model)
    model = copy.deepcopy(model).cpu().eval()
    if example_inputs is not None:
        input_shape = input_shape_of(example_inputs)
    example = example_inputs if example_inputs is not None else torch.randn(1, *input_shape)
    names = {m: n for n, m in model.named_modules()}
    try:
        base = record(model, example)
    except Exception as exc:  # a user's model may fail in any way on our example input
        raise UserError(f"the model fails on an input of shape {(1, *input_shape)}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    calls, base_dims, _outputs = base
    layer_calls = [c for c in calls if isinstance(c[1], LAYER_TYPES)]
    if not layer_calls:
        raise UserError("the model has no convolution or linear layer to prune")
    # Stem = first layer to see the input; classifier = last layer (its outputs are the classes).
    ignored = set(ignore or [])
    ignored.add(layer_calls[-1][0])
    if not prune_stem:
        ignored.add(layer_calls[0][0])
    modules = dict(model.named_modules())
    unknown = [n for n in ignored if n not in modules]
    if unknown:
        raise UserError(f"--ignore names no module of the model: {unknown[0]}")

    say(f"{model_id}: tracing the dependency graph")
    dg = _dependency_graph(model, example)
    say(f"{model_id}: grouping coupled channels ({time.monotonic() - start:.0f} s)")
    first_call = {}
    for c in calls:
        first_call.setdefault(c[1], c)
    groups = _groups(dg, modules, names, ignored, first_call)
    if not groups:
        raise UserError("no prunable channel group found (all groups touch the stem, classifier or --ignore)")
    layer_names = list(dict.fromkeys(name for name, *_rest in layer_calls))
    edges = _edges(dg, [modules[n] for n in layer_names])

    # Probe: remove one channel per chunk of each group, then `deepest` of them; record which dims shrink.
    say(f"{model_id}: probing {len(groups)} channel groups ({time.monotonic() - start:.0f} s)")
    pristine = copy.deepcopy(model)  # the probe prunes `model` in place
    mult, frozen = probe_groups(model, pristine, example, groups, base, lambda m: _dependency_graph(m, example), dg,
                                chunk_positions, deepest=deepest, progress=lambda text: say(f"{model_id}: {text}"))
    # the probe left `model` pruned: costs and the layer table read the unpruned modules
    unpruned = dict(pristine.named_modules())
    calls = [(name, unpruned[name], i, o) for name, _m, i, o in calls]
    layer_calls = [c for c in calls if isinstance(c[1], LAYER_TYPES)]
    frozen_names = {f.name for f in frozen}
    keep = [g.index for g in groups if g.name not in frozen_names]
    if not keep:
        raise UserError(f"no channel group can be pruned: pruning any of them breaks {_summary(frozen)}")
    if frozen:
        log.warning("%d of %d channel groups left whole (frozen, as Torch-Pruning's ignored_layers): pruning "
                    "them breaks %s", len(frozen), len(groups), _summary(frozen))
    groups = [g for g in groups if g.name not in frozen_names]
    for i, g in enumerate(groups):
        g.index = i
    mult = mult[:, keep]

    base_arr = np.array(base_dims, dtype=np.float64)
    n = np.array([g.channels for g in groups], dtype=np.float64)
    # dim(kept) = base + mult @ (kept - n)  ->  factor rows [mult | base - mult @ n]
    factors = np.concatenate([mult, (base_arr - mult @ n)[:, None]], axis=1)
    factors = np.concatenate([factors, np.eye(1, len(groups) + 1, len(groups))], axis=0)  # constant 1

    macs_terms, params_terms = cost_terms(calls, base_dims, pristine, mult)
    macs_poly = polynomial(factors, macs_terms)
    params_poly = polynomial(factors, params_terms)
    full = n.copy()
    base_macs, base_params = macs_poly(full), params_poly(full)

    # Per-group base cost: everything that would vanish with the group (AMC's "FLOPs of the layer").
    for g in groups:
        k = full.copy()
        k[g.index] = 0
        g.macs, g.params = base_macs - macs_poly(k), base_params - params_poly(k)

    layers = _layers(layer_calls, groups, macs_terms, params_terms, factors, full)
    layer_io = _layer_io(calls, layers, factors)
    say(f"{model_id}: {len(groups)} channel groups analysed in {time.monotonic() - start:.1f} s")
    return PruningGraph(model_id, tuple(input_shape), groups, layers, edges, macs_poly, params_poly,
                        base_macs, base_params, sorted(ignored), layer_io, stem=layer_calls[0][0], frozen=frozen,
                        example_inputs=example_inputs)


def _summary(frozen: list[FrozenGroup], shown: int = 2) -> str:
    """'a split_with_sizes in blocks.1.1, blocks.4.0 and 15 more places (22 groups)', per operation."""
    by_op: dict[str, list[str]] = {}
    for f in frozen:
        by_op.setdefault(f.op, []).append(f.where)
    parts = []
    for op, places in sorted(by_op.items(), key=lambda kv: -len(kv[1])):
        places = list(dict.fromkeys(places))
        where = ", ".join(places[:shown]) + (f" and {len(places) - shown} more places" if len(places) > shown else "")
        count = sum(f.op == op for f in frozen)
        parts.append(f"{article(op)} {op} in {where} ({count} group{'s' if count > 1 else ''})")
    return "; ".join(parts)


def _groups(dg: tp.DependencyGraph, modules: dict, names: dict, ignored: set[str], first_call: dict) -> list[Group]:
    """Torch-Pruning's groups (in forward order) as `Group`s; a root the forward never calls is skipped."""
    order = {m: i for i, m in enumerate(first_call)}
    raw_groups = list(dg.get_all_groups(ignored_layers=[modules[n] for n in ignored],
                                        root_module_types=list(LAYER_TYPES)))
    raw_groups.sort(key=lambda g: order.get(g[0].dep.target.module, 1 << 30))
    groups: list[Group] = []
    for g in raw_groups:
        root = g[0].dep.target.module
        root_call = first_call.get(root)
        if root_call is None:  # not an op the counter sees being run: nothing to cost or prune
            continue
        out_layers = [names[d.target.module] for d, _ in g
                      if dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, LAYER_TYPES)]
        in_layers = [names[d.target.module] for d, _ in g
                     if dg.is_in_channel_pruning_fn(d.handler) and isinstance(d.target.module, LAYER_TYPES)]
        channels = int(dg.get_out_channels(root))
        divisor = channel_divisor(dg, g)
        if channels % divisor or channels // divisor < 2:  # nothing can go while every chunk keeps one
            continue
        depthwise = any(isinstance(modules[n], CONV_TYPES) and modules[n].groups > 1 and
                        modules[n].groups == modules[n].in_channels for n in out_layers + in_layers)
        kind = ("linear" if isinstance(root, nn.Linear) else "depthwise" if depthwise
                else "residual" if len([n for n in out_layers if not is_depthwise(modules[n])]) > 1 else "conv")
        groups.append(Group(
            index=len(groups), name=names[root], channels=channels, kind=kind,
            layers=list(dict.fromkeys(out_layers)), consumers=list(dict.fromkeys(in_layers)),
            in_channels=int(dg.get_in_channels(root) or 0), kernel=_kernel(root), stride=_stride(root),
            out_hw=int(np.prod(root_call[3][2:])) if len(root_call[3]) > 2 else 1, divisor=divisor))
    return groups

def _kernel(m: nn.Module) -> int:
    return int(m.kernel_size[0]) if isinstance(m, CONV_TYPES) else 1


def _stride(m: nn.Module) -> int:
    return int(m.stride[0]) if isinstance(m, CONV_TYPES) else 1


def _layers(layer_calls: list[tuple], groups: list[Group], macs_terms, params_terms, factors, full) -> list[Layer]:
    owner_group = {name: g.index for g in groups for name in g.layers}
    out: list[Layer] = []
    seen: set[str] = set()
    for name, m, ishape, oshape in layer_calls:
        if name in seen:
            continue
        seen.add(name)
        kind = "linear" if isinstance(m, nn.Linear) else "depthwise" if is_depthwise(m) else "conv"
        out.append(Layer(
            index=len(out), name=name, kind=kind, in_channels=int(ishape[1]), out_channels=int(oshape[1]),
            kernel=_kernel(m), stride=_stride(m),
            out_hw=int(np.prod(oshape[2:])) if len(oshape) > 2 else 1,
            macs=term_value(macs_terms, name, factors, full),
            params=term_value(params_terms, name, factors, full),
            group=owner_group.get(name, -1),
            in_hw=int(np.prod(ishape[2:])) if len(ishape) > 2 and not isinstance(m, nn.Linear) else 1))
    return out


def _layer_io(calls: list[tuple], layers: list[Layer], factors: np.ndarray) -> np.ndarray:
    """Rows of `factors` for the in/out channel dim of each layer's first call (positions as in _cost_terms)."""
    rows: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, m, ishape, oshape in calls:
        if name not in rows and isinstance(m, LAYER_TYPES):
            axis_in = len(ishape) - 1 if isinstance(m, nn.Linear) else 1  # Linear acts on the last dim
            axis_out = len(oshape) - 1 if isinstance(m, nn.Linear) else 1
            rows[name] = (pos + axis_in, pos + len(ishape) + axis_out)
        pos += len(ishape) + len(oshape)
    return np.stack([factors[list(rows[lay.name])] for lay in layers])


def _edges(dg: tp.DependencyGraph, layer_modules: list[nn.Module]) -> list[tuple[int, int]]:
    """Layer -> next layers, walking through the graph's non-layer nodes (BN, add, concat, ...)."""
    index = {m: i for i, m in enumerate(layer_modules)}
    edges = set()
    for m, i in index.items():
        node = dg.module2node.get(m)
        stack, seen = list(node.outputs) if node else [], set()
        while stack:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if nxt.module in index:
                edges.add((i, index[nxt.module]))
            else:
                stack.extend(nxt.outputs)
    return sorted(edges)
