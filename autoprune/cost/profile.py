"""Profiling a latency table on the target device, and loading it again (the `autoprune profile` job).

Steps, each saved as soon as it is done so that an interrupted profile resumes:
1. every distinct timing unit (`units.py`) timed over its grid of kept (in, out) channels:
   warm-up, repeats taken in rounds interleaved over the grid's points, median. The unpruned
   model is timed briefly before and after each unit: the pair says how the machine's speed
   moved meanwhile (a unit whose pair differs by more than `settle` is timed again, up to
   `settle_retries` times), the unit is normalised by it (`lut.LatencyPredictor`), and the
   spread of all those timings is the table's stability, with a one-line warning above `noisy`;
2. the unpruned model timed whole: the remainder (adds, pooling, dispatch) is that minus its units;
3. calibration: random pruned models timed whole, each interleaved with the unpruned one (its
   speedup over it is what counts; the remainder uses the median of all unpruned runs), and a
   fit of measured against raw predictions (`lut.fit_calibration`: a line or a ratio);
4. the floor: the thinnest policy the space allows timed whole, the least any prediction may
   say (profiled again for a space with another thinnest policy: a few seconds).

Tables live in a cache (`$AUTOPRUNE_LATENCY_DIR`, default ~/.cache/autoprune/latency) under a
name made of model, input shape, batch and a hash of the device fingerprint (CPU model string and
threads, or GPU name; torch version), so every search on the same machine reuses one table and
a different machine never picks up a foreign one. A table passed by path is checked against
this machine's fingerprint and refused, with the command to re-profile, when it differs.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.cost.lut import VERSION, LatencyPredictor, LatencyTable, LatencyTableCost, fit_calibration, kept_key
from autoprune.cost.measured import measure_latency_ms, median_latencies_ms, torch_threads
from autoprune.cost.units import GRID_LOW, Unit, discover_units, structure_key
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.graph import PruningGraph

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class ProfileSettings:
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def fingerprint(device: torch.device, threads: int) -> dict:
    """What a latency number depends on beyond the model: the processor, its threads, torch."""
    fp = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        fp["gpu"] = torch.cuda.get_device_name(device)
    else:
        fp["cpu"], fp["threads"] = cpu_model(), threads
    return fp


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOPRUNE_LATENCY_DIR") or "~/.cache/autoprune/latency").expanduser()


def default_path(model_id: str, input_shape: tuple[int, ...], batch: int, fp: dict) -> Path:
    digest = hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    shape = "x".join(str(d) for d in input_shape)
    return cache_dir() / f"{safe}-{shape}-b{batch}-{fp['device']}-{digest}.json"


def reprofile_command(model_id: str, settings: ProfileSettings, device: torch.device, threads: int) -> str:
    return (f"autoprune profile {model_id} --device {device.type} --batch {settings.batch} --threads {threads}")


def calibration_kept(graph: PruningGraph, n: int, seed: int) -> list[np.ndarray]:
    """n random policies from light to heavy pruning (a fixed sequence per seed, so resume continues it)."""
    rng = np.random.default_rng(seed)
    full = graph.channels
    divisor = np.array([g.divisor for g in graph.groups], dtype=np.float64)  # grouped convolutions: whole chunks
    out = []
    for i in range(n):
        depth = (i + 1) / n * (1.0 - GRID_LOW) * 0.9  # the i-th policy prunes up to this ratio
        ratios = rng.uniform(0.0, depth, len(full))
        out.append(np.maximum(divisor, np.round(full * (1.0 - ratios) / divisor) * divisor))
    return out


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


@dataclass
class Profile:
    table: LatencyTable
    path: Path
    units: list[Unit]
    predictor: LatencyPredictor


def profile_latency(model: nn.Module, graph: PruningGraph, settings: ProfileSettings | None = None, *,
                    path: Path | None = None, force: bool = False, on_progress: Progress | None = None,
                    floor_kept: np.ndarray | None = None) -> Profile:
    """Load the table for this model and machine, profiling whatever it still lacks.

    An existing table keeps the settings it was begun with (grid, repeats, calibration), so a
    search reuses whatever `autoprune profile` made; `force` starts it afresh with `settings`.
    `floor_kept`: the thinnest policy of the space the table serves (default: the default
    channel space's), timed whole if the table has not timed it yet.
    """
    from autoprune.search_spaces import ChannelSpace

    settings = settings or ProfileSettings()
    if settings.batch < 1 or (settings.threads is not None and settings.threads < 1) or settings.grid < 2:
        raise UserError("profiling needs --batch >= 1, --threads >= 1 and a grid of at least 2 points")
    device = resolve_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    fp = fingerprint(device, threads)
    cached = path is None
    path = Path(path) if path is not None else default_path(graph.model_id, graph.input_shape, settings.batch, fp)
    reprofile = reprofile_command(graph.model_id, settings, device, threads)
    model = copy.deepcopy(model).cpu().eval()
    floor_kept = ChannelSpace(graph).min_kept if floor_kept is None else np.asarray(floor_kept)

    table = None
    if path.exists() and not force:
        table = _load_or_restart(path, cached)
    if table is not None:
        table.check(path, graph.model_id, graph.input_shape, settings.batch, fp, reprofile)
        kept = {k: v for k, v in table.settings.items() if k in ProfileSettings.__dataclass_fields__}
        settings = replace(settings, **kept)
    units = discover_units(model, graph, settings.grid)
    structure = structure_key(graph, units)
    if (table is not None and table.complete and table.calibration.get("structure") == structure
            and kept_key(floor_kept) in table.floors):
        return Profile(table, path, units, LatencyPredictor(graph, units, table))
    if table is None:
        table = LatencyTable(graph.model_id, list(graph.input_shape), settings.batch, fp, settings.table_settings())
    table.units = [{"layer": u.name, "table": u.key} for u in units]
    table.complete = False
    if table.calibration.get("structure") != structure:
        table.calibration = {"structure": structure, "points": []}
        table.floors = {}
    timer = _Timer(table, path, settings, device, graph, model, on_progress)
    policies = calibration_kept(graph, settings.calibration, settings.seed)
    todo = timer.plan(units, policies, floor_kept)
    with torch_threads(threads):
        timer.units(todo)
        timer.whole(policies, floor_kept)

    predictor = LatencyPredictor(graph, units, table)  # uncalibrated: a = 1, b = 0
    whole = table.calibration["points"] + list(table.floors.values())
    raw = [predictor.raw_ms(graph.channels)] + [predictor.raw_ms(np.array(p["kept"])) for p in whole]
    measured = [table.base_ms] + [table.normalised(p) for p in whole]
    table.calibration["fit"] = fit_calibration(np.array(raw), np.array(measured))
    table.stability["spread"] = _spread(table.stability.get("base_checks_ms", []))
    table.complete = True
    timer.save()
    if table.stability["spread"] > settings.noisy:
        log.warning("timings varied by %.0f%% while profiling: the table may be off; profile on a quiet machine "
                    "or pass --repeats", 100 * table.stability["spread"])
    log.info("latency table %s: %d tables, profiled in %.0f s", path, len(table.tables), table.seconds)
    return Profile(table, path, units, LatencyPredictor(graph, units, table))


def _load_or_restart(path: Path, cached: bool) -> LatencyTable | None:
    """The table at `path`; None (profile afresh) for a cached table of an older format."""
    try:
        return LatencyTable.load(path)
    except UserError:
        if not cached:
            raise
        log.warning("latency table %s is of an older format (this autoprune writes version %d): profiling "
                    "it afresh", path, VERSION)
        return None


def _spread(runs: list[float]) -> float:
    """How much the machine's speed varied: 10th-90th percentile range of the unpruned timings over their median."""
    if len(runs) < 2:
        return 0.0
    lo, mid, hi = np.percentile(runs, [10, 50, 90])
    return float((hi - lo) / mid)


class _Timer:
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
        from autoprune.policy import apply_policy

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


def latency_cost_model(model: nn.Module, space, settings: ProfileSettings | None = None, *,
                       path: Path | None = None, force: bool = False,
                       on_progress: Progress | None = None) -> LatencyTableCost:
    """The `latency_ms` cost model of a channel space: the cached table, profiled first when missing."""
    if getattr(space, "kind", None) != "channel":
        raise UserError("latency budgets need the channel space (--space channel): unstructured sparsity "
                        "does not make dense layers faster")
    prof = profile_latency(model, space.graph, settings, path=path, force=force, on_progress=on_progress,
                           floor_kept=space.min_kept)
    return LatencyTableCost(space, prof.predictor, prof.table, prof.path)
