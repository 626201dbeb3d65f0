"""`autoprune sweep`: a two-trial sweep on a local Ray, its table, resume, failures, and refusals of bad files.

One sweep (resnet20 × {random, uniform}, a few evaluations on a Fashion-MNIST subset) runs once for
the module and serves several tests; Ray starts and stops inside the command, as for a user.
The later sweeps share one Ray started by a fixture, which `run_sweep` uses as it finds it.
"""
from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import ray  # imported here, not first inside CliRunner: Ray's log handlers keep the stream they first see
import ray.tune  # noqa: F401
import torch
from typer.testing import CliRunner

from autoprune.cli import app
from autoprune.errors import UserError
from autoprune.tune import load_sweep, parse_sweep, run_sweep
from autoprune.zoo import build_model
from conftest import cli_main, needs_fashion

pytestmark = needs_fashion

NAMES = ("resnet20-50pctFLOPs-random-s0", "resnet20-50pctFLOPs-uniform-s0")


def _sweep_yaml(data: str, weights: Path) -> str:
    return textwrap.dedent(f"""\
        models: [resnet20]
        budgets: ["50%FLOPs"]
        agents: [random, uniform]
        seeds: [0]
        evals: {{random: 3}}     # uniform: its default, one evaluation
        data: {data}
        weights: {{resnet20: {weights}}}
        heldout: 300
        calib_batches: 2
        cpus_per_trial: 1
        """)


def _ray_children() -> set[int]:
    """Ray's head processes started from this process (or orphaned: left behind by a shutdown that failed)."""
    me, found = os.getpid(), set()
    for p in psutil.process_iter(["pid", "ppid", "name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
        if p.info["ppid"] in (me, 1) and ("raylet" in cmd or "gcs_server" in cmd):
            found.add(p.info["pid"])
    return found


@pytest.fixture(scope="module")
def env(fmnist_subset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    ckpt = root / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.state_dict(), ckpt)
    sweep_file = root / "tiny.yaml"
    sweep_file.write_text(_sweep_yaml(fmnist_subset, ckpt))
    return {"root": root, "data": fmnist_subset, "ckpt": ckpt, "file": sweep_file}


@pytest.fixture(scope="module")
def swept(env):
    """The command run once, Ray started and stopped by it: (sweep folder, output, seconds)."""
    out = env["root"] / "sweeps" / "tiny"
    before = _ray_children()
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["sweep", str(env["file"]), "--out", str(out)])
    seconds = time.perf_counter() - start
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized()
    _wait_gone(_ray_children() - before)  # the command stopped the Ray it started
    return out, result.output, seconds


@pytest.fixture(scope="module")
def ray_local(swept):
    """One local Ray (2 CPUs) for the sweeps after the first; stopped, with its processes, at the end."""
    ray.init(num_cpus=2, include_dashboard=False)
    started = _ray_children()
    yield
    ray.shutdown()
    _wait_gone(started)


def _wait_gone(pids: set[int], seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while pids & _ray_children() and time.time() < deadline:
        time.sleep(0.5)
    assert not pids & _ray_children(), "Ray processes left running"


def test_sweep_writes_the_comparison_table_and_policies(swept):
    out, output, seconds = swept
    results = json.loads((out / "sweep_results.json").read_text())
    assert results["trials"] == 2 and results["ok"] == 2 and results["failed"] == 0
    rows = {r["agent"]: r for r in results["rows"]}
    assert set(rows) == {"random", "uniform"}
    # the sweep's report and every trial's own, written at the end without being asked for
    assert "random" in (out / "report.html").read_text() and len(list(out.glob("runs/*/report.html"))) == 2
    assert rows["random"]["evaluations"] == 3 and rows["uniform"]["evaluations"] == 1
    for r in rows.values():
        assert r["status"] == "ok" and r["model"] == "resnet20" and r["budgets"] == "50%FLOPs" and r["error"] is None
        assert 0.0 <= r["heldout_accuracy"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0
        assert 49.5 <= r["macs_pct"] <= 50.0
        policy = json.loads((out / r["policy"]).read_text())
        assert policy["agent"] == r["agent"] and policy["heldout_accuracy"] == r["heldout_accuracy"]
        assert policy["heldout_images"] == 300 and policy["calib_batches"] == 2
    for name in NAMES:
        assert (out / "runs" / name / "policy.json").is_file()
    md = (out / "sweep_results.md").read_text()
    assert "| resnet20 | 50%FLOPs | random | 0 | ok |" in md and "| resnet20 | 50%FLOPs | uniform | 0 | ok |" in md
    assert "2 of 2 trials finished" in output and "random" in output and "uniform" in output
    print(f"\ntwo-trial sweep (Ray start and stop included): {seconds:.1f} s")


def test_trials_report_best_so_far_after_every_evaluation(swept):
    out, _, _ = swept
    reports = [json.loads(line) for line in (out / "ray" / NAMES[0] / "result.json").read_text().splitlines()]
    best = [r["heldout_accuracy"] for r in reports]
    assert len(reports) == 3 + 1  # one per evaluation, then the final summary
    assert best == sorted(best)  # best so far never falls
    assert [r["evaluations"] for r in reports[:3]] == [1, 2, 3]
    assert reports[-1]["done"] and 0.0 <= reports[-1]["test_accuracy"] <= 1.0


def test_resume_keeps_finished_trials(swept, env, ray_local):
    out, _, _ = swept
    files = [out / "runs" / n / f for n in NAMES for f in ("policy.json", "study.db", "pruned.pt")]
    before = {f: f.stat().st_mtime_ns for f in files}
    rows = json.loads((out / "sweep_results.json").read_text())["rows"]
    results = run_sweep(load_sweep(env["file"]), out, spec_text=env["file"].read_text(), resume=True, verbose=0)
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing searched, tested or exported again
    assert results["ok"] == 2 and results["rows"] == rows


def test_resume_without_ray_state_reuses_run_folders(swept, env, ray_local, tmp_path):
    """A sweep killed before Ray saved its state: trials start again and find their finished run folders."""
    out, _, _ = swept
    copy = tmp_path / "copy"
    (copy / "runs").mkdir(parents=True)
    (copy / "sweep.yaml").write_text((out / "sweep.yaml").read_text())
    policies = {}
    for name in NAMES:
        (copy / "runs" / name).mkdir()
        policies[name] = (out / "runs" / name / "policy.json").read_text()
        (copy / "runs" / name / "policy.json").write_text(policies[name])
    results = run_sweep(load_sweep(env["file"]), copy, spec_text="", resume=True, verbose=0)
    assert results["ok"] == 2
    for name in NAMES:
        assert (copy / "runs" / name / "policy.json").read_text() == policies[name]
        assert not (copy / "runs" / name / "study.db").exists()  # reported, not searched again


def test_failed_trials_are_reported(env, ray_local, tmp_path):
    # resnet32 has no shipped Fashion-MNIST weights and none are given: its trial fails inside Ray
    spec = parse_sweep(f"models: [resnet32]\nbudgets: 50%FLOPs\nagents: [uniform]\nheldout: 300\ndata: {env['data']}\n")
    results = run_sweep(spec, tmp_path / "failing", spec_text="", verbose=0)
    assert results["trials"] == 1 and results["failed"] == 1
    row = results["rows"][0]
    assert row["status"] == "error" and "no trained weights for resnet32" in row["error"]
    assert "Traceback" not in row["error"]
    md = (tmp_path / "failing" / "sweep_results.md").read_text()
    assert "| error |" in md and "no trained weights for resnet32" in md


def _main(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    code, _, err = cli_main(args, capsys, monkeypatch)
    return code, err


@pytest.mark.parametrize("case", ["not-yaml", "not-a-mapping", "unknown-key", "singular-key", "unknown-model",
                                  "unknown-agent", "malformed-budget", "wrong-type", "missing-agents",
                                  "evals-for-unlisted-agent", "folder-exists", "resume-with-changed-file"])
def test_bad_sweep_exits_2_with_one_line_before_ray_starts(case, swept, env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for a bad sweep"))
    good = _sweep_yaml(env["data"], env["ckpt"])
    out = tmp_path / "sweep"
    cases = {
        "not-yaml": ("models: [resnet20\n", ["not valid YAML", "line"]),
        "not-a-mapping": ("- resnet20\n- random\n", ["must be a mapping"]),
        "unknown-key": (good + "heldot: 300\n", ["unknown key 'heldot'", "heldout"]),
        "singular-key": (good.replace("models:", "model:"), ["'model'", "models"]),
        "unknown-model": (good.replace("[resnet20]", "[resnet21]"), ["unknown model 'resnet21'"]),
        "unknown-agent": (good.replace("[random, uniform]", "[random, nosuchagent]"), ["unknown agent 'nosuchagent'"]),
        "malformed-budget": (good.replace('"50%FLOPs"', '"50%FLOPZ"'), ["malformed budget '50%FLOPZ'"]),
        "wrong-type": (good.replace("heldout: 300", "heldout: lots"), ["'heldout' must be int"]),
        "missing-agents": (good.replace("agents: [random, uniform]\n", ""), ["'agents' is required"]),
        "evals-for-unlisted-agent": (good.replace("{random: 3}", "{ddpg: 3}"), ["'evals'", "ddpg"]),
        "folder-exists": (good, ["already exists", "--resume"]),
        "resume-with-changed-file": (good.replace("heldout: 300", "heldout: 400"), ["differs", "started with"]),
    }
    text, words = cases[case]
    sweep_file = tmp_path / "bad.yaml"
    sweep_file.write_text(text)
    args = ["sweep", str(sweep_file), "--out", str(out)]
    if case in ("folder-exists", "resume-with-changed-file"):
        out = swept[0]
        args = ["sweep", str(sweep_file), "--out", str(out)] + (["--resume"] if case.startswith("resume") else [])
        before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    code, err = _main(args, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    if case in ("folder-exists", "resume-with-changed-file"):
        assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    else:
        assert not out.exists()


def test_parse_sweep_grid_and_per_key_values(env):
    spec = parse_sweep(textwrap.dedent("""\
        models: [resnet20, resnet56]
        budgets: ["50%FLOPs", ["40%FLOPs", "60%params"]]
        agents: [random, uniform]
        seeds: [0, 1]
        evals: {random: 5}
        weights: {resnet56: /nonexistent/r56.pt}
        agent_options: {random: {}}
        cpus_per_trial: 2
        max_concurrent: 4
        """))
    trials = spec.trials()
    assert len(trials) == 2 * 2 * 2 * 2 and len({t["name"] for t in trials}) == 16
    by_name = {t["name"]: t["config"] for t in trials}
    c = by_name["resnet56-40pctFLOPs+60pctparams-random-s1"]
    assert c["budgets"] == ["40%FLOPs", "60%params"] and c["evals"] == 5 and c["weights"] == "/nonexistent/r56.pt"
    assert by_name["resnet20-50pctFLOPs-uniform-s0"]["evals"] is None  # the agent's default
    assert by_name["resnet20-50pctFLOPs-uniform-s0"]["weights"] is None  # shipped weights
    assert spec.threads() == 2 and spec.max_concurrent == 4
    with pytest.raises(UserError, match="cannot be set in a sweep file"):
        parse_sweep("models: [resnet20]\nbudgets: 50%FLOPs\nagents: [random]\nworkers: 2\n")


def test_shipped_sweep_files_are_valid():
    root = Path(__file__).parent.parent
    assert len(load_sweep(root / "bench" / "sweeps" / "fmnist-zoo.yaml").trials()) == 2 * 2 * 3
    docs = (root / "docs" / "sweeps.md").read_text()
    block = next(b.split("```", 1)[0] for b in docs.split("```yaml\n")[1:] if "resnet50" in b.split("```", 1)[0])
    spec = parse_sweep(block, "docs/sweeps.md")
    assert len(spec.trials()) == 45 and spec.gpus_per_trial == 1 and spec.threads() == 8


def test_unreachable_ray_cluster_is_one_line_for_sweep_and_search(env, tmp_path, capsys, monkeypatch):
    """A closed port answers at once: the line names the address and what to check, nothing is written."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init reached for an unreachable cluster"))
    sweep_file = tmp_path / "ok.yaml"
    sweep_file.write_text(_sweep_yaml(env["data"], env["ckpt"]))
    out = tmp_path / "sweep"
    code, err = _main(["sweep", str(sweep_file), "--out", str(out), "--address", address], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"cannot reach the Ray cluster at --address {address}" in lines[0] and "ray start --head" in lines[0]
    assert not out.exists()
    run = tmp_path / "run"
    code, err = _main(["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(env["ckpt"]), "--data",
                       env["data"], "--heldout", "300", "--agent", "random", "--evals", "2", "--workers", "2",
                       "--ray-address", address, "--out", str(run)], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and f"--ray-address {address}" in lines[0], err
    assert not run.exists()
