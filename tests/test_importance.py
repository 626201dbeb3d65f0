"""Data-aware channel importance (taylor, hessian, activation) and the stem group's own cap."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.budget import parse_budget
from autoprune.errors import UserError
from autoprune.graph import build_graph
from autoprune.importance import DATA_CRITERIA, importance, labelled_batches, prepare
from autoprune.policy import apply_policy, removal_orders
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)


def _data(seed: int = 0, n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_aware_criteria_rank_deterministically_and_prune(graphs, name, criterion):
    model, graph = graphs(name)
    batches = labelled_batches(_data(), n_batches=2, batch_size=32, seed=3)
    again = labelled_batches(_data(), n_batches=2, batch_size=32, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    orders = removal_orders(model, graph, criterion=criterion, seed=0, batches=batches)
    assert [o.tolist() for o in orders] == [o.tolist() for o in
                                           removal_orders(model, graph, criterion=criterion, seed=0, batches=again)]
    for g, o in zip(graph.groups, orders):  # a permutation of the group's chunk positions
        assert sorted(o.tolist()) == list(range(g.channels // g.divisor))
    l2 = removal_orders(model, graph, criterion="l2")
    assert any(not torch.equal(a, b) for a, b in zip(orders, l2)), "the data changed no ranking"
    space = ChannelSpace(graph)
    kept = space.kept(np.random.default_rng(0).uniform(0, space.max_ratios))
    pruned = apply_policy(model, graph, kept, criterion=criterion, orders=orders)
    macs, _ = tp.utils.count_ops_and_params(pruned, torch.randn(1, *SHAPE))
    assert macs == pytest.approx(graph.macs(kept))
    with pytest.raises(UserError, match="removal orders"):
        apply_policy(model, graph, kept, criterion=criterion)


def test_hessian_uses_every_sample_not_the_last():
    """Torch-Pruning 1.6's accumulate_grad keeps only the last sample; prepare() averages all of them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    x, y = torch.randn(6, *SHAPE), torch.randint(0, 10, (6,))
    expected = torch.zeros_like(net[0].weight)
    for i in range(6):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
        expected += net[0].weight.grad ** 2
    prepare(net, importance("hessian"), "hessian", [(x, y)])
    assert torch.allclose(net[0].weight.grad, expected / 6, rtol=1e-5, atol=1e-9)


def test_problem_scores_data_aware_orders_once_from_the_training_split(graphs):
    from autoprune.problem import Problem

    model, graph = graphs("resnet20")
    space = ChannelSpace(graph)
    base = {"macs": graph.base_macs, "params": graph.base_params}
    problem = Problem(model, space, [parse_budget("50%FLOPs", base)], lambda m: {"top1": 0.5}, criterion="taylor")
    with pytest.raises(UserError, match="training split"):
        problem.channel_orders()
    problem.train = _data()
    first = problem.channel_orders()
    assert problem.channel_orders() is first  # computed once per run, not per candidate
    ratios = problem.project(np.full(space.size, 0.5), np.random.default_rng(0))
    a, b = problem.prune(ratios), apply_policy(model, graph, space.kept(ratios), orders=first)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_stem_group_has_its_own_cap():
    model = build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, SHAPE, model_id="resnet20", prune_stem=True)
    assert graph.stem == "conv1" and graph.groups[graph.stem_group].name == "conv1"
    assert build_graph(model, SHAPE, model_id="resnet20").stem_group is None
    capped = ChannelSpace(graph, stem_max_ratio=0.25)
    others = np.delete(capped.max_ratios, graph.stem_group)
    assert capped.max_ratios[graph.stem_group] <= 0.25 and np.allclose(others, np.delete(ChannelSpace(graph).max_ratios, graph.stem_group))
    assert ChannelSpace(graph, stem_max_ratio=0.25).kept(np.full(capped.size, 0.8))[graph.stem_group] >= 12
    with pytest.raises(ValueError, match="stem_max_ratio"):
        ChannelSpace(graph, stem_max_ratio=1.0)
