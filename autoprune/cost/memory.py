"""Memory cost models: weight bytes and peak activation bytes of a policy, analytically.

Weights: every parameter of the pruned model at `bytes_per_value` (4 for fp32), i.e. the exact
params polynomial times the width. Activations: the largest working set of one convolution or
linear layer, input plus output tensor at `batch` (the convention of MCUNet and TinyML memory
planners for layer-by-layer execution). A residual branch's saved input is not added; the layer
sizes come from the graph's exact channel functions (`PruningGraph.layer_channels`).
"""
from __future__ import annotations

import numpy as np


class WeightBytes:
    """Bytes of all parameters of the pruned model."""

    metric = "weight_bytes"

    def __init__(self, space, bytes_per_value: int = 4) -> None:
        self.space, self.bytes_per_value = space, bytes_per_value

    def cost(self, ratios: np.ndarray) -> float:
        return float(self.bytes_per_value * self.space.params(ratios))


class PeakActivationBytes:
    """Largest input + output activation bytes of any conv/linear layer at a batch size."""

    metric = "activation_bytes"

    def __init__(self, space, batch: int = 1, bytes_per_value: int = 4) -> None:
        graph = space.graph
        self.space = space
        self.positions = np.array([[lay.in_hw, lay.out_hw] for lay in graph.layers], dtype=np.float64)
        self.scale = float(batch * bytes_per_value)

    def cost(self, ratios: np.ndarray) -> float:
        channels = self.space.graph.layer_channels(self.space.kept(ratios))  # (layers, 2): in, out
        return self.scale * float((channels * self.positions).sum(axis=1).max())


def memory_cost_models(space, batch: int = 1, bytes_per_value: int = 4) -> dict:
    return {"weight_bytes": WeightBytes(space, bytes_per_value),
            "activation_bytes": PeakActivationBytes(space, batch, bytes_per_value)}
