"""Shared fixtures: zoo graphs built once, and problems whose evaluation is a formula (surrogate.py)."""
from __future__ import annotations

import os

# One thread per torch op (set before torch loads; CLI subprocesses inherit it). On this 2-core machine, with
# one core held by another job, two-thread ops wait on each other: the suite ran at a third of its speed
# (23% done after 30 min) against 10.5 min for all of it with one thread. Idle, one thread costs little.
# The README runs two such workers at once (pytest-xdist): 408 tests in 10 min 32 s on an idle machine;
# serially the same CI (with its ~2 min setup) had taken 20 min 25 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gzip  # noqa: E402
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoprune.budget import parse_budget
from autoprune.graph import build_graph
from autoprune.problem import Problem
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model
from surrogate import QuadraticAccuracy, RatioSpace

SHAPE = (1, 28, 28)


@pytest.fixture(scope="session")
def graphs() -> Callable[[str], tuple]:
    """(model, graph) of a zoo model with random weights for a (1, 28, 28) input, built once."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
            cache[name] = (model, build_graph(model, SHAPE, model_id=name))
        return cache[name]

    return get


@pytest.fixture
def surrogate_problem(graphs) -> Callable[..., Problem]:
    """make(model, budgets, sensitivities, reward) -> a channel-space Problem scored by QuadraticAccuracy."""
    def make(name: str = "resnet20", budgets: tuple[str, ...] = ("50%FLOPs",),
             sensitivities: np.ndarray | None = None, reward: str = "accuracy") -> Problem:
        model, graph = graphs(name)
        space = RatioSpace(ChannelSpace(graph))
        s = np.full(space.size, 0.1) if sensitivities is None else sensitivities
        base = {"macs": graph.base_macs, "params": graph.base_params}
        return Problem(model, space, [parse_budget(b, base) for b in budgets], QuadraticAccuracy(s),
                       reward=reward, seed=0)

    return make


# Modules that start Ray (sweeps, --workers): with pytest-xdist (the README's `-n auto --dist loadgroup`)
# they share one worker, so two local Ray clusters never compete for the cores; every other module is
# its own group, so a module's fixtures are built once, on one worker.
RAY_MODULES = frozenset({"test_tune", "test_workers", "test_searcher_contract"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        item.add_marker(pytest.mark.xdist_group("ray" if module in RAY_MODULES else module))


FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray) -> None:
    """An idx file (the MNIST format) of `arr`, gzipped."""
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(arr).tobytes())


@pytest.fixture(scope="session")
def fmnist_subset(tmp_path_factory) -> str:
    """`--data` spec of a 2,000/500-image Fashion-MNIST subset (the real loader, seconds per evaluation)."""
    from autoprune.data import _read_idx

    root = tmp_path_factory.mktemp("fmnist-subset")
    for prefix, n in (("train", 2000), ("t10k", 500)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(root / name, _read_idx(FASHION / name)[:n])
    return f"fashion-mnist:{root}"


def cli_main(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """The console script's entry point, in process: (exit code, stdout, stderr)."""
    import sys

    from autoprune.cli import main

    monkeypatch.setattr(sys, "argv", ["autoprune", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def shipped_resnet20_problem(fmnist_subset) -> Callable[..., Problem]:
    """make(calib_batches) -> a 50%-FLOPs Problem of the shipped ResNet-20, scored on the Fashion-MNIST subset."""
    import torch

    from autoprune.data import load_data
    from autoprune.evaluate import Evaluator

    data = load_data(fmnist_subset, heldout_size=500)
    model = build_model("resnet20", num_classes=10, in_channels=1, dataset="fashion-mnist").model.eval()
    graph = build_graph(model, SHAPE, model_id="resnet20")
    base = {"macs": graph.base_macs, "params": graph.base_params}

    def make(calib_batches: int = 4) -> Problem:
        evaluator = Evaluator(data.train, data.heldout, torch.device("cpu"), calib_batches=calib_batches)
        return Problem(model, ChannelSpace(graph), [parse_budget("50%FLOPs", base)], evaluator)

    return make


def assert_refused_in_one_line(model: str, data: str, words, tmp_path, capsys, monkeypatch) -> None:
    """`autoprune search MODEL` (random weights, uniform, 50% FLOPs) exits 2 with one line holding
    every one of `words`, no traceback, and leaves no run folder."""
    out = tmp_path / "run"
    code, _, err = cli_main(["search", model, "--budget", "50%FLOPs", "--data", data, "--weights", "random",
                             "--agent", "uniform", "--heldout", "8", "--out", str(out)], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
