"""What a latency profile times: the units (each conv/linear call with the BN and activation that
follow it) over their channel grids, and the pruned models timed whole to calibrate the table.

Layer: the first step of a profile (units -> timing -> table) and a leaf: it imports nothing of
autoprune.cost. `profile.py` finds the units here, `timing.py` times them, `lut.py` predicts from
their tables.

A unit is what the profiler times in isolation and what the table predicts per layer: the layer
rebuilt at a kept (in, out) channel count, followed by its batch norm and its activation when
those come next in execution order on the layer's output. Everything else (residual adds,
pooling, reshapes, Python dispatch between modules) is the model's remainder, measured once.

Units with the same description (operator with all its hyper-parameters, input size, which
channel axes the policy can change, and the grid) share one table: ResNet-56's 58 conv and
linear layers need 12, so profiling costs grow with the number of distinct layer shapes, not depth.
A channel count is an affine function of the kept vector (`PruningGraph.layer_io`), so an axis
"varies" exactly when some group enters it; its grid spans the count at `GRID_LOW` of every
group's channels up to the full width.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.graph import CONV_TYPES, LAYER_TYPES, PruningGraph
from autoprune.hooks import record_calls

GRID_LOW = 0.1  # the grid reaches down to 10% of every group (prune ratio 0.9); below, the edge value holds
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
               nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish)


@dataclass
class Unit:
    """One layer call as the table sees it; `layer`, `norm`, `act` are the model's own modules (templates)."""

    layer_index: int  # into graph.layers
    name: str
    key: str  # table shared by all units with this description
    desc: dict  # what the key hashes: operator, input, norm, activation, grids
    in_grid: list[int]  # kept input channels profiled; one entry when the policy cannot change it
    out_grid: list[int]  # likewise for output channels (depthwise: one entry, tied to the input)
    in_shape: tuple[int, ...]  # input of the layer at batch 1, full width
    channel_axis: int  # axis of in_shape holding the channels
    layer: nn.Module
    norm: nn.Module | None
    act: nn.Module | None

    @property
    def depthwise(self) -> bool:
        return self.desc["depthwise"]

    def points(self) -> list[tuple[int, int]]:
        return [(i, o) for i in self.in_grid for o in self.out_grid]

    def block(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """The unit rebuilt with `cin` -> `cout` channels (random weights), and its input shape sans batch."""
        m = self.layer
        if isinstance(m, nn.Linear):
            layer: nn.Module = nn.Linear(cin, cout, bias=m.bias is not None)
        else:
            if self.depthwise:
                groups, cout = cin, cin * (m.out_channels // m.in_channels)
            else:
                groups = math.gcd(math.gcd(cin, cout), m.groups)
            layer = type(m)(cin, cout, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                            groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode)
        parts = [layer]
        if self.norm is not None:
            n = self.norm
            parts.append(type(n)(cout, eps=n.eps, momentum=n.momentum, affine=n.affine,
                                 track_running_stats=n.track_running_stats))
        if self.act is not None:
            parts.append(copy.deepcopy(self.act))
        shape = list(self.in_shape)
        shape[self.channel_axis] = cin
        return nn.Sequential(*parts).eval(), tuple(shape[1:])


def _axis_grid(row: np.ndarray, kept_low: np.ndarray, full: np.ndarray, points: int) -> list[int]:
    """Grid of one channel axis given its affine row [coefficients | constant]."""
    hi = int(round(float(row[:-1] @ full + row[-1])))
    if not np.any(row[:-1]):
        return [hi]
    lo = max(1, int(round(float(row[:-1] @ kept_low + row[-1]))))
    return sorted({int(round(v)) for v in np.linspace(lo, hi, max(2, points))})


def _plain_activation(m: nn.Module) -> bool:
    # a PReLU with one weight per channel would need pruning itself; leave it to the remainder
    return isinstance(m, ACTIVATIONS) and sum(p.numel() for p in m.parameters()) <= 1


def discover_units(model: nn.Module, graph: PruningGraph, points: int = 8) -> list[Unit]:
    """The units of `model` (as analysed in `graph`), each with its grid of `points` per varying axis."""
    model = model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    example = torch.randn(1, *graph.input_shape, device=device)
    calls, _ = record_calls(model, lambda: model(example))  # every leaf call: (name, module, in, out)
    index = {lay.name: lay.index for lay in graph.layers}
    full = graph.channels
    kept_low = np.maximum(1, np.ceil(full * GRID_LOW))
    units = []
    for i, (name, m, ishape, oshape) in enumerate(calls):
        if not isinstance(m, LAYER_TYPES) or name not in index:
            continue
        norm = act = None
        j = i + 1
        if j < len(calls) and isinstance(calls[j][1], nn.modules.batchnorm._BatchNorm) and calls[j][2] == oshape:
            norm, j = calls[j][1], j + 1
        if j < len(calls) and _plain_activation(calls[j][1]) and calls[j][2] == oshape:
            act = calls[j][1]
        depthwise = isinstance(m, CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels
        rows = graph.layer_io[index[name]]
        in_grid = _axis_grid(rows[0], kept_low, full, points)
        out_grid = [int(oshape[1])] if depthwise else _axis_grid(rows[1], kept_low, full, points)
        if depthwise:
            out_grid = [out_grid[0] // int(ishape[1])]  # channel multiplier: out follows in
        channel_axis = len(ishape) - 1 if isinstance(m, nn.Linear) else 1
        template = repr(m)
        desc = {"layer": template, "type": type(m).__name__, "input": list(ishape[1:]), "depthwise": depthwise,
                "norm": repr(norm) if norm is not None else None, "act": repr(act) if act is not None else None,
                "in_grid": in_grid, "out_grid": out_grid}
        key = hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
        units.append(Unit(index[name], name, key, desc, in_grid, out_grid, tuple(ishape), channel_axis,
                          m, norm, act))
    return units


def calibration_kept(graph: PruningGraph, n: int, seed: int) -> list[np.ndarray]:
    """n random policies from light to heavy pruning (a fixed sequence per seed, so resume continues it)."""
    rng = np.random.default_rng(seed)
    full = graph.channels
    divisor = np.array([g.divisor for g in graph.groups], dtype=np.float64)  # grouped convolutions: whole chunks
    out = []
    for i in range(n):
        depth = (i + 1) / n * (1.0 - GRID_LOW) * 0.9  # the i-th policy prunes up to this ratio
        ratios = rng.uniform(0.0, depth, len(full))
        out.append(np.maximum(divisor, np.round(full * (1.0 - ratios) / divisor) * divisor))
    return out


def structure_key(graph: PruningGraph, units: list[Unit]) -> str:
    """Identity of what a calibration was fitted for: the groups and every unit's table."""
    text = json.dumps([graph.group_names(), [(u.name, u.key) for u in units]])
    return hashlib.sha1(text.encode()).hexdigest()[:16]
