"""Latency lookup tables: the versioned file, and the prediction of a policy's latency from it.

The file (JSON) holds, for one model, input shape, batch and device fingerprint: the measured
grid of every distinct timing unit (`units.py`), the unpruned model's measured latency, and the
calibration points (whole pruned models measured against the raw prediction). It is written
after every finished grid and every calibration point, so an interrupted profile resumes where
it stopped.

Prediction: each unit's grid is made monotone (a wider layer never costs less: at this
resolution an inversion is timing noise, and a cost that can fall as channels grow would mislead
the budget projection, which assumes pruning never adds cost), interpolated bilinearly and
expanded once into a dense array over every integer channel count, so a policy costs one
matrix-vector product, one gather and one sum (~10 µs). raw = sum of units + remainder (the
unpruned model measured, minus its units), and the prediction is scale * raw, the scale being the
median ratio of measured to raw latency over the calibration models. One robust factor, not a
fitted line: on a shared machine a few whole-model timings are too noisy to pin down a slope
(fitted slopes of 0.6-1.9 were seen on the same model), while their median ratio is stable.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from autoprune.errors import UserError
from autoprune.graph import PruningGraph

FORMAT = "autoprune.latency-table"
VERSION = 1


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
    calibration: dict = field(default_factory=dict)  # structure, points [{kept, measured_ms, base_ms}], scale
    seconds: float = 0.0  # time spent profiling, over all sessions
    complete: bool = False

    def save(self, path: Path) -> None:
        """Atomic write (temp file + rename): an interrupt never leaves a truncated table."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
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
        self.remainder = 0.0
        if table.base_ms is not None:
            self.remainder = table.base_ms - self.units_ms(graph.channels)
        self.scale = float(table.calibration.get("scale", 1.0))

    def units_ms(self, kept: np.ndarray) -> float:
        idx = np.rint(self.index_coef @ np.asarray(kept, dtype=np.float64) + self.index_const).astype(np.int64)
        return float(self.flat[idx].sum())

    def raw_ms(self, kept: np.ndarray) -> float:
        return self.units_ms(kept) + self.remainder

    def predict_ms(self, kept: np.ndarray) -> float:
        # positive even if a negative remainder outweighed a heavily pruned model's layers
        return max(self.scale * self.raw_ms(kept), 1e-6)


def fit_calibration(raw: np.ndarray, measured: np.ndarray) -> float:
    """The scale with measured ≈ scale * raw: the median ratio (one slow measurement moves it little)."""
    raw, measured = np.asarray(raw, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    ok = raw > 0
    return float(np.median(measured[ok] / raw[ok])) if ok.any() else 1.0


class LatencyTableCost:
    """The `latency_ms` cost model: the table's calibrated prediction of a ratio vector (microseconds)."""

    metric = "latency_ms"

    def __init__(self, space, predictor: LatencyPredictor, table: LatencyTable, path: Path | None = None) -> None:
        self.space, self.predictor, self.table, self.path = space, predictor, table, path

    def cost(self, ratios: np.ndarray) -> float:
        return self.predictor.predict_ms(self.space.kept(ratios))
