"""Measured latency: time the real (pruned) model on this machine, median of repeats.

`measure_latency_ms` is the one timing routine: the lookup-table profiler times its layer blocks
and its calibration models with it, so table and verification measure the same way.
`MeasuredLatencyCost` is the cost model that prunes and times every policy it is asked about
(seconds per new policy, cached): ground truth for checking the table, or a cost model for users
who would rather pay for measurements than trust a prediction.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: leave torch's setting), then restore."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def measure_latency_ms(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                       device: torch.device | str = "cpu", warmup: int = 10, repeats: int = 50,
                       threads: int | None = None, max_seconds: float | None = None) -> float:
    """Median wall time of one forward pass in milliseconds (CUDA synchronised when on GPU).

    `max_seconds` caps the timed repeats (never fewer than 5) so that large models and layers
    cost a bounded time to measure; small ones still get all `repeats`.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch_threads(threads):
        t0 = time.perf_counter()
        for _ in range(warmup):
            model(x)
        sync()
        if max_seconds is not None and warmup:
            per_call = (time.perf_counter() - t0) / warmup
            repeats = max(5, min(repeats, int(max_seconds / max(per_call, 1e-9))))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


class MeasuredLatencyCost:
    """latency_ms of a policy by pruning a copy and timing it; one measurement per distinct policy."""

    metric = "latency_ms"

    def __init__(self, model: nn.Module, space, *, batch: int = 1, device: str | torch.device = "cpu",
                 threads: int | None = None, warmup: int = 10, repeats: int = 50,
                 max_seconds: float | None = 2.0) -> None:
        self.model, self.space = model, space
        self.input_shape = tuple(space.graph.input_shape)
        self.options = dict(batch=batch, device=device, threads=threads, warmup=warmup, repeats=repeats,
                            max_seconds=max_seconds)
        self._cache: dict[tuple[int, ...], float] = {}

    def cost(self, ratios: np.ndarray) -> float:
        kept = tuple(int(k) for k in self.space.kept(ratios))
        if kept not in self._cache:
            pruned = self.space.apply(self.model, self.space.ratios(np.array(kept)))
            self._cache[kept] = measure_latency_ms(pruned, self.input_shape, **self.options)
        return self._cache[kept]
