"""UnstructuredSpace: snapped ratios, exact zero counts, costs that match the applied model."""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from autoprune.errors import UserError
from autoprune.graph import build_graph
from autoprune.search_spaces import UnstructuredSpace, sparsity_report
from autoprune.zoo import build_model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.eval()
    # A fresh model has zero BN biases; make every parameter non-zero so that counting non-zeros
    # measures exactly the weights the space zeroed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p) * 0.1 + 0.01)
    assert all(int((p == 0).sum()) == 0 for p in model.parameters())
    graph = build_graph(model, (1, 28, 28))
    return model, graph, UnstructuredSpace(graph, model)


def _nonzero_params(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight") and m.weight is not None}


def test_layers_exclude_stem_and_classifier(setup):
    model, graph, space = setup
    assert space.kind == "unstructured"
    assert "conv1" not in space.names and "fc" not in space.names
    assert space.size == len(graph.layers) - 2 == 20  # 18 block convs + 2 shortcut 1x1 convs
    assert space.names == [lay.name for lay in graph.layers if lay.name not in ("conv1", "fc")]
    assert np.all(space.max_ratios <= 0.95) and np.all(space.max_ratios > 0.94)
    assert space.describe()["kind"] == "unstructured"


def test_snap_is_whole_zero_counts_and_idempotent(setup):
    _, _, space = setup
    rng = np.random.default_rng(1)
    ratios = rng.uniform(0, 1, space.size)
    snapped = space.snap(ratios)
    zeros = snapped * space.numel
    np.testing.assert_allclose(zeros, np.round(zeros), atol=1e-9)
    np.testing.assert_array_equal(space.snap(snapped), snapped)
    assert np.all(snapped <= space.max_ratios + 1e-12)
    np.testing.assert_array_equal(space.snap(np.ones(space.size)), space.max_ratios)
    assert np.all(space.snap(-np.ones(space.size)) == 0)
    with pytest.raises(ValueError):
        space.snap(np.zeros(space.size + 1))


def test_apply_zero_counts_params_and_untouched_parts(setup):
    model, _, space = setup
    before = copy.deepcopy(model.state_dict())
    ratios = np.random.default_rng(2).uniform(0, 0.9, space.size)
    pruned = space.apply(model, ratios)

    report = sparsity_report(pruned)
    modules = dict(pruned.named_modules())
    for name, n, r in zip(space.names, space.numel, space.snap(ratios)):
        w = modules[name].weight
        assert int((w == 0).sum()) == round(r * n), name
        assert report[name] == pytest.approx(r)
        assert not hasattr(modules[name], "weight_orig") and not hasattr(modules[name], "weight_mask")
    # Non-zero parameters are exactly what the space charges for.
    assert _nonzero_params(pruned) == space.params(ratios)
    assert space.params(np.zeros(space.size)) == _nonzero_params(model) == sum(p.numel() for p in model.parameters())
    # Stem, classifier, BN untouched; the input model unchanged.
    orig = dict(model.named_modules())
    for name in ("conv1", "fc", "bn1", "layer2.1.bn2"):
        for pname, p in modules[name].named_parameters():
            assert torch.equal(p, getattr(orig[name], pname)), (name, pname)
    assert report["conv1"] == 0.0 and report["fc"] == 0.0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_magnitude_criterion_zeroes_smallest_weights(setup):
    model, _, space = setup
    ratios = np.full(space.size, 0.5)
    orig, pruned = _weights(model), _weights(space.apply(model, ratios, criterion="l1"))
    name = space.names[3]
    w, p = orig[name].abs().flatten(), pruned[name].flatten()
    kept, dropped = w[p != 0], w[p == 0]
    assert dropped.max() <= kept.min()
    l2 = _weights(space.apply(model, ratios, criterion="l2"))
    assert all(torch.equal(pruned[n], l2[n]) for n in space.names)


def test_random_criterion_is_seeded_and_keeps_global_rng(setup):
    model, _, space = setup
    ratios = np.full(space.size, 0.3)
    state = torch.random.get_rng_state()
    a = _weights(space.apply(model, ratios, criterion="random", seed=7))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = _weights(space.apply(model, ratios, criterion="random", seed=7))
    c = _weights(space.apply(model, ratios, criterion="random", seed=8))
    assert all(torch.equal(a[n], b[n]) for n in space.names)
    assert not all(torch.equal(a[n], c[n]) for n in space.names)
    name, n = space.names[0], space.numel[0]
    assert int((a[name] == 0).sum()) == round(0.3 * n)
    with pytest.raises(UserError):
        space.apply(model, ratios, criterion="fpgm")


def test_zero_sparsity_apply_is_identity(setup):
    model, _, space = setup
    pruned = space.apply(model, np.zeros(space.size))
    assert pruned is not model
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_macs_sparse_cost_model(setup):
    _, graph, space = setup
    zero = np.zeros(space.size)
    assert space.macs(zero) == pytest.approx(graph.base_macs, rel=1e-12)
    # Monotone decreasing in every layer's sparsity and in a uniform sweep.
    levels = [space.macs(np.full(space.size, r)) for r in np.linspace(0, 0.95, 12)]
    assert all(a > b for a, b in zip(levels, levels[1:]))
    for i in range(space.size):
        r = zero.copy()
        r[i] = 0.5
        assert space.macs(r) < space.macs(zero)
    # ResNet-20 convs have no bias: a layer's weight MACs are all its MACs, so full sparsity of one
    # layer removes exactly its MACs (up to the max_ratio cap).
    lay = next(lay for lay in graph.layers if lay.name == space.names[0])
    r = zero.copy()
    r[0] = 1.0
    assert space.base_macs - space.macs(r) == pytest.approx(lay.macs * space.max_ratios[0])


def test_costs_are_fast(setup):
    _, _, space = setup
    ratios = np.random.default_rng(3).uniform(0, 1, space.size)
    start = time.perf_counter()
    for _ in range(1000):
        space.macs(ratios)
        space.params(ratios)
    assert (time.perf_counter() - start) / 1000 < 1e-3


def test_graph_for_another_model_is_rejected(setup):
    _, graph, _ = setup
    other = build_model("vgg11", num_classes=10, in_channels=1, weights="random").model
    with pytest.raises(UserError):
        UnstructuredSpace(graph, other)
    with pytest.raises(ValueError):
        UnstructuredSpace(graph, setup[0], max_ratio=1.0)
