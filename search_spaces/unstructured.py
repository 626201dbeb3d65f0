"""Unstructured search space: one weight-sparsity ratio per convolution / linear layer.

The channel space removes whole channels, so its savings are real on any hardware. This space
instead zeroes individual weights (NNI's `sparsity_per_layer`, magnitude pruning): far finer
grained, usually far more accuracy at the same parameter count, but the tensors keep their shape.

Ratios snap to a whole number of zeroed weights per layer (ratio = zeros / weight numel), so what
`snap` returns is exactly what `apply` produces and what the cost functions charge for.

Cost model (why MACs shrink at all): MACs are counted as a *sparse kernel* would execute them --
every zeroed weight removes the multiply-accumulates it takes part in (its layer's weight MACs
divided by the weight count). Biases, norms, activations and pooling stay at their dense cost, so
`macs(0) == graph.base_macs` exactly. Dense hardware (cuDNN, most CPU kernels) will NOT see these
savings: a zero weight is still multiplied. Use a measured-latency cost model to budget for such
targets; the MACs here are what a sparse runtime could reach at best.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import InitVar, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from autoprune.errors import UserError
from autoprune.graph import LAYER_TYPES, PruningGraph

log = logging.getLogger(__name__)

# Unstructured criteria score single weights; l1 and l2 give the same order (|w|), so both are
# magnitude pruning. Group criteria of the channel space (bn-scale, fpgm, lamp) have no meaning here.
CRITERIA = ("l1", "l2", "random")


def _is_ignored(name: str, ignored: list[str]) -> bool:
    """A layer is ignored when it or one of the modules containing it is in the ignore list."""
    return any(name == ig or name.startswith(ig + ".") for ig in ignored)


def _weight_macs(layer_macs: float, module: nn.Module) -> float:
    """The part of a layer's MACs (as the graph counts them) that multiplies weights.

    The graph follows torch_pruning's counter: a convolution costs weight_numel * positions for its
    weights plus out_channels * positions for its bias, so the weight share is numel/(numel+out)
    whatever the number of calls; a linear layer adds out_features for its bias.
    """
    if module.bias is None:
        return layer_macs
    numel = module.weight.numel()
    if isinstance(module, nn.Linear):
        return layer_macs - module.out_features
    return layer_macs * numel / (numel + module.out_channels)


@dataclass
class UnstructuredSpace:
    """Ratios address the graph's conv/linear layers (stem, classifier and --ignore excluded)."""

    graph: PruningGraph
    model: InitVar[nn.Module]  # read once for weight sizes; not kept, so the space pins no tensors
    max_ratio: float = 0.95
    kind: str = "unstructured"
    layer_names: list[str] = field(init=False)
    numel: np.ndarray = field(init=False, repr=False)  # weights per layer
    max_zeros: np.ndarray = field(init=False, repr=False)
    macs_per_weight: np.ndarray = field(init=False, repr=False)  # MACs one zeroed weight removes
    base_macs: float = field(init=False)
    base_params: float = field(init=False)

    def __post_init__(self, model: nn.Module) -> None:
        if not 0.0 <= self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in [0, 1), got {self.max_ratio}")
        modules = dict(model.named_modules())
        layers = [lay for lay in self.graph.layers if not _is_ignored(lay.name, self.graph.ignored)]
        if not layers:
            raise UserError("no layer left to sparsify (all are stem, classifier or --ignore)")
        numel, weight_macs = [], []
        for lay in layers:
            module = modules.get(lay.name)
            if not isinstance(module, LAYER_TYPES):
                raise UserError(f"the model has no conv/linear layer '{lay.name}': the graph was built for another model")
            n = module.weight.numel()
            bias = module.bias.numel() if module.bias is not None else 0
            if n + bias != lay.params:
                raise UserError(f"layer '{lay.name}' has {n + bias} parameters in the model but {lay.params:.0f} "
                                "in the graph: the graph was built for another model")
            numel.append(n)
            weight_macs.append(_weight_macs(lay.macs, module))
        self.layer_names = [lay.name for lay in layers]
        self.numel = np.array(numel, dtype=np.float64)
        self.max_zeros = np.floor(self.max_ratio * self.numel + 1e-9)
        self.macs_per_weight = np.array(weight_macs, dtype=np.float64) / self.numel
        self.base_macs = float(self.graph.base_macs)
        # Counted from the model (parameters() deduplicates shared tensors) so that params(0)
        # is exactly what the model holds, whatever the graph's counter includes.
        self.base_params = float(sum(p.numel() for p in model.parameters()))

    @property
    def size(self) -> int:
        return len(self.layer_names)

    @property
    def names(self) -> list[str]:
        return list(self.layer_names)

    @property
    def max_ratios(self) -> np.ndarray:
        """Largest effective ratio per layer (the most weights the space may zero)."""
        return self.max_zeros / self.numel

    def zeros(self, ratios: np.ndarray) -> np.ndarray:
        """Zeroed weights per layer: nearest whole count, within [0, max_ratio * numel]."""
        r = np.asarray(ratios, dtype=np.float64)
        if r.shape != (self.size,):
            raise ValueError(f"expected {self.size} ratios (one per layer), got shape {r.shape}")
        return np.clip(np.round(np.clip(r, 0.0, 1.0) * self.numel), 0.0, self.max_zeros)

    def snap(self, ratios: np.ndarray) -> np.ndarray:
        """Ratios that apply reproduces exactly (zeros / numel)."""
        return self.zeros(ratios) / self.numel

    def step(self, ratios: np.ndarray, i: int, direction: int) -> np.ndarray | None:
        """Ratios with layer i 0.1% of its weights sparser (+1) or denser (-1); None at a bound.

        The budget projection refines with these steps; 0.1% keeps it well inside its 0.5% tolerance.
        """
        zeros = self.zeros(ratios).astype(np.float64)
        delta = max(1.0, np.ceil(0.001 * self.numel[i]))
        new = zeros[i] + direction * delta
        if new < 0 or new > self.max_zeros[i]:
            return None
        zeros[i] = new
        return zeros / self.numel

    def params(self, ratios: np.ndarray) -> float:
        """Non-zero parameters: the model's parameters minus the zeroed weights."""
        return float(self.base_params - self.zeros(ratios).sum())

    def macs(self, ratios: np.ndarray) -> float:
        """Sparse-kernel MACs: base MACs minus the MACs of every zeroed weight (see module doc)."""
        return float(self.base_macs - self.macs_per_weight @ self.zeros(ratios))

    def apply(self, model: nn.Module, ratios: np.ndarray, *, criterion: str = "l1", seed: int = 0) -> nn.Module:
        """Copy of `model` with exactly round(ratio * numel) weights zeroed per layer.

        The result is a plain module (pruning re-parametrisation removed), so it saves, loads and
        runs like the original. Weights that were already zero count as the smallest magnitudes,
        so on an already-sparse model the zero count can exceed the request.
        """
        if criterion not in CRITERIA:
            raise UserError(f"unknown criterion '{criterion}' for unstructured pruning: one of {', '.join(CRITERIA)}")
        zeros = self.zeros(ratios).astype(np.int64)
        # torch.nn.utils.prune views weights flat: needs contiguous (not channels_last) tensors
        pruned = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        modules = dict(pruned.named_modules())
        missing = [n for n in self.layer_names if n not in modules]
        if missing:
            raise UserError(f"the model has no layer '{missing[0]}': the space was built for another model")
        # random_unstructured draws from torch's global generator: fork it so a seeded apply is
        # reproducible and leaves the caller's random state as it was.
        cuda = sorted({p.device.index or 0 for p in pruned.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:  # only the forked devices: torch.manual_seed would reseed them all
                torch.cuda.default_generators[index].manual_seed(seed)
            for name, k in zip(self.layer_names, zeros):
                if k == 0:
                    continue
                module = modules[name]
                if criterion == "random":
                    prune.random_unstructured(module, "weight", amount=int(k))
                else:
                    prune.l1_unstructured(module, "weight", amount=int(k))
                prune.remove(module, "weight")
        log.debug("sparsified %d layers, %d weights zeroed (%s)", int((zeros > 0).sum()), int(zeros.sum()), criterion)
        return pruned

    def describe(self) -> dict:
        return {"kind": self.kind, "max_ratio": self.max_ratio, "granularity": "weight",
                "cost_model": "sparse-kernel MACs, non-zero params"}


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Measured fraction of exactly-zero weights of every conv/linear layer (stem and classifier included)."""
    report: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            w = module.weight.detach()
            report[name] = float((w == 0).sum().item()) / w.numel()
    return report
