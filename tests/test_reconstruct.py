"""Least-squares reconstruction: closer to the unpruned model's outputs, more accurate, reproduced by `apply`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoprune.reconstruct import kept_outputs, reconstruct

from conftest import cli_main, needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def shipped_problem(shipped_resnet20_problem):
    return shipped_resnet20_problem(calib_batches=4)


def test_reconstruction_brings_outputs_back_and_raises_accuracy(shipped_problem):
    problem = shipped_problem
    ratios = problem.project(np.full(problem.space.size, 0.5), np.random.default_rng(0))
    kept, orders = problem.space.kept(ratios), problem.removal_orders()
    x = problem.evaluator.heldout.images[:256]  # not the images the refit saw
    with torch.no_grad():
        target = problem.model(x)
    plain = problem.prune(ratios)
    before = problem.evaluator(plain)["top1"]
    refit = problem.prune(ratios)
    n = reconstruct(refit, problem.model, kept_outputs(problem.space.graph, kept, orders),
                    torch.cat(problem.evaluator.calib[:4]))
    after = problem.evaluator(refit)["top1"]
    assert n == len(problem.space.graph.layers) == 22  # 19 convolutions, 2 shortcut convolutions, the classifier
    with torch.no_grad():
        err_plain = float(((plain(x) - target) ** 2).mean())
        err_refit = float(((refit(x) - target) ** 2).mean())
    assert err_refit < 0.5 * err_plain
    assert after > before + 0.05, (before, after)  # 50%-FLOPs uniform ResNet-20: ~0.72 -> ~0.91 on full data


def test_a_runs_refits_reuse_the_unpruned_targets_with_the_same_result(shipped_problem):
    """The Reconstructor computes the unpruned model's sampled outputs once: every later refit is the one a
    fresh `reconstruct` call gives, bit for bit; the quick refit (the ladder's rung 0) is its own."""
    from autoprune.reconstruct import Reconstructor

    problem = shipped_problem
    rec = Reconstructor(problem.model, problem.space.graph, problem.removal_orders(), problem.evaluator.calib,
                        problem.evaluator.device)
    rng = np.random.default_rng(4)
    for _ in range(2):
        ratios = problem.project(rng.uniform(0, problem.space.max_ratios), rng)
        kept = problem.space.kept(ratios)
        fresh = problem.prune(ratios)
        reconstruct(fresh, problem.model, kept_outputs(problem.space.graph, kept, problem.removal_orders()),
                    torch.cat(problem.evaluator.calib[:4]))
        cached = rec(problem.prune(ratios), kept)
        for (name, a), (_, b) in zip(fresh.state_dict().items(), cached.state_dict().items()):
            assert torch.equal(a, b), name
        quick = rec(problem.prune(ratios), kept, quick=True)
        assert not torch.equal(quick.state_dict()["conv1.weight"], cached.state_dict()["conv1.weight"])
    assert set(rec._samples) == {False, True}


def test_problem_refits_every_candidate_once_enabled(shipped_problem):
    problem = shipped_problem
    ratios = problem.project(np.full(problem.space.size, 0.5), np.random.default_rng(1))
    plain, _ = problem.score(ratios)
    problem.use_reconstruction()
    try:
        refit, seconds = problem.score(ratios)
        assert refit["top1"] > plain["top1"] and seconds["reconstruct"] > 0
    finally:
        problem.use_reconstruction(False)


@pytest.mark.parametrize("top", ["0", "2"])
def test_cli_reconstruct_writes_what_apply_rebuilds(tmp_path, fmnist_subset, capsys, monkeypatch, top):
    out = tmp_path / "run"
    code, _, err = cli_main(["search", "resnet20", "--budget", "50%FLOPs", "--agent", "random", "--evals", "3",
                             "--heldout", "300", "--calib-batches", "4", "--data", fmnist_subset, "--out", str(out),
                             "--reconstruct", "--reconstruct-top", top, "--weights", "random"], capsys, monkeypatch)
    assert code == 0, err
    policy = json.loads((out / "policy.json").read_text())
    rec = policy["reconstruction"]
    assert rec["mode"] == ("every candidate" if top == "0" else "top-2")
    if top == "2":
        assert len(rec["reranked"]) == 2
        assert policy["heldout_accuracy"] == max(r["reconstructed_heldout"] for r in rec["reranked"])
    code, _, err = cli_main(["apply", str(out / "policy.json"), "--out", str(tmp_path / "applied.pt")],
                            capsys, monkeypatch)
    assert code == 0, err
    rebuilt = torch.load(tmp_path / "applied.pt", weights_only=False).eval()
    searched = torch.load(out / "pruned.pt", weights_only=False).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), searched(x), atol=1e-4)
