"""Analytic MACs and params: cost terms over recorded op shapes, and the polynomial they sum to.

Terms follow `torch_pruning.utils.count_ops_and_params` op by op (convolution, linear, norm,
activation, pooling), batch size 1; subclasses count as their base type (`probe.count_macs_params`).
Every dimension is an affine function of the kept-channel vector (the probe learns it), so each
term is a product of such factors and a policy's cost is `CostPolynomial(kept)`: exact, microseconds.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.probe import counted_base

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ACT_TYPES = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Upsample)
POOL_TYPES = (nn.MaxPool1d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool3d,
              nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def counted_ops(m: nn.Module, ishape: tuple, oshape: tuple) -> float:
    """What Torch-Pruning's counter hook for `m`'s type counts for one call at these shapes: the
    constant cost of an op whose shapes no policy changes (it has hooks beyond the ones costed here)."""
    hook = MODULES_MAPPING[counted_base(m)]
    saved = m.__dict__.get("__flops__")
    m.__flops__ = 0
    try:
        with torch.no_grad():
            hook(m, (torch.zeros(ishape),), torch.zeros(oshape))
        return float(m.__flops__)
    finally:
        del m.__flops__
        if saved is not None:
            m.__flops__ = saved


def _linearised(m: nn.Module, ishape: tuple, oshape: tuple, positions: list[int], varying: np.ndarray,
                mult: np.ndarray) -> tuple[float, float, int | None] | None:
    """(constant, slope, dim position): `counted_ops` of `m` as an affine function of the one channel
    width its shapes vary with (all its varying dims must be that same width); None when it is not."""
    shapes = list(ishape) + list(oshape)
    moving = [i for i, p in enumerate(positions) if varying[p]]
    if not moving:
        return counted_ops(m, ishape, oshape), 0.0, None
    if any(not np.array_equal(mult[positions[i]], mult[positions[moving[0]]]) for i in moving):
        return None

    def ops(delta: int) -> float:
        dims = [d - delta if i in moving else d for i, d in enumerate(shapes)]
        return counted_ops(m, tuple(dims[:len(ishape)]), tuple(dims[len(ishape):]))

    width = shapes[moving[0]]
    base, one, two = ops(0), ops(1), ops(2)
    if base - one != one - two or width < 3:
        return None
    slope = base - one
    return base - slope * width, slope, positions[moving[0]]


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels


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


def cost_terms(calls: list[tuple], dims: list[int], model: nn.Module, mult: np.ndarray) -> tuple[list, list]:
    """Terms (coef, [dim positions], owner) following torch_pruning's op counter, batch size 1."""
    varying = np.abs(mult).sum(axis=1) > 0
    # the counter divides by the batch the model was called with, not by an op's dim 0 (patches, tokens)
    batch = calls[0][2][0] if calls else 1

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
        if isinstance(m, CONV_TYPES):
            # per position: k * in * out / groups = in/groups-per-out * out: weight numel
            per_out = 1.0 / batch
            if is_depthwise(m):
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
        else:  # an op with a counter hook of its own (timm's Attention): Torch-Pruning's count, linearised
            linear = _linearised(m, ishape, oshape, ipos + opos, varying, mult)
            if linear is None:
                log.warning("%s (%s): its ops are not costed analytically", name, type(m).__name__)
            else:
                const, slope, position = linear
                macs.append((const / batch, [], name))
                if slope:
                    macs.append((slope / batch, [position], name))
    for pname, p in model.named_parameters():
        ppos = list(range(pos, pos + p.dim()))
        pos += p.dim()
        params.append(term(1.0, ppos, pname.rsplit(".", 1)[0]))
    assert pos == len(dims)  # positions of dims are the rows of `factors` (same order)
    return macs, params


def polynomial(factors: np.ndarray, terms: list[tuple]) -> CostPolynomial:
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


def term_value(terms: list[tuple], owner: str, factors: np.ndarray, kept: np.ndarray) -> float:
    values = factors[:, :-1] @ kept + factors[:, -1]
    return float(sum(c * np.prod([values[p] for p in ps]) for c, ps, o in terms if o == owner))
