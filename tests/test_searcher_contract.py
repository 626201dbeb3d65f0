"""The searcher contract (agents/base.py): docs/searchers.md's "Adding a searcher" example, copied from the
docs as a user would, runs through the CLI, the Python API, --resume and --workers 2 with no change
outside its file; and every registered searcher subclasses the base."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import autoprune
from autoprune import agents
from autoprune.errors import UserError
from conftest import needs_fashion

DOCS = Path(__file__).resolve().parents[1] / "docs" / "searchers.md"


@pytest.fixture(scope="module")
def hill_climb(tmp_path_factory) -> str:
    """The docs' example, written to its own file: the --agent spec naming it."""
    section = DOCS.read_text().split("## Adding a searcher", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path_factory.mktemp("searcher") / "hill_climb.py"
    path.write_text(code)
    return f"{path}:HillClimb"


def _search_args(data: str, spec: str, out: Path, evals: int, *extra: str) -> list[str]:
    return ["search", "resnet20", "--budget", "50%FLOPs", "--data", data, "--weights", "random", "--agent", spec,
            "--evals", str(evals), "--heldout", "300", "--calib-batches", "2", "--no-reconstruct",
            "--out", str(out), *extra]


def test_every_registered_searcher_subclasses_the_base():
    for name in agents.names():
        assert issubclass(agents.searcher_class(name), agents.Searcher), name


def test_a_bad_agent_spec_is_one_line(tmp_path):
    with pytest.raises(UserError, match="unknown agent"):
        agents.searcher_class("no-such-agent")
    with pytest.raises(UserError, match="no such file"):
        agents.searcher_class(str(tmp_path / "missing.py") + ":X")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="RuntimeError: boom"):
        agents.searcher_class(str(tmp_path / "broken.py") + ":X")
    (tmp_path / "plain.py").write_text("class X:\n    pass\n")
    with pytest.raises(UserError, match="not a subclass"):
        agents.searcher_class(str(tmp_path / "plain.py") + ":X")


@needs_fashion
def test_the_docs_searcher_runs_from_the_cli_and_resumes(hill_climb, fmnist_subset, tmp_path, capsys, monkeypatch):
    from conftest import cli_main

    out = tmp_path / "run"
    code, stdout, stderr = cli_main(_search_args(fmnist_subset, hill_climb, out, 3, "--agent-option", "step=0.2"),
                                    capsys, monkeypatch)
    assert code == 0, stderr
    assert "searching (hill-climb) | 3/3 evaluations | best held-out" in stdout  # not a terminal: plain progress lines, not a bar
    policy = json.loads((out / "policy.json").read_text())
    assert policy["agent"] == hill_climb and policy["evaluations"] == 3
    code, _, stderr = cli_main(_search_args(fmnist_subset, hill_climb, out, 5, "--agent-option", "step=0.2",
                                            "--resume"), capsys, monkeypatch)
    assert code == 0, stderr
    resumed = json.loads((out / "policy.json").read_text())
    assert resumed["evaluations"] == 5 and resumed["cached_evaluations"] >= 3  # the first three replayed
    assert resumed["heldout_accuracy"] >= policy["heldout_accuracy"]


@needs_fashion
def test_the_docs_searcher_runs_from_python_and_on_two_workers(hill_climb, fmnist_subset, tmp_path):
    result = autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, weights="random", agent=hill_climb,
                              evals=4, heldout=300, calib_batches=2, reconstruct=False, workers=2,
                              out=tmp_path / "api")
    assert result.summary["evaluations"] == 4
    assert result.macs <= 0.5 * result.summary["base_macs"] * 1.001
