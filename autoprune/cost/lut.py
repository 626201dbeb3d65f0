"""Latency lookup tables: the versioned file, its calibration, and the prediction of a policy's latency.

Layer: the last step of a profile (units -> timing -> table) and a leaf: it imports nothing of
autoprune.cost. It stores what `timing.py` measured, fits the calibration to it (`calibrate`) and
predicts from it; the units it is given are read by their fields (key, layer index, depthwise).

The file (JSON) holds, for one model, input shape, batch and device fingerprint: the measured
grid of every distinct timing unit (`units.py`) with the unpruned model's latency timed around
it, the unpruned model's measured latency, the calibration points and the floors (whole pruned
models measured, each interleaved with the unpruned one), and how stable the machine was while
profiling. It is written after every finished grid and every whole-model point, so an
interrupted profile resumes where it stopped.

Prediction: each unit's grid is normalised by the unpruned latency timed around it (a layer
shape timed during a slow spell of a shared machine would otherwise cost too much next to the
rest), made monotone (a wider layer never costs less: at this resolution an inversion is timing
noise, and a cost that can fall as channels grow would mislead the budget projection),
interpolated bilinearly and expanded once into a dense array over every integer channel count,
so a policy costs one matrix-vector product, one gather and one sum (~10 µs).

Invariants: raw = sum of units + remainder, the remainder being the unpruned model measured
minus its units and never negative -- when the parts sum to more than the whole, the parts are
scaled down to the whole instead. The calibrated prediction a·raw + b (a > 0) is monotone in
every group's kept channels, and never below the floor: the measured latency of the thinnest
policy the space allows, which every budget check needs (`check_feasible` refuses a latency
budget below it up front).

Tables live in a cache (`$AUTOPRUNE_LATENCY_DIR`, default ~/.cache/autoprune/latency) under a
name made of model, input shape, batch and a hash of the device fingerprint (CPU model string and
threads, or GPU name; torch version), so every search on the same machine reuses one table and
a different machine never picks up a foreign one. A table passed by path is checked against
this machine's fingerprint and refused, with the command to re-profile, when it differs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import UserError
from autoprune.graph import PruningGraph

log = logging.getLogger(__name__)

FORMAT = "autoprune.latency-table"
VERSION = 2  # 2: per-unit base timings, floors, stability, linear calibration


# ---------------------------------------------------------------------------------------------
# Store: which machine a table describes, where it lives, the file


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


def describe_fingerprint(fp: dict) -> str:
    where = fp.get("gpu") if fp.get("device") == "cuda" else f"{fp.get('cpu')}, {fp.get('threads')} threads"
    return f"{fp.get('device')} ({where}), torch {fp.get('torch')}"


@dataclass
class LatencyTable:
    model: str
    input_shape: list[int]
    batch: int
    fingerprint: dict
    settings: dict
    tables: dict[str, dict] = field(default_factory=dict)  # key -> desc, in_grid, out_grid, ms (medians)
    units: list[dict] = field(default_factory=list)  # [{"layer": name, "table": key}] for reading the file
    base_ms: float | None = None  # unpruned model, measured: median of base_runs
    base_runs: list[float] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # structure, points [{kept, measured_ms, base_ms}], fit
    # thinnest policies timed whole, keyed by their kept vector: {kept, measured_ms, base_ms}
    floors: dict[str, dict] = field(default_factory=dict)
    stability: dict = field(default_factory=dict)  # base_checks_ms (unpruned, timed between units), spread, retimed
    seconds: float = 0.0  # time spent profiling, over all sessions
    complete: bool = False

    def normalised(self, point: dict) -> float:
        """A whole-model point's latency with the machine's state taken out: measured/unpruned alongside × base."""
        return point["measured_ms"] / point.get("base_ms", self.base_ms) * self.base_ms

    def floor_ms(self, kept) -> float | None:
        point = self.floors.get(kept_key(kept))
        return None if point is None else self.normalised(point)

    def save(self, path: Path) -> None:
        """Atomic write (temp file + rename): an interrupt never leaves a truncated table, and two searches
        profiling the same model at once (two shells, parallel tests) each rename their own file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read latency table {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not an autoprune latency table")
        if data.get("version") != VERSION:
            raise UserError(f"{path} has latency-table version {data.get('version')}; this autoprune reads "
                            f"{VERSION}: re-profile with `autoprune profile`")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)

    def check(self, path: Path, model: str, input_shape: tuple[int, ...], batch: int, fingerprint: dict,
              reprofile: str) -> None:
        """Refuse, in one line, a table made for another model, input, batch or machine."""
        if self.fingerprint != fingerprint:
            raise UserError(f"latency table {path} was profiled on {describe_fingerprint(self.fingerprint)}, but "
                            f"this is {describe_fingerprint(fingerprint)}: re-profile here with `{reprofile}`")
        if (self.model, list(self.input_shape), self.batch) != (model, list(input_shape), batch):
            raise UserError(f"latency table {path} is for {self.model}, input {tuple(self.input_shape)}, batch "
                            f"{self.batch}, not {model}, input {tuple(input_shape)}, batch {batch}: "
                            f"re-profile with `{reprofile}`")

    def reopen(self, units: list, structure: str) -> None:
        """Open for (more) timing over `units`: calibration and floors fitted for other units start afresh."""
        self.units = [{"layer": u.name, "table": u.key} for u in units]
        self.complete = False
        if self.calibration.get("structure") != structure:
            self.calibration = {"structure": structure, "points": []}
            self.floors = {}


def load_or_restart(path: Path, cached: bool) -> LatencyTable | None:
    """The table at `path`; None (profile afresh) for a cached table of an older format."""
    try:
        return LatencyTable.load(path)
    except UserError:
        if not cached:
            raise
        log.warning("latency table %s is of an older format (this autoprune writes version %d): profiling "
                    "it afresh", path, VERSION)
        return None


def kept_key(kept) -> str:
    return ",".join(str(int(k)) for k in kept)


# ---------------------------------------------------------------------------------------------
# Predict, and calibrate the prediction to whole models


def dense_grid(in_grid: list[int], out_grid: list[int], ms: list[list[float]]) -> np.ndarray:
    """Monotone bilinear interpolation of a measured grid at every integer (in, out) channel count.

    A varying axis is expanded from 1 channel (below the grid the edge value holds), so any kept
    vector indexes the array without bounds checks.
    """
    values = np.maximum.accumulate(np.maximum.accumulate(np.asarray(ms, dtype=np.float64), axis=0), axis=1)
    xi = np.arange(1 if len(in_grid) > 1 else in_grid[0], in_grid[-1] + 1)
    xo = np.arange(1 if len(out_grid) > 1 else out_grid[0], out_grid[-1] + 1)
    rows = np.stack([np.interp(xo, out_grid, r) for r in values])  # (len(in_grid), len(xo))
    return np.stack([np.interp(xi, in_grid, rows[:, j]) for j in range(len(xo))], axis=1)


class LatencyPredictor:
    """Raw and calibrated latency of a kept-channel vector from a table (no model built).

    Every unit's entry in the flat array of dense tables is an affine function of the kept
    vector (its channel counts are, `PruningGraph.layer_io`), so a prediction is one
    matrix-vector product, one gather and one sum.
    """

    def __init__(self, graph: PruningGraph, units: list, table: LatencyTable) -> None:
        missing = [u.name for u in units if u.key not in table.tables]
        if missing:
            raise UserError(f"latency table lacks layer {missing[0]}: profile the model again")
        starts: dict[str, tuple[int, np.ndarray]] = {}
        chunks, size = [], 0
        for u in units:
            if u.key not in starts:
                t = table.tables[u.key]
                dense = dense_grid(t["in_grid"], t["out_grid"], t["ms"])
                if table.base_ms and t.get("base_alongside_ms"):  # timed in a slow spell: what it costs normally
                    dense = dense * (table.base_ms / t["base_alongside_ms"])
                starts[u.key] = (size, dense.shape)
                chunks.append(dense.ravel())
                size += dense.size
        self.flat = np.concatenate(chunks)
        # index = start + n_out * (cin - in_lo) + (cout - out_lo), cin/cout affine in kept
        rows = []
        for u in units:
            start, (n_in, n_out) = starts[u.key]
            io = graph.layer_io[u.layer_index]
            cin = io[0] if n_in > 1 else np.zeros_like(io[0])
            cout = io[1] if n_out > 1 and not u.depthwise else np.zeros_like(io[1])
            row = n_out * cin + cout
            row[-1] += start - n_out * (1 if n_in > 1 else 0) - (1 if n_out > 1 and not u.depthwise else 0)
            rows.append(row)
        rows = np.array(rows)
        self.index_coef, self.index_const = rows[:, :-1], rows[:, -1]
        # raw = parts * units + remainder, equal to the measured whole at full width; never a negative remainder
        self.parts, self.remainder = 1.0, 0.0
        if table.base_ms is not None:
            units_full = self.units_ms(graph.channels)
            if units_full <= table.base_ms:
                self.remainder = table.base_ms - units_full
            else:
                self.parts = table.base_ms / units_full
        fit = table.calibration.get("fit", {})
        self.a, self.b = float(fit.get("a", 1.0)), float(fit.get("b", 0.0))
        self.floor_ms = 0.0  # set by the cost model: the measured thinnest policy of its space

    def units_ms(self, kept: np.ndarray) -> float:
        idx = np.rint(self.index_coef @ np.asarray(kept, dtype=np.float64) + self.index_const).astype(np.int64)
        return float(self.flat[idx].sum())

    def raw_ms(self, kept: np.ndarray) -> float:
        return self.parts * self.units_ms(kept) + self.remainder

    def predict_ms(self, kept: np.ndarray) -> float:
        return max(self.a * self.raw_ms(kept) + self.b, self.floor_ms, 1e-6)

    def rescale(self, factor: float) -> None:
        """Every prediction times `factor` (a table from a faster or slower spell of this machine)."""
        self.a, self.b, self.floor_ms = self.a * factor, self.b * factor, self.floor_ms * factor


def fit_calibration(raw: np.ndarray, measured: np.ndarray) -> dict:
    """measured ≈ a·raw + b: a fitted line, or the median ratio (b = 0), whichever predicts better.

    A layer timed alone is not quite the layer inside the model (caches, allocator, dispatch),
    and the gap grows with pruning: one median ratio over-predicted pruned models by 3-13% on
    average (bench/results/latency_validation-*-full.md). The line is fitted to relative errors
    (weights 1/measured) and must slope upwards (else predictions would not be monotone); it is
    chosen only when its leave-one-out relative error beats the ratio's, because on a noisy
    machine a few whole-model timings can pin down a wrong slope where a median ratio stays stable.
    """
    raw, measured = np.asarray(raw, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    ok = (raw > 0) & (measured > 0)
    raw, measured = raw[ok], measured[ok]
    if not len(raw):
        return {"model": "ratio", "a": 1.0, "b": 0.0, "points": 0}

    def ratio(r, m):
        return float(np.median(m / r)), 0.0

    def line(r, m):
        if len(r) < 3 or np.ptp(r) <= 0:
            return None
        a, b = np.polyfit(r, m, 1, w=1.0 / m)
        return (float(a), float(b)) if a > 0 else None

    def loo(fit) -> float | None:
        errors = []
        for i in range(len(raw)):
            keep = np.arange(len(raw)) != i
            params = fit(raw[keep], measured[keep])
            if params is None:
                return None
            errors.append(abs(params[0] * raw[i] + params[1] - measured[i]) / measured[i])
        return float(np.mean(errors))

    out = {"points": int(len(raw)), "loo_mape_ratio": loo(ratio) if len(raw) > 1 else None}
    out["loo_mape_line"] = loo(line) if len(raw) >= 4 else None
    chosen = "line" if (out["loo_mape_line"] is not None and out["loo_mape_ratio"] is not None
                        and line(raw, measured) is not None and out["loo_mape_line"] < out["loo_mape_ratio"]) else "ratio"
    a, b = (line if chosen == "line" else ratio)(raw, measured)
    return {"model": chosen, "a": a, "b": b, **out}


def calibrate(table: LatencyTable, graph: PruningGraph, units: list) -> None:
    """Fit the finished table's calibration and record its stability; it is complete then.

    The raw predictions (parts and remainder; the fit's a and b do not enter them) of the unpruned
    model, every calibration model and every floor, against their measurements with the machine's
    state taken out (`LatencyTable.normalised`).
    """
    predictor = LatencyPredictor(graph, units, table)
    whole = table.calibration["points"] + list(table.floors.values())
    raw = [predictor.raw_ms(graph.channels)] + [predictor.raw_ms(np.array(p["kept"])) for p in whole]
    measured = [table.base_ms] + [table.normalised(p) for p in whole]
    table.calibration["fit"] = fit_calibration(np.array(raw), np.array(measured))
    table.stability["spread"] = spread(table.stability.get("base_checks_ms", []))
    table.complete = True


def spread(runs: list[float]) -> float:
    """How much the machine's speed varied: 10th-90th percentile range of the unpruned timings over their median."""
    if len(runs) < 2:
        return 0.0
    lo, mid, hi = np.percentile(runs, [10, 50, 90])
    return float((hi - lo) / mid)


class LatencyTableCost:
    """The `latency_ms` cost model: the table's calibrated prediction of a ratio vector (microseconds).

    `check` holds what the search found when it timed the unpruned model against the table
    (`autoprune.cost.staleness`), once it has.
    """

    metric = "latency_ms"

    def __init__(self, space, predictor: LatencyPredictor, table: LatencyTable, path: Path | None = None) -> None:
        self.space, self.predictor, self.table, self.path = space, predictor, table, path
        self.check: dict | None = None
        floor = table.floor_ms(space.min_kept) if hasattr(space, "min_kept") else None
        if floor is not None:
            predictor.floor_ms = floor

    def cost(self, ratios: np.ndarray) -> float:
        return self.predictor.predict_ms(self.space.kept(ratios))

    @property
    def floor_ms(self) -> float:
        return self.predictor.floor_ms
