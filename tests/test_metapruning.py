"""MetaPruning: the PruningNet over any analysable CNN (shapes, starts as magnitude pruning, masking equals
cropping, learns, resumes), the evolution (learns the known answer, respects the budget), and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoprune import agents
from autoprune.agents.evolution import EvolutionSearch, population_for
from autoprune.agents.metapruning import MetaPruningSearch
from autoprune.agents.pruningnet import PruningNet, load_checkpoint, train_pruningnet, unmasked
from autoprune.errors import UserError
from autoprune.policy import apply_policy, removal_orders
from autoprune.agents import default_evals
from autoprune.search_job import SearchConfig, build_setup
from autoprune.search_spaces import ChannelSpace
from conftest import SHAPE, cli_main, needs_fashion


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
def test_pruningnet_shapes_start_and_masking_equals_physical_pruning(graphs, name):
    model, graph = graphs(name)
    space = ChannelSpace(graph)
    orders = removal_orders(model, graph)
    pnet = PruningNet(model, graph, orders).eval()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(pnet(x, graph.channels), model.eval()(x), atol=1e-5)  # full encoding = pretrained
    rng = np.random.default_rng(0)
    for _ in range(3):
        kept = space.kept(rng.uniform(0, space.max_ratios))
        physical = apply_policy(model, graph, kept)  # what magnitude pruning keeps
        cropped = apply_policy(unmasked(pnet.materialize(kept)), graph, kept, orders=orders)
        assert {n: p.shape for n, p in cropped.named_parameters()} == {n: p.shape for n, p in physical.named_parameters()}
        with torch.no_grad():
            assert [tuple(w.shape) for w in pnet.weights(kept).values()] == pnet.shapes  # full size, generated
            assert torch.allclose(pnet(x, kept), physical(x), atol=1e-4)  # masking = cropping, at the start
            assert torch.allclose(pnet.materialize(kept).eval()(x), physical(x), atol=1e-4)
            assert torch.allclose(cropped.eval()(x), physical(x), atol=1e-4)


def test_registered_with_defaults():
    assert isinstance(agents.build("metapruning"), MetaPruningSearch)
    assert isinstance(agents.build("evolution"), EvolutionSearch)
    assert default_evals("evolution") == 1000 and default_evals("metapruning") == 5
    assert population_for(1000, None, 20) == 50 and population_for(300, None, 20) == 15
    assert population_for(60, None, 20) == 10 and population_for(60, 7, 20) == 7


def test_the_proxy_stage_scales_with_the_evaluations():
    """Ten PruningNet-scored candidates per evaluation, 50 x 20 at most, 4 generations where a population >= 10 allows."""
    search = MetaPruningSearch()
    assert search.stage_size(20) == (100, 25, 4)
    assert search.stage_size(5) == (25, 10, 3)
    assert search.stage_size(1000) == (1000, 50, 20)
    assert MetaPruningSearch(proxy_evals=30).stage_size(20) == (30, 10, 3)
    with pytest.raises(UserError):
        MetaPruningSearch(proxy_evals=0)


def test_evolution_learns_the_known_answer_and_respects_the_budget(surrogate_problem):
    n = surrogate_problem().space.size
    s = np.where(np.arange(n) < n // 2, 1.0, 0.01)
    evo, rnd = surrogate_problem(sensitivities=s), surrogate_problem(sensitivities=s)
    EvolutionSearch(population=20, generations=10).search(evo, 200, seed=0)
    agents.build("random").search(rnd, 200, seed=0)
    assert evo.n_evals == 200 and len({r.key for r in evo.results}) == 200  # no policy scored twice
    assert all(evo.budgets.satisfied(r.costs) and evo.budgets.tight(r.costs) for r in evo.results)
    acc = np.array([r.accuracy for r in evo.results])
    assert acc[-20:].mean() > acc[:20].mean() + 0.2, acc  # the last generation beats the first
    assert evo.best.accuracy > rnd.best.accuracy + 0.1, (evo.best.accuracy, rnd.best.accuracy)
    again = surrogate_problem(sensitivities=s)
    EvolutionSearch(population=20, generations=10).search(again, 200, seed=0)
    assert [r.key for r in again.results] == [r.key for r in evo.results]  # same seed, same run


@pytest.fixture(scope="module")
def tiny_setup(fmnist_subset):
    """resnet20 from random weights on the 2,000-image subset: a PruningNet that has everything to learn."""
    def make(**overrides):
        torch.manual_seed(0)
        cfg = SearchConfig(model="resnet20", budgets=["50%FLOPs"], data=fmnist_subset, weights="random",
                           agent="metapruning", heldout=200, calib_batches=2, device="cpu", **overrides)
        return build_setup(cfg)
    return make


@needs_fashion
def test_pruningnet_training_improves_its_networks_and_resumes_after_a_kill(tiny_setup, tmp_path):
    problem = tiny_setup().problem
    space, graph = problem.space, problem.space.graph
    rng = np.random.default_rng(1)
    encodings = [space.kept(problem.project(rng.uniform(0, space.max_ratios), rng)) for _ in range(3)]
    orders = removal_orders(problem.model, graph)

    def score(pnet) -> float:
        return float(np.mean([problem.evaluator(pnet.materialize(k))["top1"] for k in encodings]))

    whole = PruningNet(problem.model, graph, orders)
    before = score(whole.eval())
    train_pruningnet(whole, problem, epochs=2, lr=0.05, batch_size=64, seed=0, checkpoint=None)
    after = score(whole.eval())
    assert after > before + 0.15, (before, after)

    killed = PruningNet(problem.model, graph, orders)
    path = tmp_path / "pruningnet.pt"

    def kill(what, done, total):
        if done > total // 2 + 3:  # a few batches into the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pruningnet(killed, problem, epochs=2, lr=0.05, batch_size=64, seed=0, checkpoint=path, on_progress=kill)
    state = load_checkpoint(path, graph)
    assert state["epoch"] == 1
    resumed = PruningNet(problem.model, graph, orders)
    resumed.load_state_dict(state["state_dict"])
    train_pruningnet(resumed, problem, epochs=2, lr=0.05, batch_size=64, seed=0, checkpoint=path,
                     start_epoch=1, optimizer_state=state["optimizer"])
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):  # as if never killed
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


@needs_fashion
def test_cli_metapruning_then_reuse_and_refusals(tmp_path, fmnist_subset, capsys, monkeypatch):
    common = ["--budget", "50%FLOPs", "--weights", "random", "--heldout", "200", "--calib-batches", "1",
              "--data", fmnist_subset]
    out = tmp_path / "m20"
    small = ["--agent-option", "population=6", "--agent-option", "generations=3"]
    code, _, err = cli_main(["search", "resnet20", "--agent", "metapruning", "--pruningnet-epochs", "1", "--evals", "2",
                             *small, *common, "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    meta = json.loads((out / "policy.json").read_text())
    assert meta["agent"] == "metapruning" and meta["evaluations"] == 2
    assert meta["pruningnet"]["pruningnet"]["epochs"] == 1 and 0 <= meta["pruningnet"]["test_accuracy"] <= 1
    assert (out / "pruningnet.pt").is_file() and (out / "pruned_pruningnet.pt").is_file()
    import optuna

    trials = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}").get_trials()
    scorers = [t.user_attrs.get("scorer", "pruned") for t in trials]
    assert scorers.count("pruned") == 2 and scorers.count("pruningnet") > 2  # proxy scores kept apart
    code, _, err = cli_main(["search", "resnet20", "--agent", "metapruning", "--pruningnet-epochs", "1", "--evals", "2",
                             *small, *common, "--out", str(out), "--resume"], capsys, monkeypatch)
    assert code == 0, err  # replayed: the PruningNet from its checkpoint, every score from the study
    again = json.loads((out / "policy.json").read_text())
    assert again["ratios"] == meta["ratios"] and again["cached_evaluations"] == 2
    code, _, err = cli_main(["search", "resnet20", "--agent", "metapruning", "--pruningnet", str(out / "pruningnet.pt"),
                             "--evals", "1", *small, *common, "--out", str(tmp_path / "reuse")], capsys, monkeypatch)
    assert code == 0, err
    for args, words in ((["resnet32", "--agent", "metapruning", "--pruningnet", str(out / "pruningnet.pt")],
                         "PruningNet of resnet20"),
                        (["resnet20", "--agent", "metapruning", "--space", "unstructured"], "channel space"),
                        (["resnet20", "--agent", "tpe", "--pruningnet-epochs", "1"], "--pruningnet-epochs applies to"),
                        (["resnet20", "--agent", "evolution", "--agent-option", "colonies=3"], "population")):
        target = tmp_path / "refused"
        code, _, err = cli_main(["search", *args, *common, "--out", str(target)], capsys, monkeypatch)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
        assert not target.exists()
