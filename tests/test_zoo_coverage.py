"""Every torchvision classification family: pruned within budget and scored, or refused in one line.

One representative per family, random weights, small inputs (64x64; Inception v3 96x96), a held-out
split of 8 images and one calibration batch: graph analysis, the uniform policy at 50% FLOPs,
physical pruning and scoring, with the analytic MACs checked against Torch-Pruning's counter on
the pruned model (subclasses of its counted modules, as ConvNeXt's LayerNorm2d, counted as their base). docs/design.md's "Models" table is this matrix (checked below). Deselect with
`-m "not zoo"` (about two minutes on two cores).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from autoprune.probe import count_macs_params
from autoprune.search_job import SearchConfig, build_setup
from conftest import assert_refused_in_one_line

pytestmark = pytest.mark.zoo

# family -> (representative, None if it prunes, else the words its one-line refusal must hold)
FAMILIES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "resnet": ("resnet18", None),
    "resnext": ("resnext50_32x4d", None),
    "wide_resnet": ("wide_resnet50_2", None),
    "regnet (x)": ("regnet_x_400mf", None),
    "regnet (y)": ("regnet_y_400mf", None),
    "vgg": ("vgg11_bn", None),
    "alexnet": ("alexnet", None),
    "mobilenet_v2": ("mobilenet_v2", None),
    "mobilenet_v3": ("mobilenet_v3_small", None),
    "efficientnet": ("efficientnet_b0", None),
    "efficientnet_v2": ("efficientnet_v2_s", None),
    "mnasnet": ("mnasnet0_5", None),
    "squeezenet": ("squeezenet1_1", None),
    "densenet": ("densenet121", None),
    "googlenet": ("googlenet", None),
    "inception": ("inception_v3", None),
    "convnext": ("convnext_tiny", None),
    "shufflenet_v2": ("shufflenet_v2_x0_5", ("channel shuffle", "Torch-Pruning", "not supported")),
    "vit": ("vit_b_16", ("vision transformers are not supported", "MultiheadAttention")),
    "swin": ("swin_t", ("vision transformers are not supported", "ShiftedWindowAttention")),
    "maxvit": ("maxvit_t", ("vision transformers are not supported", "Attention")),
}
PRUNES = [f for f, (_, refusal) in FAMILIES.items() if refusal is None]
REFUSED = [f for f, (_, refusal) in FAMILIES.items() if refusal is not None]


def _data(model: str) -> str:
    return "zoo_data:images96" if model.startswith("inception") else "zoo_data:images64"


@pytest.mark.parametrize("family", PRUNES)
def test_family_prunes_within_budget_and_scores(family):
    model = FAMILIES[family][0]
    cfg = SearchConfig(model=model, budgets=["50%FLOPs"], data=_data(model), weights="random", agent="uniform",
                       evals=1, heldout=8, calib_batches=1, device="cpu")
    setup = build_setup(cfg)
    problem = setup.problem
    setup.searcher.search(problem, 1, seed=0)
    best = problem.best
    assert best is not None and 0.0 <= best.accuracy <= 1.0
    base = problem.base_costs["macs"]
    assert best.costs["macs"] <= 0.5 * base
    assert best.costs["macs"] >= 0.40 * base, f"{model}: the grid left {best.costs['macs'] / base:.1%}"
    pruned = problem.pruned_model(best.ratios).cpu().eval()
    example = torch.randn(1, *problem.space.graph.input_shape)
    macs, params = count_macs_params(pruned, example)  # tp's counter, subclasses (LayerNorm2d) as their base
    assert macs == best.costs["macs"] and params == best.costs["params"], model
    with torch.no_grad():
        assert pruned(example).shape == (1, 10)


@pytest.mark.parametrize("family", REFUSED)
def test_family_is_refused_in_one_line_leaving_nothing(family, tmp_path, capsys, monkeypatch):
    model, words = FAMILIES[family]
    assert_refused_in_one_line(model, _data(model), words, tmp_path, capsys, monkeypatch)


def test_docs_models_table_is_this_matrix():
    text = (Path(__file__).parents[1] / "docs" / "design.md").read_text()
    rows = re.findall(r"^\s*\| ([a-z0-9_ ()]+?) \| `([a-z0-9_]+)` \| (prunes|refused) \|", text, flags=re.M)
    assert {f: (m, status) for f, m, status in rows} == {
        f: (m, "prunes" if refusal is None else "refused") for f, (m, refusal) in FAMILIES.items()}
