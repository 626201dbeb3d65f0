"""The one forward-hook recorder (autoprune.hooks) and its promise: only our own hooks are ever removed.

A user may have forward hooks on their model (activation logging, a quantisation simulation).
The graph analysis, the latency units and MetaPruning's PruningNet all hook the model or copies of
it; afterwards the user's hooks must still be there and still run, in the model and in the copies.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autoprune.agents.pruningnet import PruningNet, unmasked
from autoprune.graph import build_graph
from autoprune.hooks import Call, forward_hooks, leaf_modules, record_calls
from autoprune.policy import apply_policy, removal_orders
from tiny_nets import tiny_net

SHAPE = (1, 28, 28)


def _counting_hook(seen: list[str], name: str):
    def hook(module, inputs, output) -> None:  # returns None: the output is left alone
        seen.append(name)
    return hook


def test_record_calls_gives_every_leaf_call_in_order_and_removes_only_its_hooks():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    seen: list[str] = []
    model[1].register_forward_hook(_counting_hook(seen, "user"))
    x = torch.randn(2, 1, 28, 28)
    calls, out = record_calls(model, lambda: model(x))
    assert [c.name for c in calls] == ["0", "1", "2", "3", "4"] and out.shape == (2, 2)
    assert calls[0] == Call("0", model[0], (2, 1, 28, 28), (2, 4, 26, 26))
    assert not out.requires_grad  # recorded without gradients
    assert len(model[1]._forward_hooks) == 1 and all(not m._forward_hooks for i, m in enumerate(model) if i != 1)
    model(x)
    assert seen == ["user", "user"]  # the user's hook ran during the recording and still runs after it
    assert leaf_modules(model) == list(model)


def test_forward_hooks_remove_their_handles_even_when_the_forward_pass_raises():
    layer = nn.Linear(3, 3)
    seen: list[str] = []
    layer.register_forward_hook(_counting_hook(seen, "user"))
    try:
        with forward_hooks([(layer, _counting_hook(seen, "ours"))]):
            layer(torch.randn(1, 3))
            raise RuntimeError("the forward pass broke")
    except RuntimeError:
        pass
    layer(torch.randn(1, 3))
    assert seen == ["user", "ours", "user"]


def test_a_users_forward_hook_survives_the_pruningnet():
    """Build, train-style forward, materialize and unmask a PruningNet: the user's hooks stay, in their
    model and in every copy the PruningNet makes, and the masks still equal physical pruning."""
    torch.manual_seed(0)
    model = tiny_net().eval()
    graph = build_graph(model, SHAPE, model_id="tiny")
    seen: list[str] = []
    bn = model.features[4]  # a mask point: the BN after a group's conv
    bn.register_forward_hook(_counting_hook(seen, "user"))
    orders = removal_orders(model, graph)
    pnet = PruningNet(model, graph, orders).eval()
    assert "features.4" in pnet.points
    kept = np.maximum(1, graph.channels // 2)
    x = torch.randn(2, *SHAPE)
    physical = apply_policy(model, graph, kept, orders=orders).eval()  # Torch-Pruning traces with autograd
    with torch.no_grad():
        want = physical(x)
        seen.clear()
        assert torch.allclose(pnet(x, kept), want, atol=1e-4)  # the forward pass the PruningNet trains with
        assert seen == ["user"] and len(pnet.base.features[4]._forward_hooks) == 1  # no mask hook left behind
        net = pnet.materialize(kept).eval()
        assert torch.allclose(net(x), want, atol=1e-4) and seen == ["user"] * 2
        cropped = unmasked(net)
        assert len(cropped.features[4]._forward_hooks) == 1  # the user's, copied with the model; the mask is gone
        cropped(x)
        model(x)
    assert seen == ["user"] * 4 and len(bn._forward_hooks) == 1
