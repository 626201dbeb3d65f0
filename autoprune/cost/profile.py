"""Profiling a latency table on the target device, and loading it again (the `autoprune profile` job).

Steps, each saved as soon as it is done so that an interrupted profile resumes:
1. every distinct timing unit (`units.py`) timed over its grid of kept (in, out) channels:
   warm-up, repeats taken in rounds interleaved over the grid's points, median;
2. the unpruned model timed whole: the remainder (adds, pooling, dispatch) is that minus its units;
3. one calibration: a few random pruned models timed whole, each interleaved with the unpruned
   one (its speedup over it is what counts; the remainder uses the median of all unpruned runs),
   and measured ≈ scale * raw with the scale the median ratio, because a layer timed alone is
   not quite the layer inside the model (caches, allocator, dispatch).

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

from autoprune.cost.lut import LatencyPredictor, LatencyTable, LatencyTableCost, fit_calibration
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
    calibration: int = 8  # random pruned models the table is calibrated on
    seed: int = 0

    def table_settings(self) -> dict:
        """What decides the measured numbers (device and threads are in the fingerprint)."""
        d = asdict(self)
        return {k: d[k] for k in ("grid", "warmup", "repeats", "rounds", "point_seconds", "model_repeats",
                                  "model_min_seconds", "model_seconds", "calibration", "seed")}


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
    out = []
    for i in range(n):
        depth = (i + 1) / n * (1.0 - GRID_LOW) * 0.9  # the i-th policy prunes up to this ratio
        ratios = rng.uniform(0.0, depth, len(full))
        out.append(np.maximum(1, np.round(full * (1.0 - ratios))))
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
                    path: Path | None = None, force: bool = False,
                    on_progress: Progress | None = None) -> Profile:
    """Load the table for this model and machine, profiling whatever it still lacks.

    An existing table keeps the settings it was begun with (grid, repeats, calibration), so a
    search reuses whatever `autoprune profile` made; `force` starts it afresh with `settings`.
    """
    from autoprune.policy import apply_policy

    settings = settings or ProfileSettings()
    if settings.batch < 1 or (settings.threads is not None and settings.threads < 1) or settings.grid < 2:
        raise UserError("profiling needs --batch >= 1, --threads >= 1 and a grid of at least 2 points")
    device = resolve_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    fp = fingerprint(device, threads)
    path = Path(path) if path is not None else default_path(graph.model_id, graph.input_shape, settings.batch, fp)
    reprofile = reprofile_command(graph.model_id, settings, device, threads)
    model = copy.deepcopy(model).cpu().eval()

    table = None
    if path.exists() and not force:
        table = LatencyTable.load(path)
        table.check(path, graph.model_id, graph.input_shape, settings.batch, fp, reprofile)
        kept = {k: v for k, v in table.settings.items() if k in ProfileSettings.__dataclass_fields__}
        settings = replace(settings, **kept)
    units = discover_units(model, graph, settings.grid)
    structure = structure_key(graph, units)
    if table is not None and table.complete and table.calibration.get("structure") == structure:
        return Profile(table, path, units, LatencyPredictor(graph, units, table))
    if table is None:
        table = LatencyTable(graph.model_id, list(graph.input_shape), settings.batch, fp, settings.table_settings())
    table.units = [{"layer": u.name, "table": u.key} for u in units]
    table.complete = False

    todo: dict[str, Unit] = {}
    for u in units:
        if u.key not in table.tables:
            todo.setdefault(u.key, u)
    if table.calibration.get("structure") != structure:
        table.calibration = {"structure": structure, "points": []}
    policies = calibration_kept(graph, settings.calibration, settings.seed)
    done_points = len(table.calibration["points"])
    total = sum(len(u.points()) for u in todo.values()) + (table.base_ms is None) + len(policies) - done_points
    progress = on_progress or (lambda what, done, total: None)
    count = 0

    def tick(what: str) -> None:
        nonlocal count
        count += 1
        progress(what, count, total)

    start = time.perf_counter()

    def save() -> None:
        nonlocal start
        now = time.perf_counter()
        table.seconds += now - start
        start = now
        table.save(path)

    with torch_threads(threads):
        for i, (key, unit) in enumerate(todo.items()):
            what = f"layer shapes {i + 1}/{len(todo)}"
            ms = _time_unit(unit, settings, device, lambda: tick(what))
            table.tables[key] = {"desc": unit.desc, "in_grid": unit.in_grid, "out_grid": unit.out_grid, "ms": ms}
            save()
        whole = dict(batch=settings.batch, device=device, repeats=settings.model_repeats,
                     min_seconds=settings.model_min_seconds, max_seconds=settings.model_seconds)
        base_model = copy.deepcopy(model)
        if table.base_ms is None:
            table.base_runs = [measure_latency_ms(base_model, graph.input_shape, **whole)]
            table.base_ms = float(np.median(table.base_runs))
            tick("unpruned model")
            save()
        for j in range(done_points, len(policies)):
            # each calibration model is timed interleaved with the unpruned one: a slow spell of the
            # machine slows both, and the ratio of the two is what the calibration uses; the
            # remainder rests on the median of all the unpruned runs, not on one
            pruned = apply_policy(model, graph, policies[j])
            ms, base = median_latencies_ms([(pruned, graph.input_shape), (base_model, graph.input_shape)],
                                           rounds=settings.rounds, **whole)
            table.calibration["points"].append({"kept": [int(k) for k in policies[j]], "measured_ms": ms,
                                                "base_ms": base})
            table.base_runs.append(base)
            table.base_ms = float(np.median(table.base_runs))
            tick(f"calibration models {j + 1}/{len(policies)}")
            save()

    predictor = LatencyPredictor(graph, units, table)  # uncalibrated: scale 1
    points = table.calibration["points"]
    raw = [table.base_ms] + [predictor.raw_ms(np.array(p["kept"])) for p in points]
    measured = [table.base_ms] + [p["measured_ms"] / p.get("base_ms", table.base_ms) * table.base_ms for p in points]
    table.calibration["scale"] = fit_calibration(np.array(raw), np.array(measured))
    table.complete = True
    save()
    log.info("latency table %s: %d tables, profiled in %.0f s", path, len(table.tables), table.seconds)
    return Profile(table, path, units, LatencyPredictor(graph, units, table))


def latency_cost_model(model: nn.Module, space, settings: ProfileSettings | None = None, *,
                       path: Path | None = None, on_progress: Progress | None = None) -> LatencyTableCost:
    """The `latency_ms` cost model of a channel space: the cached table, profiled first when missing."""
    if getattr(space, "kind", None) != "channel":
        raise UserError("latency budgets need the channel space (--space channel): unstructured sparsity "
                        "does not make dense layers faster")
    prof = profile_latency(model, space.graph, settings, path=path, on_progress=on_progress)
    return LatencyTableCost(space, prof.predictor, prof.table, prof.path)
