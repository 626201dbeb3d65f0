"""Latency predictions a user can trust: never below the measured floor, monotone, noise noticed,
stale tables rescaled, infeasible budgets refused, a failed measured check a failed run.

Machine timings are replaced by scripted ones where the test is about what the code does with
them (inconsistent, drifting, stale), so the assertions hold on a busy machine too.
"""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
from conftest import cli_main as _main
from conftest import needs_fashion
from tiny_nets import tiny_net

from autoprune.cost.lut import LatencyPredictor, LatencyTableCost, fit_calibration
from autoprune.cost.profile import ProfileSettings, profile_latency
from autoprune.cost.staleness import STALE_TOLERANCE, check_table
from autoprune.cost.timing import Timer
from autoprune.graph import build_graph
from autoprune.search_spaces import ChannelSpace

SHAPE = (1, 28, 28)
FAST = ProfileSettings(device="cpu", threads=1, grid=3, warmup=2, repeats=5, model_repeats=10, model_min_seconds=0.05,
                       model_seconds=0.2, calibration=4, check_seconds=0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_net().eval()
    graph = build_graph(model, SHAPE, model_id="tiny")
    space = ChannelSpace(graph)
    prof = profile_latency(model, graph, FAST, path=tmp_path_factory.mktemp("lut") / "tiny.json",
                           floor_kept=space.min_kept)
    return model, graph, space, prof


def _policies(space: ChannelSpace, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, space.max_ratios) for _ in range(n)] + [space.max_ratios, np.zeros(space.size)]


def test_parts_slower_than_the_whole_never_predict_below_the_floor(tiny):
    """The reported failure: layers timed in a slow spell, the whole in a fast one. No negative remainder."""
    model, graph, space, prof = tiny
    table = copy.deepcopy(prof.table)
    for t in table.tables.values():  # every part 3x slower than the whole can justify
        t["ms"] = (np.asarray(t["ms"]) * 3).tolist()
        t.pop("base_alongside_ms")
    predictor = LatencyPredictor(graph, prof.units, table)
    assert predictor.remainder == 0.0 and predictor.parts < 1.0  # the parts are scaled down to the whole
    assert predictor.raw_ms(graph.channels) == pytest.approx(table.base_ms)
    cost = LatencyTableCost(space, predictor, table)
    floor = table.floor_ms(space.min_kept)
    assert floor is not None and cost.floor_ms == floor > 0
    for r in _policies(space, 30):
        assert cost.cost(r) >= floor
    assert cost.cost(space.max_ratios) == pytest.approx(max(floor, predictor.a * predictor.raw_ms(space.min_kept)
                                                            + predictor.b))


def test_predictions_are_monotone_in_every_groups_kept_channels(tiny):
    _, graph, space, prof = tiny
    cost = LatencyTableCost(space, prof.predictor, prof.table)
    for r in _policies(space, 10, seed=1)[:10]:
        kept = space.kept(r)
        for g in range(space.size):
            for level in space.levels[g]:
                if level > kept[g]:  # one group wider, the rest the same: never cheaper
                    wider = kept.copy()
                    wider[g] = level
                    assert prof.predictor.predict_ms(wider) >= prof.predictor.predict_ms(kept) - 1e-12


def test_calibration_prefers_a_line_only_when_it_predicts_better():
    raw = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    fit = fit_calibration(raw, 0.8 * raw + 0.5)  # an offset the ratio cannot express
    assert fit["model"] == "line" and fit["a"] == pytest.approx(0.8) and fit["b"] == pytest.approx(0.5)
    slow_spell = 1.2 * raw
    slow_spell[-1] *= 1.3  # one whole-model timing taken in a slow spell: a line would chase it
    fit = fit_calibration(raw, slow_spell)
    assert fit["model"] == "ratio" and fit["a"] == pytest.approx(1.2) and fit["b"] == 0.0
    assert fit["loo_mape_ratio"] < fit["loo_mape_line"]
    assert fit_calibration(raw, 10 - raw)["model"] == "ratio"  # a falling line would break monotonicity


def test_profiling_notices_a_drifting_machine_times_again_and_warns(tmp_path, monkeypatch, caplog):
    torch.manual_seed(0)
    model = tiny_net().eval()
    graph = build_graph(model, SHAPE, model_id="tiny")
    speeds = iter([1.0, 2.0] * 100)  # the unpruned model, timed around every unit: the machine keeps changing pace

    def drifting(self):
        ms = next(speeds)
        self.table.stability.setdefault("base_checks_ms", []).append(ms)
        return ms

    monkeypatch.setattr(Timer, "check_base", drifting)
    with caplog.at_level(logging.WARNING):
        prof = profile_latency(model, graph, FAST, path=tmp_path / "t.json")
    stab, n_tables = prof.table.stability, len(prof.table.tables)
    assert stab["retimed"] == FAST.settle_retries * n_tables  # every unit timed again, up to the limit
    assert stab["spread"] > FAST.noisy
    assert all(t["base_alongside_ms"] == 1.5 for t in prof.table.tables.values())
    warnings = [r.message for r in caplog.records if "timings varied by" in r.message]
    assert len(warnings) == 1 and "profile on a quiet machine or pass --repeats" in warnings[0]


def test_a_stale_table_is_noticed_and_rescaled(tiny, caplog):
    model, graph, space, prof = tiny
    table = copy.deepcopy(prof.table)
    table.base_ms *= 3  # profiled in a slow spell: the machine is 3x faster now
    cost = LatencyTableCost(space, LatencyPredictor(graph, prof.units, table), table)
    cost.predictor.floor_ms = prof.table.floor_ms(space.min_kept) * 3
    before = [cost.cost(r) for r in _policies(space, 5)]
    with caplog.at_level(logging.WARNING):
        check = check_table(cost, model, batch=1, device="cpu", threads=1)
    assert check["rescaled"] and check["ratio"] < 1 - STALE_TOLERANCE
    assert any("predictions rescaled" in r.message and "--reprofile" in r.message for r in caplog.records)
    after = [cost.cost(r) for r in _policies(space, 5)]
    assert np.allclose(np.array(after) / np.array(before), check["ratio"])
    fresh = LatencyTableCost(space, LatencyPredictor(graph, prof.units, prof.table), prof.table)
    fresh.predictor.floor_ms = prof.table.floor_ms(space.min_kept)
    assert not check_table(fresh, model, batch=1, device="cpu", threads=1, tolerance=10.0)["rescaled"]


def test_search_help_states_the_stale_tolerance():
    from typer.testing import CliRunner

    from autoprune.cli import app

    text = " ".join(CliRunner().invoke(app, ["search", "--help"], terminal_width=200).output.split())
    assert f"{STALE_TOLERANCE:.0%} off" in text.replace("│", "").replace("  ", " ")


@needs_fashion
def test_infeasible_latency_budget_and_a_failed_measured_check(tmp_path, fmnist_subset, capsys, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_LATENCY_DIR", str(tmp_path / "cache"))
    common = ["--weights", "random", "--evals", "2", "--heldout", "200", "--calib-batches", "1", "--data",
              fmnist_subset, "--device", "cpu", "--threads", "1"]
    code, _, err = _main(["profile", "tiny_nets:tiny_net", "--data", fmnist_subset, "--device", "cpu", "--threads", "1",
                          "--grid", "2", "--repeats", "5", "--calibration", "2"], capsys, monkeypatch)
    assert code == 0, err
    out = tmp_path / "infeasible"
    code, _, err = _main(["search", "tiny_nets:tiny_net", "--budget", "5%latency", *common, "--out", str(out)],
                         capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "smallest reachable latency is" in lines[0] and "ms (" in lines[0], err
    assert not out.exists()

    import autoprune.verify as verify

    def slow(problem, ratios, base_model, **_):  # every candidate measures 99% of the unpruned model
        return {"measured_ms": 0.99, "unpruned_alongside_ms": 1.0, "measured_fraction": 0.99}

    monkeypatch.setattr(verify, "timed_against_base", slow)
    out = tmp_path / "unverified"
    code, _, err = _main(["search", "tiny_nets:tiny_net", "--budget", "80%latency", *common, "--out", str(out)],
                         capsys, monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == verify.UNVERIFIED_EXIT == 3 and len(errors) == 1 and "--accept-unverified" in errors[0], err
    meta = json.loads((out / "policy.json").read_text())
    assert meta["latency_verification"]["verified"] is False and meta["latency_table_check"]["ratio"] > 0
    assert meta["latency_floor_ms"] > 0 and (out / "pruned.pt").exists()  # everything written regardless
    code, _, err = _main(["search", "tiny_nets:tiny_net", "--budget", "80%latency", *common, "--accept-unverified",
                          "--out", str(tmp_path / "accepted")], capsys, monkeypatch)
    assert code == 0, err
