"""Searching models that pruning partly breaks, or that take and return more than one tensor.

A group that breaks is left whole and shows up where a user looks: the warning, policy.json, the
report, and the Torch-Pruning export; a tuple input is traced from `example_inputs` and fed from
`batch_to_inputs`; the graph analysis says what it is doing, with elapsed time.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import autoprune
from autoprune.export import apply_tp_ratio_dict
from autoprune.graph import build_graph
from autoprune.probe import count_macs_params
from awkward_nets import FixedSplitNet, TwoInputNet


def _images(n: int = 72, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_frozen_groups_are_in_policy_json_the_report_and_left_out_of_the_torch_pruning_export(tmp_path):
    torch.manual_seed(0)
    model = FixedSplitNet().eval()
    result = autoprune.search(model, "70%FLOPs", train=_images(), heldout=8, agent="uniform", evals=1,
                              calib_batches=1, device="cpu", out=tmp_path / "run")
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert [(f["name"], f["op"], f["channels"]) for f in policy["frozen_groups"]] == [
        ("split_in", "split_with_sizes", 32)]
    assert "split_in" not in policy["ratios"] and result.macs <= 0.7 * policy["base_macs"]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Groups left whole (1)" in report and "a split_with_sizes in the model&#x27;s forward" in report
    assert "split_in" not in result.tp_pruning_ratio_dict
    graph = result._setup.problem.space.graph
    theirs = apply_tp_ratio_dict(copy.deepcopy(model), torch.randn(1, 1, 28, 28), result.tp_pruning_ratio_dict,
                                 ignored_layers=graph.ignored_layers())
    assert count_macs_params(theirs, torch.randn(1, 1, 28, 28))[0] == result.macs


def test_a_model_with_tuple_inputs_and_outputs_is_searched_with_example_inputs_and_the_users_score():
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    train = _images()
    example = (torch.randn(1, 1, 28, 28), torch.ones(1))
    seen = []

    def evaluate(m):
        seen.append(m)
        x, y = train.tensors
        with torch.no_grad():
            logits, _ = m(x[:16], torch.ones(16))
        return float((logits.argmax(1) == y[:16]).float().mean())

    result = autoprune.search(model, "50%FLOPs", train=train, evaluate=evaluate, example_inputs=example,
                              batch_to_inputs=lambda batch: (batch[0], torch.ones(len(batch[0]))),
                              agent="uniform", evals=1, calib_batches=1, device="cpu")
    assert seen and result.macs <= 0.5 * result.summary["base_macs"]
    assert result.summary["example_inputs"] == "tuple" and result.summary["latency_ms"] is None
    assert count_macs_params(result.pruned_model.cpu().eval(), example) == (result.macs, result.params)
    logits, features = result.pruned_model(*example)
    assert logits.shape == (1, 10) and features.shape[0] == 1
    with pytest.raises(autoprune.UserError, match="traced the model with your example_inputs"):
        autoprune.apply(TwoInputNet().eval(), result.policy, train=train)
    again = autoprune.apply(model, result.policy, train=train, example_inputs=example,
                            batch_to_inputs=lambda batch: (batch[0], torch.ones(len(batch[0]))))
    assert count_macs_params(again, example)[0] == result.macs


def test_tuple_inputs_refuse_latency_budgets_in_one_line():
    with pytest.raises(autoprune.UserError, match="latency budgets time the model on one input tensor"):
        autoprune.search(TwoInputNet().eval(), "60%latency", train=_images(), evaluate=lambda m: 0.5,
                         example_inputs=(torch.randn(1, 1, 28, 28), torch.ones(1)), agent="uniform", evals=1,
                         calib_batches=1, device="cpu")


def test_graph_analysis_reports_its_stages_with_elapsed_time():
    heard = []
    graph = build_graph(FixedSplitNet().eval(), (1, 28, 28), model_id="net", progress=heard.append)
    assert heard[0] == "net: tracing the dependency graph"
    assert any(h.startswith("net: probing 4 channel groups (") and h.endswith(" s)") for h in heard)
    assert heard[-1].startswith("net: 3 channel groups analysed in ") and np.isfinite(graph.base_macs)


def test_a_policy_is_rebuilt_with_the_groups_its_search_probed_at_its_own_max_ratio():
    """b.0 breaks only with more than 62% of its channels gone: searched at max_ratio 0.5 it is searched,
    and `apply` (which analyses the model again) must probe as deep as the search did to find it too."""
    from awkward_nets import NeedsTwelveNet

    model = NeedsTwelveNet().eval()
    assert [f.name for f in build_graph(model, (1, 28, 28)).frozen] == ["b.0"]  # at the default 0.8
    assert not build_graph(model, (1, 28, 28), deepest=0.5).frozen
    train = _images()
    result = autoprune.search(model, "70%FLOPs", train=train, heldout=8, agent="uniform", evals=1, max_ratio=0.5,
                              calib_batches=1, device="cpu")
    assert result.policy.ratios["b.0"] > 0
    again = autoprune.apply(model, result.policy, train=train)
    assert count_macs_params(again, torch.randn(1, 1, 28, 28))[0] == result.macs
