"""Measured latency: time the real (pruned) model on this machine, median of repeats.

`median_latencies_ms` is the one timing routine: the lookup-table profiler (`timing.py`) times its
layer blocks and its calibration models with it, so table and verification measure the same way.

Layer: the clock, the bottom of autoprune.cost's latency modules: it imports nothing of them.
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

from autoprune.evaluate import set_layout


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
def median_latencies_ms(cases: list[tuple[nn.Module, tuple[int, ...]]], *, batch: int = 1,
                        device: torch.device | str = "cpu", warmup: int = 10, repeats: int = 50,
                        threads: int | None = None, min_seconds: float | None = None,
                        max_seconds: float | None = None, rounds: int = 1,
                        memory_format: torch.memory_format = torch.contiguous_format) -> list[float]:
    """Median wall time (ms) of one forward pass of each (model, input shape without batch).

    Each case gets `repeats` timed runs, raised to fill `min_seconds` and capped to `max_seconds`
    (never fewer than 5), so small models are sampled over a span of time and large ones cost a
    bounded time. The runs are taken in `rounds` interleaved rounds over the cases: a machine that
    alternates between fast and slow spells (shared hosts do, for fractions of a second) then
    slows every case alike instead of a few of them at random. CUDA is synchronised per run.

    Every model is converted (in place) to `memory_format` and timed in it: by default PyTorch's
    contiguous layout, the one a deployed model and the lookup table's freshly built blocks have. The evaluator leaves models in channels_last, and a
    pruned copy of such a model mixes layouts. Timed as they were, on an H200 a searched ResNet-20
    measured 137% of the base model's latency; timed both contiguous, 99.4%
    (bench/results/gpu_checks-h200.md).
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prepared = [(set_layout(m, memory_format).to(device).eval(),
                 torch.randn(batch, *shape, device=device).contiguous(memory_format=memory_format))
                for m, shape in cases]
    with torch_threads(threads):
        counts = []
        for m, x in prepared:
            t0 = time.perf_counter()
            for _ in range(max(warmup, 1)):
                m(x)
            sync()
            per_call = max((time.perf_counter() - t0) / max(warmup, 1), 1e-9)
            n = max(repeats, int(min_seconds / per_call)) if min_seconds else repeats
            if max_seconds:
                n = min(n, int(max_seconds / per_call))
            counts.append(max(5, n))
        samples: list[list[float]] = [[] for _ in prepared]
        rounds = max(1, min(rounds, min(counts)))
        for r in range(rounds):
            for i, (m, x) in enumerate(prepared):
                for _ in range(counts[i] * (r + 1) // rounds - counts[i] * r // rounds):
                    t = time.perf_counter()
                    m(x)
                    sync()
                    samples[i].append(time.perf_counter() - t)
    return [1000.0 * statistics.median(s) for s in samples]


def measure_latency_ms(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                       device: torch.device | str = "cpu", warmup: int = 10, repeats: int = 50,
                       threads: int | None = None, min_seconds: float | None = None,
                       max_seconds: float | None = None) -> float:
    """Median wall time of one forward pass of `model` in milliseconds (see `median_latencies_ms`)."""
    return median_latencies_ms([(model, input_shape)], batch=batch, device=device, warmup=warmup,
                               repeats=repeats, threads=threads, min_seconds=min_seconds,
                               max_seconds=max_seconds)[0]


class MeasuredLatencyCost:
    """latency_ms of a policy by pruning a copy and timing it; one measurement per distinct policy."""

    metric = "latency_ms"

    def __init__(self, model: nn.Module, space, *, batch: int = 1, device: str | torch.device = "cpu",
                 threads: int | None = None, warmup: int = 10, repeats: int = 50,
                 min_seconds: float | None = 1.0, max_seconds: float | None = 2.0) -> None:
        self.model, self.space = model, space
        self.input_shape = tuple(space.graph.input_shape)
        self.options = dict(batch=batch, device=device, threads=threads, warmup=warmup, repeats=repeats,
                            min_seconds=min_seconds, max_seconds=max_seconds)
        self._cache: dict[tuple[int, ...], float] = {}

    def cost(self, ratios: np.ndarray) -> float:
        kept = tuple(int(k) for k in self.space.kept(ratios))
        if kept not in self._cache:
            pruned = self.space.apply(self.model, self.space.ratios(np.array(kept)))
            self._cache[kept] = measure_latency_ms(pruned, self.input_shape, **self.options)
        return self._cache[kept]
