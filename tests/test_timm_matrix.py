"""timm CNNs, one or two per family: pruned within budget, or refused in one line.

As the torchvision matrix (tests/test_zoo_coverage.py): random weights, 64x64 images, a held-out
split of 8 and one calibration batch, the uniform policy at 50% FLOPs, physical pruning and
scoring, the analytic MACs and params checked against Torch-Pruning's counter (subclasses of its
counted modules counted as their base: timm's ScaledStdConv2d, Linear) on the pruned model. Groups
whose pruning breaks the model are left whole; the README's timm table lists how many, and is this
matrix (checked below; `python tests/test_timm_matrix.py` prints it afresh). Marker `zoo`.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from autoprune.probe import count_macs_params
from autoprune.search_job import SearchConfig, build_setup
from conftest import assert_refused_in_one_line

pytestmark = pytest.mark.zoo
README = Path(__file__).parents[1] / "README.md"

# family -> (timm model, None if it prunes, else the words its one-line refusal must hold)
FAMILIES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "ResNet": ("resnet18", None),
    "ResNet-D": ("resnet26d", None),
    "ResNeSt": ("resnest14d", None),
    "Res2Net": ("res2net50_14w_8s", None),
    "RegNetX": ("regnetx_002", None),
    "RegNetY": ("regnety_002", None),
    "EfficientNet": ("efficientnet_b0", None),
    "MixNet": ("mixnet_s", None),
    "GhostNet": ("ghostnet_100", None),
    "ReXNet": ("rexnet_100", None),
    "DLA": ("dla34", None),
    "CSPNet": ("cspresnet50", None),
    "CSP-DarkNet": ("cspdarknet53", None),
    "CS3-DarkNet": ("cs3darknet_s", ("concatenates sliced tensors", "Torch-Pruning", "not supported")),
    "HRNet": ("hrnet_w18_small", None),
    "DPN": ("dpn68", ("concatenates sliced tensors", "Torch-Pruning", "not supported")),
    "RepVGG": ("repvgg_a0", None),
    "ConvNeXt": ("convnext_atto", None),
    "NF-ResNet": ("nf_resnet26", None),
    "NFNet": ("dm_nfnet_f0", None),
    "VoVNet": ("ese_vovnet19b_dw", None),
    "SelecSLS": ("selecsls42b", None),
    "LCNet": ("lcnet_050", None),
    "Xception": ("xception41", None),
    "ResNetV2": ("resnetv2_50", None),
    "TinyNet": ("tinynet_e", None),
    "GENet": ("gernet_s", None),
    "MobileNetV3": ("mobilenetv3_small_100", None),
    "MobileViT": ("mobilevit_xxs", None),
    "MnasNet": ("mnasnet_small", None),
    "FBNet": ("fbnetc_100", None),
    "DenseNet": ("densenet121", None),
}
# the budget each family is searched at: 50% FLOPs, except where the groups left whole cannot reach it
# (the least reachable: MixNet 92.4%, its mixed-kernel splits; GhostNet 64.1%, its ghost modules' slices)
BUDGETS = {"MixNet": "95%FLOPs", "GhostNet": "70%FLOPs"}
PRUNES = [f for f, (_, refusal) in FAMILIES.items() if refusal is None]
REFUSED = [f for f, (_, refusal) in FAMILIES.items() if refusal is not None]
ROW = re.compile(r"^\| ([A-Za-z0-9 -]+?) \| `([a-z0-9_]+)` \| (prunes|refused)[^|]* \| ([^|]*?) \|$", flags=re.M)


def _setup(model: str, budget: str = "50%FLOPs"):
    cfg = SearchConfig(model=f"timm_zoo:{model}", budgets=[budget], data="zoo_data:images64", weights="random",
                       agent="uniform", evals=1, heldout=8, calib_batches=1, device="cpu")
    return build_setup(cfg)


def _frozen_cell(graph) -> str:
    return f"{len(graph.frozen)} of {len(graph.frozen) + len(graph.groups)}" if graph.frozen else "none"


def readme_rows() -> dict[str, tuple[str, str, str]]:
    return {f: (m, status, frozen) for f, m, status, frozen in ROW.findall(README.read_text())}


@pytest.mark.parametrize("family", PRUNES)
def test_timm_family_prunes_within_budget_and_scores(family):
    model = FAMILIES[family][0]
    budget = BUDGETS.get(family, "50%FLOPs")
    setup = _setup(model, budget)
    problem = setup.problem
    setup.searcher.search(problem, 1, seed=0)
    best = problem.best
    assert best is not None and 0.0 <= best.accuracy <= 1.0
    base, share = problem.space.graph.base_macs, float(budget.split("%")[0]) / 100  # budgets are of the unpruned model
    assert (share - 0.15) * base <= best.costs["macs"] <= share * base, f"{model}: {best.costs['macs'] / base:.1%}"
    pruned = problem.pruned_model(best.ratios).cpu().eval()
    example = torch.randn(1, 3, 64, 64)
    assert count_macs_params(pruned, example) == (best.costs["macs"], best.costs["params"]), model
    with torch.no_grad():
        assert pruned(example).shape == (1, 10)
    graph = problem.space.graph
    assert readme_rows().get(family, (None, None, None))[2] == _frozen_cell(graph), \
        f"README's timm table: {family} should say {_frozen_cell(graph)} groups left whole"


@pytest.mark.parametrize("family", REFUSED)
def test_timm_family_is_refused_in_one_line_leaving_nothing(family, tmp_path, capsys, monkeypatch):
    model, words = FAMILIES[family]
    assert_refused_in_one_line(f"timm_zoo:{model}", "zoo_data:images64", words, tmp_path, capsys, monkeypatch)


def test_readme_timm_table_is_this_matrix():
    rows = readme_rows()
    assert {f: (m, s) for f, (m, s, _) in rows.items()} == {
        f: (m, "prunes" if refusal is None else "refused") for f, (m, refusal) in FAMILIES.items()}
    assert len(REFUSED) <= 3 and len(FAMILIES) >= 30


if __name__ == "__main__":  # print the README's table from a fresh run of the matrix
    sys.path.insert(0, str(Path(__file__).parent))
    print("| family | timm model | result | groups left whole |\n|---|---|---|---|")
    for fam, (name, refusal) in FAMILIES.items():
        try:
            cell = "—" if refusal else _frozen_cell(_setup(name, BUDGETS.get(fam, "50%FLOPs")).problem.space.graph)
        except Exception as exc:  # noqa: BLE001 -- a table row, not a test: show what happened
            cell = f"ERROR {exc}"
        result = "refused" if refusal else "prunes" + (f" (at {BUDGETS[fam]})" if fam in BUDGETS else "")
        print(f"| {fam} | `{name}` | {result} | {cell} |", flush=True)
