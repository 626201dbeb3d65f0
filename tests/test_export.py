"""Exports reproduce autoprune's pruning exactly in the tools they are written for."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
import torch_pruning as tp

from autoprune.errors import UserError
from autoprune.export import (apply_tp_ratio_dict, nni_config_list, nni_ratio, save_pruned_model, tp_ratio,
                              tp_ratio_dict, write_exports)
from autoprune.graph import build_graph
from autoprune.masks import NNI_MASKS_FILE, apply_masks, nni_masks
from autoprune.policy import Policy, apply_policy
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tiny models gain nothing from intra-op threads; on a busy CPU they lose 10x to contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(name: str):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
    graph = build_graph(model, SHAPE, model_id=name)
    return model, graph, ChannelSpace(graph)


@pytest.fixture(scope="module")
def resnet():
    return _setup("resnet20")


@pytest.fixture(scope="module")
def mobilenet():
    return _setup("mobilenetv2")


def _policy(space: ChannelSpace, draw: int, **meta) -> tuple[np.ndarray, Policy]:
    """Random ratios (draw `draw`); `meta` as policy.json would hold it (criterion, seed, channel_orders)."""
    ratios = space.snap(np.random.default_rng(draw).uniform(0, 0.8, space.size))
    ratios[draw % space.size] = 0.0  # one group left whole: it must be absent from the exports
    policy = Policy.from_vector(space.graph, ratios)
    policy.meta.update(meta)
    return ratios, policy


def test_ratios_survive_the_tools_truncation():
    # Exhaustive over small layers: the tool's own arithmetic lands on the exact count.
    for n in range(1, 400):
        for kept in range(1, n + 1):
            r = tp_ratio(n, kept)
            assert int(n * (1.0 - r)) == kept
            assert abs(r - (n - kept) / n) <= 4e-6
            s = nni_ratio(n, kept)
            assert int(n * s) == n - kept and round(n * s) == n - kept
            assert abs(s - (n - kept) / n) <= 4e-6
    # The naive six-decimal ratio would not do: 1 - 0.614583 keeps 37.00003 of 96, but 0.614584 keeps 36.9999.
    assert int(96 * (1 - 0.614584)) == 36 and int(96 * (1 - tp_ratio(96, 37))) == 37


def test_nni_config_list(resnet):
    model, graph, space = resnet
    ratios, policy = _policy(space, 1)
    kept = space.kept(ratios)
    names = dict(model.named_modules())
    config = nni_config_list(graph, policy)
    pruned = [g for g in graph.groups if kept[g.index] < g.channels]
    assert len(config) == len(pruned) == len(graph.groups) - 1
    for entry, g in zip(config, pruned):
        assert set(entry) == {"op_names", "sparsity_per_layer"}
        assert entry["op_names"] == g.layers and all(n in names for n in entry["op_names"])
        assert all(isinstance(names[n], (torch.nn.Conv2d, torch.nn.Linear)) for n in entry["op_names"])
        assert entry["sparsity_per_layer"] == pytest.approx(policy.ratios[g.name], abs=4e-6)
        assert int(g.channels * entry["sparsity_per_layer"]) == g.channels - kept[g.index]
    residual = next(e for e in config if len(e["op_names"]) > 1)  # coupled layers share one entry
    assert len(residual["op_names"]) == 4
    v3 = nni_config_list(graph, policy, nni_version=3)
    assert [set(e) for e in v3] == [{"op_names", "sparse_ratio"}] * len(config)
    assert [e["sparse_ratio"] for e in v3] == [e["sparsity_per_layer"] for e in config]
    with pytest.raises(UserError):
        nni_config_list(graph, policy, nni_version=1)


@pytest.mark.parametrize("fixture", ["resnet", "mobilenet"])
def test_tp_ratio_dict_reproduces_apply_policy(fixture, request):
    model, graph, space = request.getfixturevalue(fixture)
    x = torch.randn(1, *SHAPE)
    for seed in (0, 1, 2):
        ratios, policy = _policy(space, seed)
        kept = space.kept(ratios)
        ratio_dict = json.loads(json.dumps(tp_ratio_dict(graph, policy)))  # as read back from the file
        assert set(ratio_dict) == {g.name for g in graph.groups if kept[g.index] < g.channels}
        theirs = apply_tp_ratio_dict(copy.deepcopy(model), x, ratio_dict, importance="l1")
        theirs_macs, theirs_params = tp.utils.count_ops_and_params(theirs, x)
        assert theirs_macs == graph.macs(kept) and theirs_params == graph.params(kept)
        with torch.no_grad():
            assert theirs(x).shape == (1, 10)
        ours = space.apply(model, ratios, criterion="l1")
        assert tp.utils.count_ops_and_params(ours, x) == (theirs_macs, theirs_params)
        shapes = {n: p.shape for n, p in ours.named_parameters()}
        assert {n: p.shape for n, p in theirs.named_parameters()} == shapes
        # Same criterion on the same weights: the same channels survive, so the same function.
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_apply_tp_ratio_dict_options(resnet):
    model, graph, space = resnet
    x = torch.randn(1, *SHAPE)
    ratios, policy = _policy(space, 5)
    ratio_dict = tp_ratio_dict(graph, policy)
    fresh = copy.deepcopy(model).train()
    by_graph = apply_tp_ratio_dict(fresh, x, ratio_dict, ignored_layers=graph.ignored)
    assert by_graph is fresh and fresh.training  # in place, mode restored
    assert tp.utils.count_ops_and_params(by_graph, x)[0] == graph.macs(space.kept(ratios))
    assert torch.equal(fresh.bn1.running_mean, model.bn1.running_mean)  # tracing did not train BN
    with pytest.raises(UserError, match="no module"):
        apply_tp_ratio_dict(copy.deepcopy(model), x, {"layer9.conv": 0.5})
    with pytest.raises(UserError, match="ratios must lie"):
        apply_tp_ratio_dict(copy.deepcopy(model), x, {graph.groups[0].name: 1.0})
    # A group that touches an ignored layer cannot be pruned: an error, not a silently wrong model.
    with pytest.raises(UserError, match="kept"):
        apply_tp_ratio_dict(copy.deepcopy(model), x, {"layer1.0.conv1": 0.5}, ignored_layers=["layer1.0.conv1"])


def test_write_exports_and_model_files(resnet, tmp_path):
    model, graph, space = resnet
    x = torch.randn(2, *SHAPE)
    ratios, policy = _policy(space, 6)
    pruned = space.apply(model, ratios).train()
    paths = write_exports(tmp_path, graph, policy, model=pruned, example_input=x[:1])
    assert pruned.training  # exporting works on a copy: the caller's model keeps its mode
    pruned.eval()
    assert {"nni_config_list", "tp_pruning_ratio_dict", "pt"} <= set(paths)
    assert all(p.exists() and p.parent == tmp_path for p in paths.values())
    assert paths["pt"].name == "pruned.pt" and (paths.get("onnx") or paths["torchscript"]).stem == "pruned"
    assert json.loads(paths["nni_config_list"].read_text()) == nni_config_list(graph, policy)
    ratio_dict = json.loads(paths["tp_pruning_ratio_dict"].read_text())
    assert ratio_dict == tp_ratio_dict(graph, policy)

    loaded = torch.load(paths["pt"], weights_only=False).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x))
    assert tp.utils.count_ops_and_params(loaded, x[:1])[0] == graph.macs(space.kept(ratios))
    if "onnx" in paths:
        onnx.checker.check_model(str(paths["onnx"]))
        proto = onnx.load(str(paths["onnx"]))
        assert [i.name for i in proto.graph.input] == ["input"]
    else:  # the TorchScript fallback
        ts = torch.jit.load(str(paths["torchscript"]))
        with torch.no_grad():
            assert torch.allclose(ts(x), pruned(x), atol=1e-5)

    json_only = write_exports(tmp_path / "policy_only", graph, policy)
    assert set(json_only) == {"nni_config_list", "tp_pruning_ratio_dict"}
    with_base = write_exports(tmp_path / "with_base", graph, policy, base=model)
    assert set(with_base) == {"nni_config_list", "tp_pruning_ratio_dict", "nni_masks"}
    assert with_base["nni_masks"].name == NNI_MASKS_FILE


def _uneven_bn(model: nn.Module) -> nn.Module:
    """BN statistics and shifts away from 0/1, so that a removed channel left non-zero would show in the outputs."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


@pytest.mark.parametrize("fixture,criterion", [("resnet", "l2"), ("resnet", "l1"), ("mobilenet", "l2")])
def test_nni_masks_keep_exactly_the_policy_channels(fixture, criterion, request, tmp_path):
    model, graph, space = request.getfixturevalue(fixture)
    base = _uneven_bn(copy.deepcopy(model))
    ratios, policy = _policy(space, 2, criterion=criterion, seed=0)
    kept = space.kept(ratios)
    write_exports(tmp_path, graph, policy, base=base)
    masks = torch.load(tmp_path / NNI_MASKS_FILE)  # plain tensors: loads with weights_only
    modules = dict(base.named_modules())
    # NNI 2.x's format: {name: {"weight": mask, "bias": mask}} of the parameters' shapes, 0/1, bias only if present
    for name, entry in masks.items():
        m = modules[name]
        assert isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
        assert set(entry) == {"weight"} | ({"bias"} if m.bias is not None else set())
        for pname, mask in entry.items():
            assert mask.shape == getattr(m, pname).shape and mask.dtype == torch.float32
            assert set(mask.unique().tolist()) == {0.0, 1.0}
            rows = mask.flatten(1).amin(1) if mask.dim() > 1 else mask
            assert torch.equal(mask, rows.view(-1, *[1] * (mask.dim() - 1)).expand_as(mask))  # whole channels
    # Every layer whose outputs a pruned group removes, each keeping the group's count; nothing else
    pruned_groups = [g for g in graph.groups if kept[g.index] < g.channels]
    for g in pruned_groups:
        for layer in g.layers:
            assert int(masks[layer]["weight"].flatten(1)[:, 0].sum()) == kept[g.index]
    assert not {g.layers[0] for g in graph.groups if kept[g.index] == g.channels} & set(masks)
    # Exactly the channels apply_policy kept: its batch norms hold the kept rows of the base's statistics
    ours = apply_policy(base, graph, kept, criterion=criterion)
    ours_modules = dict(ours.named_modules())
    bns = [n for n in masks if isinstance(modules[n], nn.BatchNorm2d)]
    assert bns
    for name in bns:
        keep = masks[name]["weight"].bool()
        assert torch.equal(ours_modules[name].running_mean, modules[name].running_mean[keep])
    # Zeroing the masked channels of the unpruned model computes what the pruned model computes
    masked = apply_masks(copy.deepcopy(base), masks)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), ours(x), atol=1e-5)
        assert not torch.allclose(base(x), ours(x), atol=1e-3)  # the masks did something


def test_nni_masks_follow_the_runs_channel_orders(resnet):
    """Data-aware criteria: the orders policy.json records decide, not any weight ranking."""
    model, graph, space = resnet
    base = _uneven_bn(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(3)
    orders = [torch.randperm(g.channels, generator=gen) for g in graph.groups]
    ratios, policy = _policy(space, 4, criterion="taylor", seed=0,
                             channel_orders={g.name: o.tolist() for g, o in zip(graph.groups, orders)})
    ours = apply_policy(base, graph, space.kept(ratios), criterion="taylor", orders=orders)
    masked = apply_masks(copy.deepcopy(base), nni_masks(base, graph, policy))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), ours(x), atol=1e-5)
    del policy.meta["channel_orders"]
    with pytest.raises(UserError, match="channel_orders"):
        nni_masks(base, graph, policy)
    with pytest.raises(UserError, match="masks name no module"):
        apply_masks(copy.deepcopy(base), {"layer9.conv": {"weight": torch.ones(1)}})


@pytest.mark.parametrize("criterion", ["l2", "l1"])
def test_tp_ratio_dict_with_the_policy_file_rebuilds_its_model(criterion, resnet, tmp_path):
    """The documented one call: the default importance is policy.json's criterion, so the same channels survive."""
    model, graph, space = resnet
    x = torch.randn(2, *SHAPE)
    ratios, policy = _policy(space, 7, criterion=criterion, seed=0)
    policy.save(tmp_path / "policy.json")
    write_exports(tmp_path, graph, policy)
    theirs = apply_tp_ratio_dict(copy.deepcopy(model), x[:1], tmp_path / "tp_pruning_ratio_dict.json",
                                 policy=tmp_path / "policy.json")
    ours = space.apply(model, ratios, criterion=criterion)
    other = apply_tp_ratio_dict(copy.deepcopy(model), x[:1], tmp_path / "tp_pruning_ratio_dict.json",
                                importance="l1" if criterion == "l2" else "l2")
    assert tp.utils.count_ops_and_params(theirs, x[:1])[0] == graph.macs(space.kept(ratios))
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)
        assert not torch.allclose(other(x), ours(x), atol=1e-3)  # the criterion matters: other channels
    if criterion == "l2":  # without a policy the default is the search's default criterion, l2
        plain = apply_tp_ratio_dict(copy.deepcopy(model), x[:1], tp_ratio_dict(graph, policy))
        with torch.no_grad():
            assert torch.allclose(plain(x), ours(x), atol=1e-5)


def test_tp_ratio_dict_refuses_a_data_aware_policy(resnet):
    model, graph, space = resnet
    _, policy = _policy(space, 8, criterion="taylor")
    with pytest.raises(UserError, match="nni_masks.pt"):
        apply_tp_ratio_dict(copy.deepcopy(model), torch.randn(1, *SHAPE), tp_ratio_dict(graph, policy), policy=policy)


def test_onnx_file_runs_any_batch_with_the_modules_logits(resnet, tmp_path):
    model, graph, space = resnet
    ratios, _ = _policy(space, 9)
    pruned = space.apply(model, ratios)
    paths = save_pruned_model(pruned, tmp_path, torch.randn(1, *SHAPE))  # traced at batch 1
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_outputs()[0].shape[0] == "batch"
    for n in (4, 1):
        x = torch.randn(n, *SHAPE)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            ref = pruned(x).numpy()
        assert logits.shape == (n, 10)
        assert np.abs(logits - ref).max() < 1e-4



class _Unexportable(torch.nn.Module):
    """Singular values have no ONNX operator: both exporters fail, TorchScript must take over."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(self.fc(x).reshape(-1, 2, 2))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
def test_save_pruned_model_falls_back_to_torchscript(tmp_path, caplog):
    net, x = _Unexportable().eval(), torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, logger="autoprune.export"):
        paths = save_pruned_model(net, tmp_path, x, stem="tiny")
    assert set(paths) == {"pt", "torchscript"} and paths["torchscript"].name == "tiny.ts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt", "tiny.ts"]  # no half-written .onnx
    assert "writing TorchScript" in caplog.text and "\x1b[" not in caplog.text
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(paths["torchscript"]))(x), net(x))
        assert torch.allclose(torch.load(paths["pt"], weights_only=False)(x), net(x))


def test_saved_model_has_the_default_layout_and_the_caller_keeps_its_own(tmp_path):
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    net.to(memory_format=torch.channels_last)  # as the evaluator leaves it
    save_pruned_model(net, tmp_path, torch.randn(1, 2, 8, 8), stem="m")
    saved = torch.load(tmp_path / "m.pt", weights_only=False)
    assert all(m.weight.is_contiguous() for m in saved if isinstance(m, nn.Conv2d))
    assert not net[0].weight.is_contiguous()


def test_tp_ratio_dict_of_grouped_convolutions_reproduces_apply_policy():
    """Torch-Pruning applies a grouped group's ratio per chunk; the exported ratios account for it."""
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = build_model("regnet_x_400mf", num_classes=10, in_channels=3, weights="random").model.eval()
    graph = build_graph(model, shape)
    space = ChannelSpace(graph)
    x = torch.randn(1, *shape)
    ratios, policy = _policy(space, 3)
    kept = space.kept(ratios)
    assert any(kept[g.index] < g.channels for g in graph.groups if g.divisor > 1)
    ratio_dict = json.loads(json.dumps(tp_ratio_dict(graph, policy)))
    theirs = apply_tp_ratio_dict(copy.deepcopy(model), x, ratio_dict, importance="l1")
    assert tp.utils.count_ops_and_params(theirs, x) == (graph.macs(kept), graph.params(kept))
    ours = space.apply(model, ratios, criterion="l1")
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
