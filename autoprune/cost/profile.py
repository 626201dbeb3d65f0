"""Profiling a latency table on the target device, and loading it again (the `autoprune profile` job).

Layer: the job, the top of the latency profile: it runs the steps one way, units -> timing ->
table, each in its module and none calling back:
1. `units.py`: what to time, the timing units of the model and their channel grids;
2. `timing.py`: how, every unit's grid, the unpruned model and the calibration models and the
   floor timed whole, each against the unpruned model, saved into the table as soon as timed
   (an interrupted profile resumes);
3. `lut.py`: the table, found in the cache or at a path (refused when it is for another model,
   input, batch or machine), calibrated once complete (`lut.calibrate`: a fit of measured against
   raw predictions, a line or a ratio) and predicting through `LatencyTableCost`.
Timings that spread by more than `noisy` over the profile get a one-line warning here.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.cost.lut import (LatencyPredictor, LatencyTable, LatencyTableCost, calibrate, default_path,
                                fingerprint, kept_key, load_or_restart)
from autoprune.cost.timing import Progress, ProfileSettings, Timer
from autoprune.cost.units import Unit, calibration_kept, discover_units, structure_key
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.graph import PruningGraph
from autoprune.search_spaces import ChannelSpace

__all__ = ["Profile", "ProfileSettings", "latency_cost_model", "profile_latency", "reprofile_command"]

log = logging.getLogger(__name__)


def reprofile_command(model_id: str, settings: ProfileSettings, device: torch.device, threads: int) -> str:
    return (f"autoprune profile {model_id} --device {device.type} --batch {settings.batch} --threads {threads}")


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
    settings = settings or ProfileSettings()
    if settings.batch < 1 or (settings.threads is not None and settings.threads < 1) or settings.grid < 2:
        raise UserError("profiling needs --batch >= 1, --threads >= 1 and a grid of at least 2 points")
    device = resolve_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    fp = fingerprint(device, threads)
    cached = path is None
    path = Path(path) if path is not None else default_path(graph.model_id, graph.input_shape, settings.batch, fp)
    model = copy.deepcopy(model).cpu().eval()
    floor_kept = ChannelSpace(graph).min_kept if floor_kept is None else np.asarray(floor_kept)

    table = load_or_restart(path, cached) if path.exists() and not force else None
    if table is not None:
        table.check(path, graph.model_id, graph.input_shape, settings.batch, fp,
                    reprofile_command(graph.model_id, settings, device, threads))
        kept = {k: v for k, v in table.settings.items() if k in ProfileSettings.__dataclass_fields__}
        settings = replace(settings, **kept)
    units = discover_units(model, graph, settings.grid)
    structure = structure_key(graph, units)
    if (table is not None and table.complete and table.calibration.get("structure") == structure
            and kept_key(floor_kept) in table.floors):
        return Profile(table, path, units, LatencyPredictor(graph, units, table))
    if table is None:
        table = LatencyTable(graph.model_id, list(graph.input_shape), settings.batch, fp, settings.table_settings())
    table.reopen(units, structure)
    timer = Timer(table, path, settings, device, graph, model, on_progress)
    policies = calibration_kept(graph, settings.calibration, settings.seed)
    timer.run(timer.plan(units, policies, floor_kept), policies, floor_kept, threads)

    calibrate(table, graph, units)
    timer.save()
    if table.stability["spread"] > settings.noisy:
        log.warning("timings varied by %.0f%% while profiling: the table may be off; profile on a quiet machine "
                    "or pass --repeats", 100 * table.stability["spread"])
    log.info("latency table %s: %d tables, profiled in %.0f s", path, len(table.tables), table.seconds)
    return Profile(table, path, units, LatencyPredictor(graph, units, table))


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
