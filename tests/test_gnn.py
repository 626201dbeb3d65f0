"""GNN-RL: the network as a torch-geometric graph, the GATv2 policy trained by SB3's PPO, that it
learns (the known-answer problem), determinism and resume, saving and transfer to another depth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoprune import agents
from autoprune.agents.gnn import POLICY_FILE, GNNSearch, GraphActorCritic, load_policy_file
from autoprune.agents.gnn_graph import FEATURES, to_data
from autoprune.errors import UserError
from autoprune.agents import default_evals
from autoprune.search_spaces import ChannelSpace
from autoprune.study import Study, StudyInfo
from conftest import cli_main, needs_fashion
from surrogate import race
from test_ddpg import _greedy_optimum


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
def test_the_network_as_a_graph(graphs, name):
    _, graph = graphs(name)
    space = ChannelSpace(graph)
    data = to_data(graph, space)
    assert data.num_nodes == len(graph.layers) and data.x.shape == (len(graph.layers), len(FEATURES))
    assert torch.isfinite(data.x).all() and data.x.min() >= 0 and data.x.max() <= 1.0
    assert set(data.action.tolist()) - {-1} == set(range(space.size))  # every group has at least one node
    assert data.action[0] == -1 and data.action[-1] == -1  # stem and classifier: fixed
    edges = set(map(tuple, data.edge_index.t().tolist()))
    assert all((j, i) in edges for i, j in graph.edges) and all((i, j) in edges for i, j in graph.edges)
    assert data.edge_attr[:, 0].sum() == len(graph.edges)  # one forward copy of each, one reversed
    skips = [(i, j) for i, j in graph.edges if j > i + 2]
    if name == "vgg11":  # a chain
        assert not skips
    else:  # a residual add feeds a layer a block further on: an edge that skips
        assert skips


def test_registered_with_defaults():
    assert isinstance(agents.build("gnn"), GNNSearch) and default_evals("gnn") == 300
    assert agents.accepts("gnn", "init_from") and agents.accepts("gnn", "reward")
    assert not agents.accepts("tpe", "init_from")


def _keys(problem) -> list[str]:
    return [r.key for r in problem.results]


def test_deterministic_with_the_seed_resumable_and_batched_evaluations(surrogate_problem, tmp_path):
    batches = []

    def run(seed: int, study: Study | None = None):
        problem = surrogate_problem(reward="error-log-flops")
        many = problem.evaluate_many
        problem.evaluate_many = lambda b: batches.append(len(b)) or many(b)
        if study is not None:
            problem.attach_study(study)
        GNNSearch(rollout=4, epochs=2).search(problem, 10, seed=seed)
        return problem

    def study(resume: bool) -> Study:
        space = surrogate_problem().space
        info = StudyInfo("resnet20", "gnn", 0, ["50%FLOPs"], space.names)
        return Study(f"sqlite:///{tmp_path / 's.db'}", "run", info, list(space.max_ratios), resume=resume)

    a = run(0, study(False))
    assert batches == [4, 4, 2]  # a rollout's policies proposed together; stopped at the evaluations asked
    b, c = run(0), run(1)
    assert len(set(_keys(a))) == 10 and _keys(a) == _keys(b) and _keys(a) != _keys(c)
    assert all(a.budgets.satisfied(r.costs) and a.budgets.tight(r.costs) for r in a.results)
    resumed = run(0, study(True))
    assert _keys(resumed) == _keys(a) and all(r.cached for r in resumed.results) and resumed.evaluator.calls == 0


# The known answer of test_ddpg: the first half of ResNet-20's groups 100x more sensitive than the
# second; the best policy spares them. Random search reaches 0.60-0.74 in 100 evaluations.
def test_gnn_learns_a_known_answer(surrogate_problem):
    n = surrogate_problem().space.size
    s = np.where(np.arange(n) < n // 2, 1.0, 0.01)
    optimum = _greedy_optimum(surrogate_problem(sensitivities=s), s)
    evals = 320  # 160 reached 0.904 here, deterministically and at the commit before too: short of the 0.03 margin
    results = race(lambda: surrogate_problem(sensitivities=s), (
        ("uniform", agents.build("uniform"), 1), ("random", agents.build("random"), evals), ("gnn", GNNSearch(), evals)))
    best = {k: p.best.accuracy for k, p in results.items()}
    assert best["gnn"] > best["uniform"] + 0.3, best
    assert best["gnn"] > best["random"] + 0.1, best
    assert best["gnn"] > optimum - 0.03, (best, optimum)
    gnn = np.array([r.accuracy for r in results["gnn"].results])
    assert gnn[-32:].mean() > gnn[:32].mean() + 0.2, gnn  # the policy learned: its last rollouts beat its first
    r = results["gnn"].best.ratios
    assert r[s == 1.0].mean() < r[s < 1.0].mean() - 0.3, r  # it spares the sensitive half


def _actions(searcher: GNNSearch) -> torch.Tensor:
    with torch.no_grad():
        alpha, beta, _ = searcher.model.policy.gnn(searcher.model.policy.data)
    return alpha / (alpha + beta)


def test_saved_policy_loads_acts_the_same_and_transfers_to_another_depth(surrogate_problem, tmp_path):
    problem = surrogate_problem("resnet20")
    trained = GNNSearch(rollout=4, epochs=2)
    trained.checkpoint_path = tmp_path / POLICY_FILE
    trained.search(problem, 12, seed=0)
    saved = load_policy_file(tmp_path)  # the run folder: its gnn_policy.pt
    assert saved["trained_on"]["model"] == "resnet20" and saved["trained_on"]["updates"] >= 2
    net = GraphActorCritic(**saved["hparams"])
    net.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        alpha, beta, _ = net(trained.model.policy.data)
    assert torch.allclose(alpha / (alpha + beta), _actions(trained))  # save -> load -> the same policy

    deeper = surrogate_problem("resnet56")  # another depth: 27 groups instead of 9
    warm = GNNSearch(rollout=4, epochs=2, init_from=tmp_path)
    warm.search(deeper, 4, seed=0)
    assert deeper.n_evals == 4 and _actions(warm).shape == (deeper.space.size,)
    start = GraphActorCritic(**saved["hparams"])
    start.load_state_dict(saved["state_dict"])
    cold = GNNSearch(rollout=4, epochs=2)
    cold.search(surrogate_problem("resnet56"), 4, seed=0)
    data = warm.model.policy.data
    with torch.no_grad():  # the warm start began from the trained weights, not from a fresh init
        a0, b0, _ = start(data)
        a1, b1, _ = cold.model.policy.gnn(data)
    assert not torch.allclose(a0 / (a0 + b0), a1 / (a1 + b1))


def test_incompatible_policy_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="no GNN policy"):
        load_policy_file(tmp_path)
    bad = tmp_path / "x.pt"
    torch.save({"format": "autoprune.gnn-policy", "version": 99}, bad)
    with pytest.raises(UserError, match="version 99"):
        GNNSearch(init_from=bad)
    torch.save({"format": "autoprune.gnn-policy", "version": 1, "feature_set": "other/0", "features": []}, bad)
    with pytest.raises(UserError, match="trained on features 'other/0'"):
        GNNSearch(init_from=bad)
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read GNN policy"):
        GNNSearch(init_from=bad)


@needs_fashion
def test_cli_search_with_gnn_then_warm_start(tmp_path, fmnist_subset, capsys, monkeypatch):
    common = ["--budget", "50%FLOPs", "--weights", "random", "--heldout", "200", "--calib-batches", "1",
              "--data", fmnist_subset]
    out = tmp_path / "g20"
    code, _, err = cli_main(["search", "resnet20", "--agent", "gnn", "--evals", "5", *common, "--out", str(out)],
                            capsys, monkeypatch)
    assert code == 0, err
    policy = json.loads((out / "policy.json").read_text())
    assert policy["agent"] == "gnn" and policy["evaluations"] == 5 and (out / POLICY_FILE).is_file()
    code, _, err = cli_main(["search", "resnet32", "--agent", "gnn", "--evals", "3", "--init-from", str(out), *common,
                             "--out", str(tmp_path / "g32")], capsys, monkeypatch)
    assert code == 0, err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    for args, words in ((["--agent", "gnn", "--init-from", str(bad)], "cannot read GNN policy"),
                        (["--agent", "tpe", "--init-from", str(out)], "--init-from applies to gnn"),
                        (["--agent", "gnn", "--reward", "nosuch"], "unknown reward")):
        target = tmp_path / "refused"
        code, _, err = cli_main(["search", "resnet20", *args, *common, "--out", str(target)], capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and words in lines[0], err
        assert not target.exists()
