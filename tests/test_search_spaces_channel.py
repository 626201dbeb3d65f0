"""Channel search space: the grid of kept counts, snapping, bounds and single grid steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.graph import build_graph
from autoprune.search_spaces import ChannelSpace, auto_round_to
from autoprune.zoo import build_model


@pytest.fixture(scope="module")
def graphs():
    out = {}
    for name in ("resnet20", "mobilenetv2"):
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
        out[name] = build_graph(model, (1, 28, 28), model_id=name)
    return out


def test_auto_round_to_rule():
    # the largest of 8, 4, 2, 1 that still leaves at least 32 choices
    assert [auto_round_to(c) for c in (1, 2, 16, 24, 32, 63)] == [1, 1, 1, 1, 1, 1]
    assert [auto_round_to(c) for c in (64, 96, 127)] == [2, 2, 2]
    assert [auto_round_to(c) for c in (128, 160, 255)] == [4, 4, 4]
    assert [auto_round_to(c) for c in (256, 320, 960, 2048)] == [8, 8, 8, 8]
    for c in range(1, 600):
        s = auto_round_to(c)
        assert s in (1, 2, 4, 8)
        assert s == 1 or c // s >= 32
        assert s == 8 or c // (2 * s) < 32


def test_space_uses_auto_steps_per_group(graphs):
    graph = graphs["mobilenetv2"]
    space = ChannelSpace(graph)
    assert space.size == len(graph.groups)
    assert space.names == graph.group_names()
    for g, step in zip(graph.groups, space.steps):
        assert step == auto_round_to(g.channels)
    steps = dict(zip(space.names, space.steps))
    assert steps["features.20"] == 8  # 1280 channels
    assert steps["features.3.conv.3"] == 1  # 16 channels
    assert steps["features.15.conv.6"] == 2  # 96 channels
    assert space.describe()["round_to"] == "auto"
    # an explicit round_to applies to every group (capped at the group's width)
    fixed = ChannelSpace(graph, round_to=4)
    assert np.array_equal(fixed.steps, np.minimum(4, graph.channels.astype(int)))
    kept = fixed.kept(np.random.default_rng(0).uniform(0, 0.8, fixed.size))
    assert np.all((kept % 4 == 0) | (kept == fixed.channels))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("round_to", [None, 8])
def test_snap_is_idempotent_and_on_grid(graphs, name, round_to):
    space = ChannelSpace(graphs[name], round_to=round_to)
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = rng.uniform(0, 1, space.size)
        s = space.snap(r)
        assert np.array_equal(space.snap(s), s)
        assert np.array_equal(space.kept(s), space.kept(r))
        kept = space.kept(r)
        assert np.allclose(s, 1 - kept / space.channels)
        for i, k in enumerate(kept):
            assert k in space.levels[i]


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("max_ratio", [0.0, 0.5, 0.8, 0.99])
def test_kept_within_bounds_and_max_ratio(graphs, name, max_ratio):
    space = ChannelSpace(graphs[name], max_ratio=max_ratio)
    n = space.channels
    rng = np.random.default_rng(1)
    vectors = [rng.uniform(-1, 2, space.size) for _ in range(30)]
    vectors += [np.zeros(space.size), np.ones(space.size), np.full(space.size, 5.0), np.full(space.size, -5.0)]
    for r in vectors:
        kept = space.kept(r)
        assert np.all(kept >= 1) and np.all(kept <= n)
        assert np.all(kept == np.round(kept))
        assert np.all(space.ratios(kept) <= max_ratio + 1e-12)
    assert np.all(space.max_ratios <= max_ratio + 1e-12)
    assert np.all(space.max_ratios >= 0)
    # pruning as much as allowed reaches the smallest level of every group
    assert np.array_equal(space.kept(np.ones(space.size)), space.min_kept)
    if max_ratio == 0.0:
        assert np.array_equal(space.kept(np.ones(space.size)), n)


def test_kept_never_zero_with_extreme_ratio():
    # 0.99 of a 16-channel group would keep 0.16 channels: at least one must stay
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, (1, 28, 28))
    space = ChannelSpace(graph, max_ratio=0.999, round_to=1)
    kept = space.kept(np.ones(space.size))
    assert np.all(kept >= 1)
    assert np.all(kept == np.maximum(1, np.ceil(0.001 * space.channels - 1e-9)))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_step_moves_one_grid_level(graphs, name):
    space = ChannelSpace(graphs[name])
    rng = np.random.default_rng(2)
    for _ in range(20):
        r = space.snap(rng.uniform(0, 0.8, space.size))
        kept = space.kept(r)
        for i in range(space.size):
            pos = int(np.searchsorted(space.levels[i], kept[i]))
            assert space.levels[i][pos] == kept[i]
            for direction in (+1, -1):
                moved = space.step(r, i, direction)
                want = pos - 1 if direction > 0 else pos + 1
                if not 0 <= want < len(space.levels[i]):
                    assert moved is None
                    continue
                new_kept = space.kept(moved)
                assert new_kept[i] == space.levels[i][want]
                # only group i changes, and pruning more (+1) means fewer kept channels
                others = np.arange(space.size) != i
                assert np.array_equal(new_kept[others], kept[others])
                assert (new_kept[i] < kept[i]) if direction > 0 else (new_kept[i] > kept[i])
                assert np.array_equal(space.snap(moved), moved)
                # the step is undone by the opposite step
                back = space.step(moved, i, -direction)
                assert np.array_equal(space.kept(back), kept)


def test_step_at_bounds_returns_none(graphs):
    space = ChannelSpace(graphs["resnet20"])
    full = np.zeros(space.size)
    most = space.max_ratios.copy()
    for i in range(space.size):
        assert space.step(full, i, -1) is None  # cannot keep more than all channels
        assert space.step(most, i, +1) is None  # cannot prune beyond max_ratio
        assert space.step(full, i, +1) is not None
        assert space.step(most, i, -1) is not None


def test_costs_fall_with_more_pruning(graphs):
    space = ChannelSpace(graphs["resnet20"])
    r = np.full(space.size, 0.3)
    base = space.macs(r), space.params(r)
    for i in range(space.size):
        more = space.step(r, i, +1)
        assert space.macs(more) < base[0] and space.params(more) < base[1]


def test_invalid_arguments(graphs):
    with pytest.raises(ValueError):
        ChannelSpace(graphs["resnet20"], max_ratio=1.0)
    with pytest.raises(ValueError):
        ChannelSpace(graphs["resnet20"], max_ratio=-0.1)
    with pytest.raises(ValueError):
        ChannelSpace(graphs["resnet20"], round_to=0)
