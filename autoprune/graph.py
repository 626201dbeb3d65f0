"""The pruning graph: coupled channel groups, the layer table, DAG edges, and analytic costs.

Torch-Pruning's `DependencyGraph` finds which channels must be removed together (residual adds,
concatenations, depthwise and grouped convolutions), so no architecture needs a hand-written
table. On top of its groups this module learns, once per model, how every tensor and parameter
dimension depends on the channels kept in each group: it removes one channel per channel chunk
from each group in turn on a scratch copy (a group feeding a convolution with G groups, as in
ResNeXt and RegNet, is G chunks that must shrink alike: its `divisor`) and records which
dimensions shrink. Every dimension is then an affine function of
the kept-channel vector, and MACs and params of any policy are sums of products of those
functions (`CostPolynomial`) -- exact, microseconds, no model built. MACs follow
`torch_pruning.utils.count_ops_and_params` (convolution, linear, norm, activation, pooling ops).
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.errors import UserError
from autoprune.support import refuse_unsupported, trace_failure

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ACT_TYPES = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Upsample)
POOL_TYPES = (nn.MaxPool1d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool3d,
              nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


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


class CostPolynomial:
    """sum_t coef[t] * prod_j factor[idx[t, j]](kept), each factor affine in the kept vector."""

    def __init__(self, factors: np.ndarray, coef: np.ndarray, idx: np.ndarray) -> None:
        self.factors, self.coef, self.idx = factors, coef, idx

    def __call__(self, kept: np.ndarray) -> float:
        values = self.factors[:, :-1] @ kept + self.factors[:, -1]
        total = float((self.coef * values[self.idx].prod(axis=1)).sum())
        # counts are integers; a grouped convolution's 1/G coefficients leave float dust (1/3, 1/6)
        whole = round(total)
        return float(whole) if abs(total - whole) <= 1e-9 * max(1.0, abs(total)) else total


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


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    try:
        with warnings.catch_warnings():
            # ConvNeXt's layer_scale: tp prunes its channel dim, as it should; the warning would only alarm users
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
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


def _record_shapes(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple], list[int]]:
    """Forward once; return (calls, dims): each counted module call and every dim as one flat list."""
    calls: list[tuple] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        calls.append((names[module], module, tuple(inputs[0].shape), tuple(output.shape)))

    # torch_pruning's counter matches on the exact type (not subclasses); so do we.
    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in MODULES_MAPPING]
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # a user's model may fail in any way on our example input
        raise UserError(f"the model fails on an input of shape {tuple(example.shape)}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        for h in handles:
            h.remove()
    dims = [d for _, _, i, o in calls for d in (*i, *o)]
    dims += [d for _, p in model.named_parameters() for d in p.shape]
    return calls, dims


def build_graph(model: nn.Module, input_shape: tuple[int, ...], *, model_id: str = "model",
                ignore: list[str] | None = None, prune_stem: bool = False) -> PruningGraph:
    """Analyse `model` (left untouched) for an input of `input_shape` (C, H, W), batch 1."""
    refuse_unsupported(model)
    model = copy.deepcopy(model).cpu().eval()
    example = torch.randn(1, *input_shape)
    names = {m: n for n, m in model.named_modules()}
    calls, base_dims = _record_shapes(model, example)
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

    dg = _dependency_graph(model, example)
    order = {name: i for i, (name, *_rest) in enumerate(calls)}
    raw_groups = list(dg.get_all_groups(ignored_layers=[modules[n] for n in ignored],
                                        root_module_types=list(LAYER_TYPES)))
    raw_groups.sort(key=lambda g: order.get(names[g[0].dep.target.module], 1 << 30))

    groups: list[Group] = []
    for g in raw_groups:
        root = g[0].dep.target.module
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
        root_call = next(c for c in calls if c[1] is root)
        kind = ("linear" if isinstance(root, nn.Linear) else "depthwise" if depthwise
                else "residual" if len([n for n in out_layers if not _is_depthwise(modules[n])]) > 1 else "conv")
        groups.append(Group(
            index=len(groups), name=names[root], channels=channels, kind=kind,
            layers=list(dict.fromkeys(out_layers)), consumers=list(dict.fromkeys(in_layers)),
            in_channels=int(dg.get_in_channels(root) or 0), kernel=_kernel(root), stride=_stride(root),
            out_hw=int(np.prod(root_call[3][2:])) if len(root_call[3]) > 2 else 1, divisor=divisor))
    if not groups:
        raise UserError("no prunable channel group found (all groups touch the stem, classifier or --ignore)")

    # Probe: remove one channel per chunk of each group and record which dims shrink (affine in kept).
    base = np.array(base_dims, dtype=np.float64)
    mult = np.zeros((len(base), len(groups)))
    prev = base
    for g in groups:
        root = modules[g.name]
        fn = dg.get_pruner_of_module(root).prune_out_channels
        dg.get_pruning_group(root, fn, idxs=chunk_positions(g.channels, g.divisor, [0])).prune()
        _, dims = _record_shapes(model, example)
        now = np.array(dims, dtype=np.float64)
        if now.shape != prev.shape:
            raise UserError(f"pruning group {g.name} changed the model's structure; cannot cost it analytically")
        mult[:, g.index] = (prev - now) / g.divisor
        prev = now
    n = np.array([g.channels for g in groups], dtype=np.float64)
    # dim(kept) = base + mult @ (kept - n)  ->  factor rows [mult | base - mult @ n]
    factors = np.concatenate([mult, (base - mult @ n)[:, None]], axis=1)
    factors = np.concatenate([factors, np.eye(1, len(groups) + 1, len(groups))], axis=0)  # constant 1

    macs_terms, params_terms = _cost_terms(calls, base_dims, model, mult)
    macs_poly = _poly(factors, macs_terms)
    params_poly = _poly(factors, params_terms)
    full = n.copy()
    base_macs, base_params = macs_poly(full), params_poly(full)

    # Per-group base cost: everything that would vanish with the group (AMC's "FLOPs of the layer").
    for g in groups:
        k = full.copy()
        k[g.index] = 0
        g.macs, g.params = base_macs - macs_poly(k), base_params - params_poly(k)

    layers = _layers(layer_calls, groups, macs_terms, params_terms, factors, full)
    edges = _edges(dg, [modules[lay.name] for lay in layers])
    layer_io = _layer_io(calls, layers, factors)
    return PruningGraph(model_id, tuple(input_shape), groups, layers, edges, macs_poly, params_poly,
                        base_macs, base_params, sorted(ignored), layer_io, stem=layer_calls[0][0])


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels


def _kernel(m: nn.Module) -> int:
    return int(m.kernel_size[0]) if isinstance(m, CONV_TYPES) else 1


def _stride(m: nn.Module) -> int:
    return int(m.stride[0]) if isinstance(m, CONV_TYPES) else 1


def _cost_terms(calls: list[tuple], dims: list[int], model: nn.Module, mult: np.ndarray) -> tuple[list, list]:
    """Terms (coef, [dim positions], owner) following torch_pruning's op counter, batch size 1."""
    varying = np.abs(mult).sum(axis=1) > 0

    def term(coef: float, positions: list[int], owner: str) -> tuple[float, list[int], str]:
        fixed = [p for p in positions if not varying[p]]
        coef *= float(np.prod([dims[p] for p in fixed])) if fixed else 1.0
        return coef, [p for p in positions if varying[p]], owner

    macs, params = [], []
    pos = 0
    for name, m, ishape, oshape in calls:
        ipos = list(range(pos, pos + len(ishape)))
        opos = list(range(pos + len(ishape), pos + len(ishape) + len(oshape)))
        pos += len(ishape) + len(oshape)
        batch = ishape[0]
        if isinstance(m, CONV_TYPES):
            # per position: k * in * out / groups = in/groups-per-out * out: weight numel
            per_out = 1.0 / batch
            if _is_depthwise(m):
                macs.append(term(per_out * int(np.prod(m.kernel_size)), opos, name))
            else:
                macs.append(term(per_out * int(np.prod(m.kernel_size)) / m.groups, [ipos[1]] + opos, name))
            if m.bias is not None:
                macs.append(term(per_out, opos, name))
        elif isinstance(m, nn.Linear):
            macs.append(term(1.0 / batch, ipos + [opos[-1]], name))
            if m.bias is not None:
                macs.append(term(1.0 / batch, [opos[-1]], name))
        elif isinstance(m, NORM_TYPES):
            affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
            macs.append(term((2.0 if affine else 1.0) / batch, ipos, name))
        elif isinstance(m, ACT_TYPES):
            macs.append(term(1.0 / batch, opos, name))
        elif isinstance(m, POOL_TYPES):
            macs.append(term(1.0 / batch, ipos, name))
        else:
            log.warning("%s (%s): its ops are not costed analytically", name, type(m).__name__)
    for pname, p in model.named_parameters():
        ppos = list(range(pos, pos + p.dim()))
        pos += p.dim()
        params.append(term(1.0, ppos, pname.rsplit(".", 1)[0]))
    assert pos == len(dims)  # positions of dims are the rows of `factors` (same order)
    return macs, params


def _poly(factors: np.ndarray, terms: list[tuple]) -> CostPolynomial:
    width = max(1, max((len(p) for _, p, _ in terms), default=1))
    one = len(factors) - 1
    idx = np.full((len(terms), width), one, dtype=np.int64)
    for t, (_, positions, _) in enumerate(terms):
        idx[t, :len(positions)] = positions
    # Drop factor rows never used so evaluation touches only what matters.
    used = np.unique(idx)
    remap = np.zeros(len(factors), dtype=np.int64)
    remap[used] = np.arange(len(used))
    return CostPolynomial(factors[used], np.array([c for c, _, _ in terms]), remap[idx])


def _term_value(terms: list[tuple], owner: str, factors: np.ndarray, kept: np.ndarray) -> float:
    values = factors[:, :-1] @ kept + factors[:, -1]
    return float(sum(c * np.prod([values[p] for p in ps]) for c, ps, o in terms if o == owner))


def _layers(layer_calls: list[tuple], groups: list[Group], macs_terms, params_terms, factors, full) -> list[Layer]:
    owner_group = {name: g.index for g in groups for name in g.layers}
    out: list[Layer] = []
    seen: set[str] = set()
    for name, m, ishape, oshape in layer_calls:
        if name in seen:
            continue
        seen.add(name)
        kind = "linear" if isinstance(m, nn.Linear) else "depthwise" if _is_depthwise(m) else "conv"
        out.append(Layer(
            index=len(out), name=name, kind=kind, in_channels=int(ishape[1]), out_channels=int(oshape[1]),
            kernel=_kernel(m), stride=_stride(m),
            out_hw=int(np.prod(oshape[2:])) if len(oshape) > 2 else 1,
            macs=_term_value(macs_terms, name, factors, full),
            params=_term_value(params_terms, name, factors, full),
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
