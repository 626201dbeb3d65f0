"""MetaPruning's PruningNet (Liu et al. 2019), derived from the engine's channel groups of any analysable CNN.

For every conv/linear layer a generator -- MetaPruning's FC -> ReLU -> FC -- maps the layer's
encoding (its kept input and output channels over its full ones, from `PruningGraph.layer_io`, so
coupled, concatenated and depthwise layers are covered) to the layer's full-size weight. The
generator's output bias is the pretrained weight and its last FC starts at zero, so at any
encoding the PruningNet starts as the pretrained network pruned by the run's criterion; training
can only improve on that.

Cropping the generated weight to the kept channels is done as masking: every group's channels
are ranked once by the criterion on the pretrained model (`policy.removal_orders`), and the
outputs of the group's layers -- after the BatchNorm that follows them, where there is one -- are
multiplied by a 0/1 mask that keeps the top-ranked `kept` channels. Consumers then see exactly
the inputs of the physically pruned network, and the weights of removed channels never matter:
the masked full-width network computes what the cropped one would (`tests/test_metapruning.py`
checks it against `apply_policy`). Full width costs compute, not correctness, and keeps one
network object for every encoding.

`train_pruningnet` trains on the training split, a fresh random encoding per batch drawn the way
the search draws candidates (random ratios projected onto the budget), with a checkpoint after
every epoch: an interrupted training continues from the last one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from autoprune.data import TensorSplit, batches
from autoprune.errors import UserError
from autoprune.saved import load_versioned, save_atomic
from autoprune.graph import PruningGraph, chunk_positions
from autoprune.hooks import forward_hooks, record_calls, register
from autoprune.probe import call_model
from autoprune.train import augment

log = logging.getLogger(__name__)

FORMAT, VERSION = "autoprune.pruningnet", 1
# the generators' last FC starts at zero: generated = pretrained weight at every encoding, exactly. Training
# still moves it (its gradient is the weight's gradient times the hidden activations), and the first FC after it
INIT_STD = 0.0
# the mask hooks `materialize` registered on each network it made, so `unmasked` removes those and no other
_MASK_HANDLES: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()


def structure_key(graph: PruningGraph) -> str:
    """What a PruningNet is tied to: the model, its groups and layers with their widths."""
    text = json.dumps([graph.model_id, list(graph.input_shape), [(g.name, g.channels, g.divisor) for g in graph.groups],
                       [(lay.name, lay.in_channels, lay.out_channels) for lay in graph.layers]])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _mask_points(model: nn.Module, graph: PruningGraph) -> dict[str, int]:
    """Module name -> group whose mask its output gets: each out-layer of a group, or the BN right after it."""
    model.eval()
    calls, _ = record_calls(model, lambda: call_model(model, graph.example()))  # every leaf call, in order
    owner = {name: g.index for g in graph.groups for name in g.layers}
    points: dict[str, int] = {}
    for i, (name, _, _, out) in enumerate(calls):
        if name in owner:
            nxt = calls[i + 1] if i + 1 < len(calls) else None
            bn = nxt is not None and isinstance(nxt[1], nn.modules.batchnorm._BatchNorm) and nxt[2] == out
            points[nxt[0] if bn else name] = owner[name]
    return points


class PruningNet(nn.Module):
    """Generators of every conv/linear layer's weight from its encoding, over a masked copy of the network."""

    def __init__(self, model: nn.Module, graph: PruningGraph, orders: list[torch.Tensor], hidden: int = 32,
                 seed: int = 0) -> None:
        super().__init__()
        self.graph, self.hidden = graph, hidden
        self.base = copy.deepcopy(model).cpu().train()
        modules = dict(self.base.named_modules())
        self.layer_names = [lay.name for lay in graph.layers]
        self.shapes = [tuple(modules[n].weight.shape) for n in self.layer_names]
        self.generators = nn.ModuleList()
        with torch.random.fork_rng(devices=[]):  # the generators' initial draws: the same for a seed
            torch.manual_seed(seed)
            for name in self.layer_names:
                weight = modules[name].weight
                weight.requires_grad_(False)  # replaced by the generated one in every forward pass
                gen = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, weight.numel()))
                nn.init.normal_(gen[2].weight, std=INIT_STD) if INIT_STD else nn.init.zeros_(gen[2].weight)
                with torch.no_grad():
                    gen[2].bias.copy_(weight.detach().flatten())
                self.generators.append(gen)
        self.full_io = np.maximum(graph.layer_channels(graph.channels), 1.0)
        # rank of every channel of every group: its chunk position's place in the removal order
        self.ranks = []
        for g, order in zip(graph.groups, orders):
            size = g.channels // g.divisor
            place = torch.empty(size, dtype=torch.long)
            place[order] = torch.arange(size)
            self.ranks.append(place.repeat(g.divisor))
        self.points = _mask_points(self.base, graph)

    def _mask_hooks(self, net: nn.Module, kept: np.ndarray) -> list[tuple[nn.Module, Callable]]:
        """(module, hook) at every mask point of `net` (the base or a copy of it): its group's mask of `kept`."""
        modules, masks = dict(net.named_modules()), self.masks(kept)
        return [(modules[name], _fixed_mask(masks[group])) for name, group in self.points.items()]

    def masks(self, kept: np.ndarray) -> dict[int, torch.Tensor]:
        """Per group, 1 for the channels a physical pruning to `kept` keeps, else 0."""
        out = {}
        for g in self.graph.groups:
            removed_per_chunk = (g.channels - int(kept[g.index])) // g.divisor
            out[g.index] = (self.ranks[g.index] >= removed_per_chunk).float()
        return out

    def weights(self, kept: np.ndarray) -> dict[str, torch.Tensor]:
        """The generated full-size weight of every layer for the encoding of `kept`."""
        enc = torch.tensor(self.graph.layer_channels(kept) / self.full_io, dtype=torch.float32)
        return {f"{name}.weight": gen(enc[i]).view(shape)
                for i, (name, gen, shape) in enumerate(zip(self.layer_names, self.generators, self.shapes))}

    def forward(self, x: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
        # the masks hook the base for this pass only: the base never carries hooks of ours between passes
        with forward_hooks(self._mask_hooks(self.base, kept)):
            return functional_call(self.base, self.weights(kept), (x,))

    @torch.no_grad()
    def materialize(self, kept: np.ndarray) -> nn.Module:
        """A stand-alone masked full-width network with the generated weights of `kept` (to score or prune)."""
        net = copy.deepcopy(self.base)
        modules = dict(net.named_modules())
        for key, w in self.weights(kept).items():
            modules[key.rsplit(".", 1)[0]].weight = nn.Parameter(w.detach().clone())
        _MASK_HANDLES[net] = register(self._mask_hooks(net, kept))
        return net


def _fixed_mask(mask: torch.Tensor):
    def hook(module, inputs, output):
        shape = [1] * output.dim()
        shape[1 if output.dim() > 2 else -1] = -1
        return output * mask.to(output.device, output.dtype).view(shape)
    return hook


def unmasked(net: nn.Module) -> nn.Module:
    """`net` without the mask hooks `materialize` put on it (before physical pruning: the mask is the pruning).

    Only those are removed, by their handles: hooks the user registered on the model (copied with it)
    stay and run as before."""
    for handle in _MASK_HANDLES.pop(net, []):
        handle.remove()
    return net


def save_checkpoint(path: Path, pnet: PruningNet, optimizer, epoch: int, epochs: int, meta: dict) -> None:
    state = {"format": FORMAT, "version": VERSION, "structure": structure_key(pnet.graph), "model": pnet.graph.model_id,
             "hidden": pnet.hidden, "epoch": epoch, "epochs": epochs, "meta": meta, "state_dict": pnet.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None}
    save_atomic(state, path)


def load_checkpoint(path: Path, graph: PruningGraph) -> dict:
    """A PruningNet file, refused in one line when it is not one or belongs to another model or graph."""
    state = load_versioned(path, FORMAT, VERSION, "PruningNet")
    if state.get("structure") != structure_key(graph):
        raise UserError(f"{path} is a PruningNet of {state.get('model')} with other channel groups or layers than "
                        f"this {graph.model_id}: train one for it (--pruningnet-epochs)")
    return state


def train_pruningnet(pnet: PruningNet, problem, *, epochs: int, lr: float, batch_size: int, seed: int,
                     checkpoint: Path | None, start_epoch: int = 0, optimizer_state: dict | None = None,
                     on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Train in place on `problem.train` with a random projected encoding per batch; checkpoint per epoch."""
    train = getattr(problem, "train", None)
    if train is None or len(train) == 0:
        raise UserError("MetaPruning needs the training split to train its PruningNet")
    params = [p for p in pnet.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    steps_per_epoch = max(1, len(train) // batch_size)
    total = steps_per_epoch * epochs
    maxr = np.asarray(problem.space.max_ratios, dtype=np.float64)
    progress = on_progress or (lambda what, done, total: None)
    pad = max(1, problem.space.graph.input_shape[-1] // 14)
    start, history = time.perf_counter(), []
    for epoch in range(start_epoch, epochs):
        pnet.train()
        rng = np.random.default_rng([seed, epoch])  # per epoch, so a resumed training draws the same encodings
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        loss_sum, n, t0 = 0.0, 0, time.perf_counter()
        for step, (x, y) in enumerate(batches(train, batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_last=True)):
            for group in opt.param_groups:  # cosine over the whole training, whichever epoch it resumed at
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + step) / total))
            kept = problem.space.kept(problem.project(rng.uniform(0.0, maxr), rng))
            if isinstance(train, TensorSplit) and x.dim() == 4:
                x = augment(x, gen, pad)
            loss = F.cross_entropy(pnet(x, kept), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
            progress(f"training the PruningNet, epoch {epoch + 1}/{epochs}", epoch * steps_per_epoch + step + 1, total)
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(n, 1), "seconds": time.perf_counter() - t0})
        log.info("PruningNet epoch %d: %s", epoch + 1, history[-1])
        if checkpoint is not None:
            save_checkpoint(checkpoint, pnet, opt, epoch + 1, epochs, {"history": history, "lr": lr,
                                                                      "batch_size": batch_size, "seed": seed})
    return {"epochs": epochs, "trained_epochs": epochs - start_epoch, "seconds": time.perf_counter() - start,
            "history": history}
