"""Channel importance criteria by name: Torch-Pruning's importances, and the data they need.

Weight criteria (l1, l2, bn-scale, lamp, fpgm, random) score the unpruned weights alone.
Data-aware criteria score them with a fixed set of labelled training batches, taken once per
run (the held-out split is never touched) and turned into one removal order per group, which
every candidate then reuses (`Problem.channel_orders`), so no candidate pays for gradients:

- taylor: Torch-Pruning's GroupTaylorImportance, |w * dL/dw| with the gradients of the mean
  cross-entropy summed over the batches (Molchanov et al. 2019).
- hessian: GroupHessianImportance, OBD's w^2 * H with the diagonal Fisher (mean of per-sample
  squared gradients) standing in for H. Its `accumulate_grad` in Torch-Pruning 1.6 keys the
  accumulator by parameter but looks it up by name, so it keeps only the last sample; we put the
  mean squared per-sample gradient into `.grad`, which its `__call__` reads.
- activation: ActivationImportance, the mean |input| each consumer layer sees per channel,
  averaged over the batches (its forward hook keeps only the last batch).
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import UserError

WEIGHT_CRITERIA = ("l1", "l2", "bn-scale", "lamp", "fpgm", "random")
DATA_CRITERIA = ("taylor", "hessian", "activation")
CRITERIA = WEIGHT_CRITERIA + DATA_CRITERIA
IMPORTANCE_BATCHES = 4  # x 64 training images: gradients of a whole ResNet-56 in ~2 s on one core
IMPORTANCE_BATCH_SIZE = 64
HESSIAN_SAMPLES = 128  # per-sample backward passes: the expensive one


class SeededRandomImportance(tp.importance.RandomImportance):
    """Torch-Pruning's RandomImportance drawing from its own generator, seeded: the user's global torch RNG
    is neither reseeded nor advanced (RandomImportance itself calls torch.rand on the global one)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


def importance(name: str, seed: int = 0) -> tp.importance.Importance:
    table = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "random": lambda: SeededRandomImportance(seed),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "hessian": lambda: tp.importance.GroupHessianImportance(),
        "activation": lambda: tp.importance.ActivationImportance(),
    }
    if name not in table:
        raise UserError(f"unknown importance criterion '{name}': one of {', '.join(table)}")
    return table[name]()


def labelled_batches(train: Dataset, *, n_batches: int = IMPORTANCE_BATCHES, batch_size: int = IMPORTANCE_BATCH_SIZE,
                     seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, seeded set of (images, labels) from the training split."""
    gen = torch.Generator().manual_seed(seed + 7919)  # not the BN-calibration images' draw
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    batches = []
    for x, y in loader:
        batches.append((x, y))
        if len(batches) == n_batches:
            break
    return batches


def prepare(model: nn.Module, imp: tp.importance.Importance, name: str,
            batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Leave on `model` (eval mode, CPU) what criterion `name` reads: gradients or activations."""
    if name not in DATA_CRITERIA:
        return
    if not batches:
        raise UserError(f"criterion '{name}' needs training images and none were given")
    model.eval()
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss()
    if name == "taylor":
        for x, y in batches:
            loss_fn(model(x), y).backward()
    elif name == "hessian":
        squares = {p: torch.zeros_like(p) for p in model.parameters() if p.requires_grad}
        samples = [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(len(x))][:HESSIAN_SAMPLES]
        for x, y in samples:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for p, s in squares.items():
                if p.grad is not None:
                    s += p.grad.detach() ** 2
        for p, s in squares.items():
            p.grad = s / len(samples)
    else:  # activation
        sums: dict[nn.Module, torch.Tensor] = {}
        with torch.no_grad(), imp.compute_importance(model):
            for x, _ in batches:
                model(x)
                for m in model.modules():
                    if hasattr(m, "_importance"):
                        sums[m] = sums.get(m, 0) + m._importance
        for m, s in sums.items():
            m._importance = s / len(batches)
