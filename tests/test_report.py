"""`autoprune report`: the page of a run and of a sweep, the refusals, and the page in a real browser.

One real search (ResNet-20 with random weights, four evaluations and one fine-tuning epoch on a
Fashion-MNIST subset) gives a run folder as `autoprune search` writes it. Other folders are made
from its policy.json with studies written through autoprune's own Study: a run with partial
candidates and a measured latency check, a 60-evaluation run for the size and time targets, and
a sweep folder whose sweep_results.json comes from the same `collect` that `run_sweep` uses.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from autoprune.report import REPORT, load_candidates, read_summary, write_report
from autoprune.report.sweep import collect, write_results
from autoprune.report.plots import best_so_far, pareto_front
from autoprune.study import Study, StudyInfo
from autoprune.zoo import build_model
from conftest import cli_main, needs_fashion

pytestmark = needs_fashion

PLOTS_OF_A_RUN = ("channels", "progress", "tradeoff", "finetune")


@pytest.fixture(scope="module")
def run(fmnist_subset, tmp_path_factory) -> Path:
    """A real run folder: `autoprune search` with fine-tuning, as a user runs it."""
    from autoprune.cli import app
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    ckpt = root / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.state_dict(), ckpt)
    out = root / "run"
    result = CliRunner().invoke(app, ["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(ckpt),
                                      "--evals", "4", "--heldout", "300", "--calib-batches", "2", "--data",
                                      fmnist_subset, "--finetune-epochs", "1", "--out", str(out)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return out


def _fake_run(folder: Path, policy: dict, accuracies: list[float], *, partial: tuple[int, ...] = (),
              **policy_updates) -> Path:
    """A run folder with `policy` (updated) and a study of one evaluation per accuracy, as Problem records them."""
    folder.mkdir(parents=True)
    policy = {**copy.deepcopy(policy), **policy_updates, "evaluations": len(accuracies)}
    (folder / "policy.json").write_text(json.dumps(policy))
    names = list(policy["ratios"])
    study = Study(f"sqlite:///{folder / 'study.db'}", folder.name,
                  StudyInfo(policy["model"], policy["agent"], policy["seed"], policy["budgets"], names),
                  [0.8] * len(names))
    for i, acc in enumerate(accuracies):
        attrs = {"key": f"k{i}", "index": i, "ratios": [0.5] * len(names), "reward": acc,
                 "macs": policy["base_macs"] * (0.495 + 0.005 * i / len(accuracies)),
                 "params": policy["base_params"] * 0.5, "seconds": {"forward": 0.1}}
        if "base_predicted_latency_ms" in policy:
            attrs["latency_ms"] = policy["base_predicted_latency_ms"] * (0.6 + 0.1 * i / len(accuracies))
        if i in partial:
            attrs.update(fidelity="partial", images=60)
        study.add([0.5] * len(names), acc, attrs)
    return folder


def _svgs(page: str) -> dict[str, str]:
    return dict(re.findall(r"<figure class=plot id='plot-([\w-]+)'>(<svg.*?</svg>)", page, re.S))


def _markers(svg: str, collection: int) -> int:
    """Markers drawn by the figure's `collection`-th scatter (matplotlib's PathCollection_N group)."""
    group = re.search(rf'id="[\w-]+-PathCollection_{collection}">(.*?)</g>', svg, re.S)
    if group is None:
        return 0
    uses = len(re.findall(r"<use ", group.group(1)))  # one marker path in <defs>, used per point
    return uses or len(re.findall(r"<path ", group.group(1)))  # few points: a path each


def test_report_of_a_run(run, capsys, monkeypatch):
    code, out, err = cli_main(["report", str(run)], capsys, monkeypatch)
    assert code == 0, err
    assert out.strip() == str(run / REPORT)
    page = (run / REPORT).read_text()
    policy = json.loads((run / "policy.json").read_text())
    svgs = _svgs(page)
    assert set(PLOTS_OF_A_RUN) <= set(svgs)
    assert "plot-latency" not in page  # no latency budget, no latency plot
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page and "src=" not in page  # nothing to run, nothing to fetch
    assert f"{100 * policy['test_accuracy']:.2f}" in page and f"{100 * policy['base_test_accuracy']:.2f}" in page
    # every stored evaluation is a point (this run scored all at full fidelity)
    assert _markers(svgs["progress"], 1) == len(load_candidates(run, read_summary(run)[0])) == policy["evaluations"] == 4
    # kept + pruned bars for this search and for uniform pruning: four bars per group
    groups = len(policy["kept_channels"])
    assert policy["uniform_kept_channels"].keys() == policy["kept_channels"].keys()
    assert len(re.findall(r'id="channels-patch_\d+"', svgs["channels"])) >= 4 * groups
    assert len(policy["finetune_history"]) == 1


def test_uniform_reference_meets_the_same_budget(run):
    policy = json.loads((run / "policy.json").read_text())
    assert 0.495 * policy["base_macs"] <= policy["uniform_macs"] <= 0.5 * policy["base_macs"]
    kept, uniform, base = (policy[k] for k in ("kept_channels", "uniform_kept_channels", "group_channels"))
    assert all(1 <= uniform[n] <= base[n] for n in base) and uniform != base
    assert sum(kept.values()) != sum(base.values())


def test_run_without_a_study_is_refused_in_one_line(run, tmp_path, capsys, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "policy.json", bare / "policy.json")
    code, _, err = cli_main(["report", str(bare)], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "no study" in lines[0], err
    assert not (bare / REPORT).exists() and not (bare / "study.db").exists()  # nothing made, not even an empty db
    code, _, err = cli_main(["report", str(tmp_path)], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "neither a run folder" in lines[0], err


def test_partial_candidates_never_lead_and_latency_check_is_drawn(run, tmp_path):
    policy = json.loads((run / "policy.json").read_text())
    checked = [{"evaluation": i, "heldout_accuracy": 0.5, "measured_ms": 1.0, "unpruned_alongside_ms": 2.0,
                "measured_fraction": f, "predicted_fraction": p, "meets_budget": f <= 0.7, "pool": 1}
               for i, (p, f) in enumerate([(0.66, 0.74), (0.65, 0.69), (0.6, 0.62)])]
    folder = _fake_run(tmp_path / "lat", policy, [0.3, 0.9, 0.5, 0.6, 0.4], partial=(1,), best_evaluation=3,
                       finetune_history=None,  # fine-tuned before the history was kept: a note, no curve
                       budgets=["70%latency"], base_predicted_latency_ms=2.0, predicted_latency_ms=1.3,
                       latency_verification={"verified": True, "checked": checked, "budgets": ["70%latency"],
                                             "search_best_evaluation": 3, "chosen": checked[1]})
    cands = load_candidates(folder, read_summary(folder)[0])
    assert [c["partial"] for c in cands] == [False, True, False, False, False]
    assert all(c["feasible"] and "latency_ms" in c["costs"] for c in cands)
    assert list(best_so_far(cands)[1]) == [0.3, 0.5, 0.6, 0.6]  # the partial 0.9 is no best
    assert all(not c["partial"] for c in pareto_front([c for c in cands if not c["partial"]], "latency_ms"))
    page = write_report(folder).read_text()
    svgs = _svgs(page)
    assert {"progress", "tradeoff", "latency"} <= set(svgs)
    assert "plot-finetune" not in page and "before the per-epoch history was kept" in page
    assert _markers(svgs["progress"], 1) == 1 and _markers(svgs["progress"], 2) == 4  # partial, then full
    assert _markers(svgs["latency"], 1) == 2 and _markers(svgs["latency"], 2) == 1  # meet / miss the budget


@pytest.fixture(scope="module")
def sweep(run, tmp_path_factory) -> Path:
    """A sweep folder as run_sweep leaves it: runs/NAME per trial, sweep_results.json/.md, one failed trial."""
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    policy = json.loads((run / "policy.json").read_text())
    trials = [{"name": f"resnet20-50pctFLOPs-{agent}-s{seed}",
               "config": {"model": "resnet20", "budgets": ["50%FLOPs"], "agent": agent, "seed": seed}}
              for agent, seed in (("random", 0), ("random", 1), ("tpe", 0), ("uniform", 0), ("tpe", 1))]
    for t, accs in zip(trials, ([0.2, 0.4, 0.3], [0.3, 0.35, 0.5, 0.45], [0.6])):
        c = t["config"]
        _fake_run(out / "runs" / t["name"], policy, accs, agent=c["agent"], seed=c["seed"], heldout_accuracy=max(accs))
    # the real run, renamed and without run.json: its study is found as the one in its study.db
    shutil.copytree(run, out / "runs" / trials[3]["name"])
    (out / "runs" / trials[3]["name"] / "run.json").unlink()
    write_report(out / "runs" / trials[3]["name"])  # as the search does at its end: the sweep page links it
    write_results(out, collect(out, trials, {"resnet20-50pctFLOPs-tpe-s1": "UserError: the data went away"}))
    return out


def test_report_of_a_sweep(sweep, capsys, monkeypatch):
    code, out, err = cli_main(["report", str(sweep)], capsys, monkeypatch)
    assert code == 0, err
    page = Path(out.strip()).read_text()
    svgs = _svgs(page)
    assert list(svgs) == ["sweep-0"]  # one model × budget
    curves = svgs["sweep-0"]
    assert len(re.findall(r'id="sweep0-line2d_\d+"', curves)) >= 2  # random's and uniform's medians, tpe's bar
    assert len(re.findall(r'id="sweep0-(?:FillBetween)?PolyCollection_\d+"', curves)) == 2  # their min-max bands
    md = (sweep / "sweep_results.md").read_text()
    assert "| resnet20 | 50%FLOPs | random | 2/2 |" in md and "| resnet20 | 50%FLOPs | tpe | 1/2 |" in md
    for row in ("<td>random</td><td>2/2</td><td>45.00</td><td>50.00</td>",  # mean and best over seeds
                "<td>tpe</td><td>1</td><td>error</td>", "UserError: the data went away"):
        assert row in page, row
    assert page.count('">policy</a>') == 3
    assert page.count(f'<a href="runs/{"resnet20-50pctFLOPs-uniform-s0"}/{REPORT}">report</a>') == 1


def test_60_evaluation_resnet20_report_is_small_and_quick(run, tmp_path):
    """The target: a 60-evaluation ResNet-20 run's report in <= 5 s and <= 5 MB."""
    policy = json.loads((run / "policy.json").read_text())
    folder = _fake_run(tmp_path / "r60", policy, [0.5 + 0.005 * (i % 17) for i in range(60)], best_evaluation=16)
    start = time.perf_counter()
    path = write_report(folder)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    assert seconds <= 5.0 and size <= 5e6, (seconds, size)
    assert _markers(_svgs(path.read_text())["progress"], 1) == 60
    assert write_report(folder).read_text() == path.read_text()  # deterministic: same run, same file
    print(f"\n60-evaluation report: {seconds:.2f} s, {size / 1e3:.0f} kB")


# ---------------------------------------------------------------------------------------------
# In a real browser


def _browser():
    """Playwright driving Debian's chromium, or a skip that says why not."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (scripts/setup.sh dev installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return sync_playwright, chromium


def _render(page_path: Path, browser) -> dict:
    """Open the file; return its outside requests, console errors and, per plot, the drawn size and shape count."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    url = page_path.resolve().as_uri()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url) if r.url != url else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(200)  # late console messages (CSP reports) arrive after load
    plots = page.evaluate("""() => Array.from(document.querySelectorAll('figure.plot')).map(f => {
        const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
        return {id: f.id, width: box.width, height: box.height,
                shapes: svg ? svg.querySelectorAll('path, use, rect').length : 0,
                caption: (f.querySelector('figcaption') || {}).textContent || ''};
    })""")
    page.close()
    return {"requests": requests, "errors": errors, "plots": {p["id"]: p for p in plots}}


def test_reports_render_in_headless_chromium(run, sweep, tmp_path):
    sync_playwright, chromium = _browser()
    write_report(sweep)
    control = tmp_path / "control.html"  # the same page with a load added: the checks must see it
    control.write_text((run / REPORT).read_text().replace("</body>", "<img src='http://127.0.0.1:9/x.png'></body>"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            pages = {"run": _render(run / REPORT, browser), "sweep": _render(sweep / REPORT, browser),
                     "control": _render(control, browser)}
        finally:
            browser.close()
    for name, expected in (("run", [f"plot-{p}" for p in PLOTS_OF_A_RUN]), ("sweep", ["plot-sweep-0"])):
        seen = pages[name]
        assert seen["requests"] == [] and seen["errors"] == [], (name, seen["requests"], seen["errors"])
        assert set(expected) <= set(seen["plots"]), (name, list(seen["plots"]))
        for plot in seen["plots"].values():
            assert plot["width"] > 300 and plot["height"] > 150, plot
            assert plot["shapes"] > 20 and plot["caption"].strip(), plot
    assert any("Content Security Policy" in e for e in pages["control"]["errors"]), pages["control"]


def test_a_fine_tune_from_the_plain_model_says_so_and_draws_no_refitted_epoch_0():
    """The search's held-out score is the refitted model's: a fine-tune that started from the plainly pruned one
    must not be drawn as starting there."""
    from autoprune.report.run import _finetune_section
    from autoprune.run_summary import RunSummary

    common = dict(model="resnet20", heldout_accuracy=0.88, test_accuracy_before_finetune=0.55,
                  finetuned_test_accuracy=0.92, finetune_epochs=1,
                  finetune_history=[{"epoch": 1, "loss": 0.2, "heldout_accuracy": 0.9}])
    plain = "".join(_finetune_section(RunSummary(**common, finetune_start="plain")))
    refit = "".join(_finetune_section(RunSummary(**common, finetune_start="refit")))
    assert "1 epoch from the plainly pruned model (no refit)" in plain and "epoch 0: the search" not in plain
    assert "plainly pruned" not in refit and "1 epoch: held-out accuracy (epoch 0: the search&#x27;s score)" in refit
