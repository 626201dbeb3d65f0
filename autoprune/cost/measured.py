"""Measured latency: time the real (pruned) model on this machine, median of repeats."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def measure_latency_ms(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                       device: torch.device | str = "cpu", warmup: int = 10, repeats: int = 50) -> float:
    """Median wall time of one forward pass in milliseconds (CUDA synchronised when on GPU)."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)
