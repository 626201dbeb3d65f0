"""The pruning graph: analytic costs equal Torch-Pruning's counter on the physically pruned model."""
from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
import torch_pruning as tp

from autoprune.errors import UserError
from autoprune.graph import build_graph
from autoprune.policy import apply_policy
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)
SMALL = ["resnet20", "mobilenetv2", "vgg11"]
# stem (first layer to see the input) and classifier of each small net
STEM_AND_HEAD = {"resnet20": ("conv1", "fc"), "mobilenetv2": ("features.0", "classifier"),
                 "vgg11": ("features.0", "classifier")}


def _tp_costs(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, *shape))
    return float(macs), float(params)


@pytest.fixture(scope="module", params=SMALL)
def net(request):
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, SHAPE, model_id=request.param)
    return request.param, model, graph


def test_base_costs_match_torch_pruning(net):
    _, model, graph = net
    macs, params = _tp_costs(model, SHAPE)
    assert graph.base_macs == macs
    assert graph.base_params == params
    full = graph.channels
    assert graph.macs(full) == macs and graph.params(full) == params


def test_analytic_costs_equal_torch_pruning_on_pruned_models(net):
    name, model, graph = net
    space = ChannelSpace(graph)
    rng = np.random.default_rng(1)
    for _ in range(3):
        kept = space.kept(rng.uniform(0, 0.8, space.size))
        assert (kept < graph.channels).any()
        pruned = apply_policy(model, graph, kept)
        macs, params = _tp_costs(pruned, SHAPE)
        assert graph.macs(kept) == macs, name
        assert graph.params(kept) == params, name
        assert macs < graph.base_macs
        # and the pruned model really keeps the counted channels
        modules = dict(pruned.named_modules())
        for g in graph.groups:
            m = modules[g.name]
            width = m.out_channels if hasattr(m, "out_channels") else m.out_features
            assert width == int(kept[g.index]), (name, g.name)


def test_cost_is_fast(net):
    _, _, graph = net
    kept = ChannelSpace(graph).kept(np.full(len(graph.groups), 0.4))
    times = []
    for _ in range(100):
        t = time.perf_counter()
        graph.macs(kept)
        graph.params(kept)
        times.append(time.perf_counter() - t)
    assert statistics.median(times) < 1e-3


def test_stem_and_classifier_are_ignored_not_grouped(net):
    name, _, graph = net
    stem, head = STEM_AND_HEAD[name]
    assert stem in graph.ignored and head in graph.ignored
    for g in graph.groups:
        assert stem not in g.layers and head not in g.layers, (name, g.name)
        assert g.name not in (stem, head)
    # the layer table still lists them, with no group
    layers = {lay.name: lay for lay in graph.layers}
    assert layers[stem].group == -1 and layers[head].group == -1
    assert graph.layers[0].name == stem and graph.layers[-1].name == head


def test_group_kinds(net):
    name, _, graph = net
    kinds = {g.kind for g in graph.groups}
    if name == "resnet20":
        residual = [g for g in graph.groups if g.kind == "residual"]
        assert residual, kinds
        # a residual group removes the output channels of several convolutions together
        assert all(len(g.layers) > 1 for g in residual)
        assert any(g.name == "layer3.0.downsample.0" for g in residual)
    elif name == "mobilenetv2":
        assert "depthwise" in kinds
        dw = [g for g in graph.groups if g.kind == "depthwise"]
        # expansion conv + depthwise conv go together
        assert all(len(g.layers) == 2 for g in dw)
    else:
        assert kinds == {"conv"}
    for g in graph.groups:
        assert g.channels >= 2
        assert 0 < g.macs <= graph.base_macs and 0 < g.params <= graph.base_params


def test_edges_are_valid_and_connect_the_network(net):
    _, _, graph = net
    n = len(graph.layers)
    assert graph.edges
    for i, j in graph.edges:
        assert 0 <= i < n and 0 <= j < n and i != j
        assert i < j  # layers are listed in execution order: the DAG flows forward
    sources = {i for i, _ in graph.edges}
    targets = {j for _, j in graph.edges}
    assert 0 in sources  # the stem feeds something
    assert n - 1 in targets  # the classifier is fed
    # every layer except the stem has an input, every layer except the classifier an output
    assert targets == set(range(1, n))
    assert sources == set(range(n - 1))


def test_apply_policy_leaves_input_model_unchanged(net):
    _, model, graph = net
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    space = ChannelSpace(graph)
    pruned = apply_policy(model, graph, space.kept(np.full(space.size, 0.5)))
    assert pruned is not model
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert shapes == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # the original still runs and the graph analysis did not touch it either
    with torch.no_grad():
        assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_build_graph_leaves_input_model_unchanged():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph(model, SHAPE)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_torchvision_resnet18_costs_match():
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, weights="random").model.eval()
    graph = build_graph(model, shape, model_id="resnet18")
    assert "conv1" in graph.ignored and "fc" in graph.ignored
    assert graph.base_macs == _tp_costs(model, shape)[0]
    space = ChannelSpace(graph)
    kept = space.kept(np.random.default_rng(0).uniform(0, 0.8, space.size))
    macs, params = _tp_costs(apply_policy(model, graph, kept), shape)
    assert graph.macs(kept) == macs
    assert graph.params(kept) == params


@pytest.mark.parametrize("name", ["regnet_x_400mf", "resnext50_32x4d"])
def test_grouped_convolutions_prune_in_whole_chunks_and_cost_exactly(name):
    """A group feeding a G-group convolution keeps a multiple of G; costs still equal Torch-Pruning's counter."""
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, weights="random").model.eval()
    graph = build_graph(model, shape, model_id=name)
    grouped = [g for g in graph.groups if g.divisor > 1]
    assert grouped, "no grouped-convolution group found"
    modules = dict(model.named_modules())
    for g in grouped:  # the divisor is the convolution's groups, and the group is a whole number of chunks
        convs = [modules[n] for n in g.layers + g.consumers if isinstance(modules[n], torch.nn.Conv2d)]
        assert g.divisor == max(c.groups for c in convs) and g.channels % g.divisor == 0
    space = ChannelSpace(graph)
    for g in grouped:
        assert all(level % g.divisor == 0 for level in space.levels[g.index]), g.name
    rng = np.random.default_rng(0)
    for _ in range(3):
        kept = space.kept(rng.uniform(0, 0.8, space.size))
        assert all(kept[g.index] % g.divisor == 0 for g in grouped)
        assert any(kept[g.index] < g.channels for g in grouped)
        pruned = apply_policy(model, graph, kept)
        assert _tp_costs(pruned, shape) == (graph.macs(kept), graph.params(kept))
        with torch.no_grad():
            assert pruned(torch.randn(2, *shape)).shape == (2, 10)
    with pytest.raises(UserError, match="multiple of"):  # a count the convolution cannot take
        bad = graph.channels.copy()
        bad[grouped[0].index] -= 1
        apply_policy(model, graph, bad)


def test_grouped_chunks_lose_the_same_channels_ranked_by_their_mean():
    """Torch-Pruning's rule for grouped convolutions: importance averaged over chunks, same positions removed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1),
                                torch.nn.Conv2d(8, 16, 3, padding=1, groups=4), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 64, 10)).eval()
    graph = build_graph(model, (3, 8, 8))
    g = next(g for g in graph.groups if g.name == "1")  # feeds the 4-group convolution
    assert g.divisor == 4 and g.channels == 8
    with torch.no_grad():  # channel 1 of every 2-channel chunk is weak: it must be the one to go everywhere
        model[1].weight[1::2] *= 0.01
    kept = graph.channels.copy()
    kept[g.index] = 4
    pruned = apply_policy(model, graph, kept, criterion="l2")
    assert torch.equal(pruned[1].weight, model[1].weight[0::2])
    assert pruned[2].weight.shape == (16, 1, 3, 3)
