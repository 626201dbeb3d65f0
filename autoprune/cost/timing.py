"""How a latency table is timed: the units' grids and whole models, each against the unpruned model.

Layer: the middle step of a profile (units -> timing -> table): it times what `units.py` describes
on the clock of `measured.py` and writes every measurement into the table (`lut.py`) as soon as it
has it, so an interrupted profile resumes; it never predicts. `profile.py` calls it.

1. every distinct timing unit timed over its grid of kept (in, out) channels: warm-up, repeats
   taken in rounds interleaved over the grid's points, median. The unpruned model is timed
   briefly before and after each unit: the pair says how the machine's speed moved meanwhile (a
   unit whose pair differs by more than `settle` is timed again, up to `settle_retries` times),
   the unit is normalised by it (`lut.LatencyPredictor`), and the spread of all those timings is
   the table's stability;
2. the unpruned model timed whole: the remainder (adds, pooling, dispatch) is that minus its units;
3. the calibration models (`units.calibration_kept`) and the floor (the thinnest policy the space
   allows) timed whole, each interleaved with the unpruned model: its speedup over it is what
   counts, and the base is the median of all unpruned runs.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.cost.lut import LatencyTable, kept_key
from autoprune.cost.measured import measure_latency_ms, median_latencies_ms, torch_threads
from autoprune.cost.units import Unit
from autoprune.graph import PruningGraph
from autoprune.policy import apply_policy

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class ProfileSettings:
    """How a profile times, on which device and batch: `autoprune profile`'s options (`profile.py`
    imports it from here, beside the timing that reads it)."""

    device: str = "auto"
    batch: int = 1
    threads: int | None = None  # None: torch's current setting (all cores unless OMP_NUM_THREADS)
    grid: int = 8  # points per channel axis a policy can change
    warmup: int = 5  # per grid point
    repeats: int = 25  # per grid point (median)
    rounds: int = 5  # the repeats of a layer shape's grid points are taken in interleaved rounds
    point_seconds: float = 0.25  # cap on the timed repeats of one grid point (large layers)
    model_repeats: int = 50  # whole-model measurements (base, calibration): at least these runs,
    model_min_seconds: float = 1.0  # spread over at least this long,
    model_seconds: float = 2.0  # at most this long
    calibration: int = 12  # random pruned models the table is calibrated on
    seed: int = 0
    check_seconds: float = 0.3  # the unpruned model timed this long before and after every unit
    settle: float = 0.10  # the machine's speed may move this much over one unit (else it is timed again)
    settle_retries: int = 2
    # warn when the unpruned timings' 10-90% range exceeds this share of their median: quiet profiles here spread
    # 3-17%, profiles beside two busy/idle processes 32-99% (bench/results/latency_validation-*-quiet/-loaded.md)
    noisy: float = 0.25

    def table_settings(self) -> dict:
        """What decides the measured numbers (device and threads are in the fingerprint)."""
        d = asdict(self)
        return {k: d[k] for k in ("grid", "warmup", "repeats", "rounds", "point_seconds", "model_repeats",
                                  "model_min_seconds", "model_seconds", "calibration", "seed", "check_seconds",
                                  "settle", "settle_retries", "noisy")}


CHUNK_BYTES = 256 * 2**20  # blocks of one layer shape timed together, at most this many weight bytes


def _time_unit(unit: Unit, settings: ProfileSettings, device: torch.device,
               tick: Callable[[], None]) -> list[list[float]]:
    """Median latency of the unit at every grid point, points interleaved (in chunks that fit memory)."""
    points = unit.points()
    ms: dict[tuple[int, int], float] = {}
    i = 0
    while i < len(points):
        chunk, size = [], 0
        while i < len(points) and (not chunk or size < CHUNK_BYTES):
            block, shape = unit.block(*points[i])
            size += 4 * sum(p.numel() for p in block.parameters())
            chunk.append((points[i], block, shape))
            i += 1
        times = median_latencies_ms([(b, s) for _, b, s in chunk], batch=settings.batch, device=device,
                                    warmup=settings.warmup, repeats=settings.repeats,
                                    max_seconds=settings.point_seconds, rounds=settings.rounds)
        for (point, _, _), t in zip(chunk, times):
            ms[point] = t
            tick()
    return [[ms[(cin, cout)] for cout in unit.out_grid] for cin in unit.in_grid]


class Timer:
    """The timing steps of a profile, each saved into the table as soon as it is done."""

    def __init__(self, table: LatencyTable, path: Path, settings: ProfileSettings, device: torch.device,
                 graph: PruningGraph, model: nn.Module, on_progress: Progress | None) -> None:
        self.table, self.path, self.settings, self.device, self.graph = table, path, settings, device, graph
        self.model, self.base_model = model, copy.deepcopy(model)
        self.progress = on_progress or (lambda what, done, total: None)
        self.count, self.total = 0, 0
        self.start = time.perf_counter()
        self.whole_options = dict(batch=settings.batch, device=device, repeats=settings.model_repeats,
                                  min_seconds=settings.model_min_seconds, max_seconds=settings.model_seconds)

    def tick(self, what: str) -> None:
        self.count += 1
        self.progress(what, self.count, max(self.total, self.count))

    def run(self, todo: dict[str, Unit], policies: list[np.ndarray], floor_kept: np.ndarray, threads: int) -> None:
        """Time the units still to do, then the whole models, with `threads` intra-op threads."""
        with torch_threads(threads):
            self.units(todo)
            self.whole(policies, floor_kept)

    def save(self) -> None:
        now = time.perf_counter()
        self.table.seconds += now - self.start
        self.start = now
        self.table.save(self.path)

    def check_base(self) -> float:
        """The unpruned model timed briefly: where the machine's speed stands now."""
        s = self.settings
        ms = measure_latency_ms(self.base_model, self.graph.input_shape, batch=s.batch, device=self.device, warmup=2,
                                repeats=5, min_seconds=s.check_seconds, max_seconds=2 * s.check_seconds)
        self.table.stability.setdefault("base_checks_ms", []).append(ms)
        return ms

    def plan(self, units: list[Unit], policies: list[np.ndarray], floor_kept: np.ndarray) -> dict[str, Unit]:
        """The units still to time (one per table); sets the progress total of everything left."""
        t = self.table
        todo: dict[str, Unit] = {}
        for u in units:
            if u.key not in t.tables:
                todo.setdefault(u.key, u)
        self.total = (sum(len(u.points()) for u in todo.values()) + (t.base_ms is None)
                      + len(policies) - len(t.calibration["points"]) + (kept_key(floor_kept) not in t.floors))
        return todo

    def units(self, todo: dict[str, Unit]) -> None:
        before = self.check_base() if todo else 0.0
        for i, (key, unit) in enumerate(todo.items()):
            what = f"layer shapes {i + 1}/{len(todo)}"
            for attempt in range(self.settings.settle_retries + 1):
                ms = _time_unit(unit, self.settings, self.device, lambda: self.tick(what))
                after = self.check_base()
                drift, around, before = abs(after / before - 1), (before + after) / 2, after
                if drift <= self.settings.settle:
                    break
                if attempt < self.settings.settle_retries:  # the machine's speed moved meanwhile: time it again
                    self.table.stability["retimed"] = self.table.stability.get("retimed", 0) + 1
                    self.total += len(unit.points())
            self.table.tables[key] = {"desc": unit.desc, "in_grid": unit.in_grid, "out_grid": unit.out_grid, "ms": ms,
                                      "base_alongside_ms": around}
            self.save()

    def whole(self, policies: list[np.ndarray], floor_kept: np.ndarray) -> None:
        """The unpruned model, the calibration models and the floor, each timed whole."""
        t, shape = self.table, self.graph.input_shape
        done = len(t.calibration["points"])
        floor = kept_key(floor_kept) not in t.floors
        if t.base_ms is None:
            t.base_runs = [measure_latency_ms(self.base_model, shape, **self.whole_options)]
            self._update_base()
            self.tick("unpruned model")
            self.save()
        todo = [("calibration", k) for k in policies[done:]] + ([("floor", floor_kept)] if floor else [])
        for j, (kind, kept) in enumerate(todo):
            # timed interleaved with the unpruned model: a slow spell of the machine slows both, and
            # the ratio of the two is what counts; the base rests on the median of all unpruned runs
            pruned = apply_policy(self.model, self.graph, kept)
            ms, base = median_latencies_ms([(pruned, shape), (self.base_model, shape)], rounds=self.settings.rounds,
                                           **self.whole_options)
            point = {"kept": [int(k) for k in kept], "measured_ms": ms, "base_ms": base}
            if kind == "floor":
                t.floors[kept_key(kept)] = point
            else:
                t.calibration["points"].append(point)
            t.base_runs.append(base)
            self._update_base()
            self.tick("thinnest policy" if kind == "floor" else f"calibration models {done + j + 1}/{len(policies)}")
            self.save()

    def _update_base(self) -> None:
        self.table.base_ms = float(np.median(self.table.base_runs + self.table.stability.get("base_checks_ms", [])))
