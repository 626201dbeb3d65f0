"""Segmentation models (dict outputs) searched with the user's evaluate function, from Python and the CLI.

Part of the model matrix (marker `zoo`): random weights, 64x64 images, one BN-calibration batch, the
uniform policy at 50% FLOPs; the analytic MACs are checked against Torch-Pruning's counter on the
returned pruned model, and the pruned model still returns its {"out": per-pixel classes} map.
"""
from __future__ import annotations

import json

import pytest
import torch

import autoprune
from autoprune.probe import count_macs_params
from conftest import cli_main
from seg_zoo import CLASSES, SEGMENTATION, pixel_accuracy, segmentation_model, squares

pytestmark = pytest.mark.zoo


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model_prunes_within_budget_from_python(name):
    torch.manual_seed(0)
    model = segmentation_model(name).eval()
    result = autoprune.search(model, "50%FLOPs", train=squares(16), evaluate=pixel_accuracy(squares(4, seed=1)),
                              agent="uniform", evals=1, calib_batches=1, device="cpu")
    assert result.macs <= 0.5 * result.summary["base_macs"]
    assert result.macs >= 0.35 * result.summary["base_macs"], result.macs / result.summary["base_macs"]
    assert 0.0 <= result.heldout_accuracy <= 1.0 and result.summary["scored_by"] == "evaluate function"
    x = torch.randn(1, 3, 64, 64)
    assert count_macs_params(result.pruned_model.cpu().eval(), x) == (result.macs, result.params)
    with torch.no_grad():
        assert result.pruned_model(x)["out"].shape == (1, CLASSES, 64, 64)


def test_segmentation_model_prunes_from_the_cli_through_a_data_factory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, _, err = cli_main(["search", "seg_zoo:lraspp_mobilenet_v3_large", "--budget", "50%FLOPs",
                             "--data", "seg_zoo:shapes64", "--weights", "random", "--agent", "uniform",
                             "--calib-batches", "1", "--device", "cpu", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    policy = json.loads((out / "policy.json").read_text())
    assert policy["macs"] <= 0.5 * policy["base_macs"] and policy["scored_by"] == "evaluate function"
    pruned = torch.load(out / "pruned.pt", weights_only=False)
    assert count_macs_params(pruned, torch.randn(1, 3, 64, 64))[0] == policy["macs"]


def test_a_dict_output_without_an_evaluate_function_is_refused_in_one_line():
    model = segmentation_model("lraspp_mobilenet_v3_large").eval()
    labelled = torch.utils.data.TensorDataset(torch.randn(72, 3, 64, 64), torch.randint(0, CLASSES, (72,)))
    with pytest.raises(autoprune.UserError, match="the model returns OrderedDict, not \\(batch, classes\\) logits: .* evaluate"):
        autoprune.search(model, "50%FLOPs", train=labelled, heldout=8, agent="uniform", evals=1, calib_batches=1,
                         device="cpu")
