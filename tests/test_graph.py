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


# --- models that pruning partly breaks (tests/awkward_nets.py) -------------------------------------------------

def _graph_costs_match_tp(model, graph, ratios) -> None:
    """A policy's analytic MACs/params equal Torch-Pruning's counter (subclasses counted) on the pruned model."""
    from autoprune.probe import count_macs_params

    space = ChannelSpace(graph)
    kept = space.kept(np.asarray(ratios, dtype=np.float64))
    pruned = apply_policy(model, graph, kept)
    assert count_macs_params(pruned, graph.example()) == (graph.macs(kept), graph.params(kept))


def test_a_group_that_breaks_a_split_is_frozen_with_one_warning_and_the_rest_is_searched(caplog):
    from awkward_nets import FixedSplitNet

    model = FixedSplitNet().eval()
    with caplog.at_level("WARNING"):
        graph = build_graph(model, SHAPE)
    assert [f.name for f in graph.frozen] == ["split_in"] and graph.frozen[0].op == "split_with_sizes"
    assert graph.group_names() == ["body.0", "left", "right"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "left whole" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 4 channel groups left whole" in warnings[0]
    assert "breaks a split_with_sizes in the model's forward (1 group)" in warnings[0]  # torch.split in forward()
    assert "split_in" in graph.ignored_layers()
    _graph_costs_match_tp(model, graph, [0.5] * len(graph.groups))


def test_a_model_whose_every_group_breaks_is_refused_naming_the_operation():
    from awkward_nets import AllSplitNet

    with pytest.raises(UserError, match=r"no channel group can be pruned: pruning any of them breaks a "
                                        r"split_with_sizes") as info:
        build_graph(AllSplitNet().eval(), SHAPE)
    assert "fails on an input" not in str(info.value)


def test_a_model_that_fails_unpruned_is_the_only_one_told_it_fails_on_the_input():
    with pytest.raises(UserError, match=r"the model fails on an input of shape \(1, 3, 28, 28\)"):
        build_graph(build_model("resnet20", num_classes=10, in_channels=1, weights="random").model, (3, 28, 28))


def test_modules_the_forward_never_calls_are_ignored():
    from awkward_nets import UncalledNet

    model = UncalledNet().eval()
    graph = build_graph(model, SHAPE)
    assert "spare" not in graph.group_names() + [lay.name for lay in graph.layers]
    assert graph.group_names() == ["b.0", "c.0"]  # a.0 is the stem
    _graph_costs_match_tp(model, graph, [0.5, 0.25])


def test_convolution_subclasses_are_costed_and_their_extra_per_channel_parameters_pruned():
    """timm's ScaledStdConv2d (a gain per output channel) and Linear subclass: counted, pruned, costed exactly."""
    from awkward_nets import GainNet

    model = GainNet().eval()
    graph = build_graph(model, SHAPE)
    assert graph.group_names() == ["b", "c"] and "fc" in graph.ignored and not graph.frozen
    kept = ChannelSpace(graph).kept(np.array([0.5, 0.5]))
    pruned = apply_policy(model, graph, kept)
    assert pruned.b.gain.shape[0] == pruned.b.out_channels == 16
    _graph_costs_match_tp(model, graph, [0.5, 0.5])


def test_the_installed_group_walk_is_torch_prunings_and_the_linear_one_finds_the_same_channels():
    from awkward_nets import FixedSplitNet, PartialResidualNet
    from autoprune import tp_extensions
    from autoprune.graph import _dependency_graph

    nets = [build_model(name, num_classes=10, in_channels=1, weights="random").model
            for name in ("resnet20", "mobilenetv2")] + [FixedSplitNet()]
    for model in nets:
        model.eval()
        dg = _dependency_graph(model, torch.randn(1, *SHAPE))
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                args = (m, dg.get_pruner_of_module(m).prune_out_channels, list(range(dg.get_out_channels(m))))
                theirs = tp_extensions.ORIGINAL(dg, *args)  # Torch-Pruning's walk, unlimited
                assert _items(dg.get_pruning_group(*args), roots=True) == _items(theirs, roots=True)
                assert _items(tp_extensions.linear_pruning_group(dg, *args), roots=False) == _items(theirs, roots=False)
    # ReXNet's pattern: Torch-Pruning's walk from the stem takes 266 steps, from blocks.0.3 243,773 (12 s)
    model = PartialResidualNet(4).eval()
    dg = _dependency_graph(model, torch.randn(1, *SHAPE))
    args = (model.stem[0], dg.get_pruner_of_module(model.stem[0]).prune_out_channels, list(range(16)))
    theirs = tp_extensions.ORIGINAL(dg, *args)
    assert _items(tp_extensions.linear_pruning_group(dg, *args), roots=False) == _items(theirs, roots=False)


def _items(group, *, roots: bool) -> list:
    return sorted((it.dep.target.name, it.dep.handler.__name__,
                   tuple(sorted(zip(it.idxs, it.root_idxs)) if roots else sorted(it.idxs))) for it in group)


def test_concatenations_feeding_residual_adds_are_grouped_without_an_exponential_walk():
    """ReXNet's pattern: Torch-Pruning 1.6's own walk needs minutes for one block's group; ours ~1 s for all."""
    from awkward_nets import PartialResidualNet

    start = time.monotonic()
    model = PartialResidualNet(16).eval()
    graph = build_graph(model, SHAPE)
    assert time.monotonic() - start < 60
    assert len(graph.groups) == 16 and not graph.frozen
    _graph_costs_match_tp(model, graph, [0.5] * 16)
