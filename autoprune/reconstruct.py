"""Least-squares reconstruction of a pruned model (He et al. 2017, "Channel pruning for accelerating
very deep neural networks"; ThiNet): every dense convolution and linear layer of the pruned copy
is refitted so that, on a few calibration images, its outputs reproduce the unpruned model's.

One forward pass of the unpruned model records each layer's outputs at a seeded sample of output
positions (He et al. sample positions too: all of them would not fit for a 224-pixel net). Then
one forward pass of the pruned model refits each layer in a pre-forward hook, in execution order,
on the inputs the pruned model really gives it -- upstream layers already refitted, so errors do
not pile up -- by ridge-regularised linear least squares over its kept input channels:
W = (X^T X + lambda I)^-1 X^T Y, all output channels in one `torch.linalg.solve`, on the device.
The targets are the unpruned layer's outputs at the kept output channels (pre-BN for a conv
followed by BN; adaptive BN recalibrates afterwards, as for every candidate). Grouped and
depthwise convolutions keep their weights (a per-group solve would fit 9 numbers per channel).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.graph import PruningGraph, chunk_positions

ROWS = 4096  # sampled output positions per layer: rows of each least-squares problem
RIDGE = 1e-3  # lambda, relative to the mean of diag(X^T X)


def kept_outputs(graph: PruningGraph, kept, orders: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer whose output channels were pruned: the unpruned indices of the channels it keeps."""
    out = {}
    for layer in graph.layers:
        if layer.group < 0:
            continue
        g = graph.groups[layer.group]
        n_remove = g.channels - int(kept[g.index])
        if n_remove <= 0:
            continue
        removed = set(chunk_positions(g.channels, g.divisor, orders[g.index][:n_remove // g.divisor].tolist()))
        out[layer.name] = torch.tensor([c for c in range(g.channels) if c not in removed])
    return out


def _refittable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def _rows(x: torch.Tensor, m: nn.Module, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The layer's input as least-squares rows at output positions `pos` (+ a ones column for a bias)."""
    if isinstance(m, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])[pos[0]]
    else:
        n, i, j = pos
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
        xp = F.pad(x, (pw, pw, ph, ph))
        di = (torch.arange(kh, device=x.device) * dh)[None, :, None]
        dj = (torch.arange(kw, device=x.device) * dw)[None, None, :]
        patches = xp[n[:, None, None], :, (i * sh)[:, None, None] + di, (j * sw)[:, None, None] + dj]  # R,kh,kw,C
        rows = patches.permute(0, 3, 1, 2).reshape(len(n), -1)
    if m.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, device=rows.device, dtype=rows.dtype)], dim=1)
    return rows


def _targets(out: torch.Tensor, m: nn.Module, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return out.reshape(-1, out.shape[-1])[pos[0]]
    n, i, j = pos
    return out[n, :, i, j]


def _positions(out: torch.Tensor, m: nn.Module, rows: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    if isinstance(m, nn.Linear):
        total = out.reshape(-1, out.shape[-1]).shape[0]
        return (torch.randperm(total, generator=gen)[:rows].to(out.device),)
    n, _, h, w = out.shape
    flat = torch.randperm(n * h * w, generator=gen)[:rows]
    return tuple(t.to(out.device) for t in (flat // (h * w), flat % (h * w) // w, flat % w))


@torch.no_grad()
def base_samples(base: nn.Module, images: torch.Tensor, *, rows: int = ROWS, seed: int = 0) -> dict[str, tuple]:
    """Per refittable layer of `base`: (sampled output positions, the unpruned outputs there) on `images`.

    They depend on the unpruned model only, so a run computes them once for all its candidates.
    """
    layers = {name: m for name, m in base.named_modules() if _refittable(m)}
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, tuple] = {}

    def record(name: str):
        def hook(m, inputs, out):
            pos = _positions(out, m, rows, gen)
            samples[name] = (pos, _targets(out, m, pos))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    try:
        base(images)
    finally:
        for h in handles:
            h.remove()
    return samples


@torch.no_grad()
def reconstruct(pruned: nn.Module, base: nn.Module, kept_out: dict[str, torch.Tensor], images: torch.Tensor, *,
                rows: int = ROWS, ridge: float = RIDGE, seed: int = 0, samples: dict[str, tuple] | None = None) -> int:
    """Refit `pruned`'s dense layers in place to reproduce `base`'s outputs on `images`; returns how many.

    `base` and `pruned` must be on the same device as `images`, in eval mode; module names match.
    `samples`: `base_samples(base, images, rows=rows, seed=seed)` computed before (the same values).
    """
    if samples is None:
        samples = base_samples(base, images, rows=rows, seed=seed)
    layers = {name: m for name, m in pruned.named_modules() if _refittable(m) and name in samples}
    done = 0

    def refit(name: str):
        def hook(m, inputs):
            nonlocal done
            pos, target = samples[name]
            if name in kept_out:
                target = target[:, kept_out[name].to(target.device)]
            x = _rows(inputs[0], m, pos).double()
            gram = x.T @ x
            lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            w = torch.linalg.solve(gram + lam * eye, x.T @ target.double()).T.to(m.weight.dtype)
            if m.bias is not None:
                m.bias.copy_(w[:, -1])
                w = w[:, :-1]
            m.weight.copy_(w.reshape(m.weight.shape))
            done += 1
        return hook

    handles = [m.register_forward_pre_hook(refit(n)) for n, m in layers.items()]
    try:
        pruned(images)
    finally:
        for h in handles:
            h.remove()
    return done


RECONSTRUCT_BATCHES = 4  # of the run's BN-calibration batches (64 images each): 256 images
# The ladder's first rung refits cheaply: 1 batch, 1024 rows per layer -- ~1/3 of the full refit's time, and on
# ResNet-20 at 30% FLOPs it keeps a candidate at 69% held-out where no refit leaves 17% (full refit: 81%).
QUICK_BATCHES, QUICK_ROWS = 1, 1024


class Reconstructor:
    """What refitting a run's candidates needs, built once: the unpruned model on the device, the
    calibration images and every group's removal order (which unpruned channels a layer keeps)."""

    def __init__(self, model: nn.Module, graph: PruningGraph, orders: list[torch.Tensor],
                 calib: list[torch.Tensor], device: torch.device, seed: int = 0) -> None:
        self.base = copy.deepcopy(model).to(device).eval()
        self.graph, self.orders, self.device, self.seed = graph, orders, device, seed
        self.images = torch.cat(calib[:RECONSTRUCT_BATCHES]).to(device)
        self._samples: dict[bool, dict[str, tuple]] = {}  # the unpruned model's targets: one forward per run

    def __call__(self, pruned: nn.Module, kept, *, quick: bool = False) -> nn.Module:
        """Refit `pruned` in place; `quick`: on QUICK_BATCHES batches at QUICK_ROWS rows (the ladder's rung 0)."""
        pruned.to(self.device).eval()
        images = self.images[:QUICK_BATCHES * len(self.images) // RECONSTRUCT_BATCHES] if quick else self.images
        rows = QUICK_ROWS if quick else ROWS
        if quick not in self._samples:
            self._samples[quick] = base_samples(self.base, images, rows=rows, seed=self.seed)
        reconstruct(pruned, self.base, kept_outputs(self.graph, kept, self.orders), images, rows=rows, seed=self.seed,
                    samples=self._samples[quick])
        return pruned

