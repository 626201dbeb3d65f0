"""No untrained search by accident: a torchvision model without --weights takes torchvision's DEFAULT weights on
ImageNet data and is refused in one line on any other; a base model that scores near chance is warned about.

Nothing here downloads: torch hub's download is replaced by a stub (that fails, or writes a local state_dict).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

import autoprune
from autoprune.errors import UserError
from autoprune.zoo import build_model, check_weights, shipped_weights

from conftest import cli_main, needs_fashion

WEIGHT_OPTIONS = ("--weights FILE", "--weights IMAGENET1K_V2 with --data imagenet:DIR",
                  "`autoprune train resnet50 --out resnet50.pt`", "--weights random")
FAST = dict(agent="uniform", evals=1, calib_batches=2, heldout=1000, seed=0)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """torch hub's cache in a fresh folder, and any download attempt a failure of the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, *a, **k: pytest.fail(f"a test tried to download {url}"))


def _one_line_error(code: int, err: str) -> str:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_cli_refuses_a_torchvision_model_without_weights_in_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, _, err = cli_main(["search", "--budget", "50%FLOPs", "resnet50", "--out", str(out)], capsys, monkeypatch)
    line = _one_line_error(code, err)
    assert "no trained weights for resnet50 on fashion-mnist" in line
    for option in WEIGHT_OPTIONS:
        assert option in line, (option, line)
    assert "min an epoch" in line  # what training would cost here
    assert not out.exists()


def test_the_refusal_comes_before_any_data_or_model_loads(monkeypatch):
    """The Python API (and Ray workers) go through build_setup: refused there from the names alone."""
    import autoprune.job_setup as job

    monkeypatch.setattr(job, "load_data", lambda *a, **k: pytest.fail("data loaded before the weights check"))
    monkeypatch.setattr(job, "build_model", lambda *a, **k: pytest.fail("model built before the weights check"))
    with pytest.raises(UserError, match=r"no trained weights for resnet50 on cifar10: .*--weights random"):
        autoprune.search("resnet50", "50%FLOPs", data="cifar10", evals=1)
    with pytest.raises(UserError, match=r"no trained weights for resnet50 on folder:/x"):
        check_weights("resnet50", "folder:/x", None)  # an image folder is not ImageNet: no DEFAULT for it


def test_random_weights_and_checkpoints_are_accepted():
    check_weights("resnet50", "fashion-mnist", "random")
    check_weights("resnet50", "fashion-mnist", "resnet50.pt")
    check_weights("resnet50", "imagenet:/data/imagenet", None)
    bundle = build_model("resnet50", num_classes=10, in_channels=1, dataset="fashion-mnist", weights="random")
    assert bundle.weights == "random" and bundle.in_channels == 3 and bundle.model.fc.out_features == 10
    with pytest.raises(UserError, match="no trained weights for resnet50 on fashion-mnist"):
        build_model("resnet50", num_classes=10, in_channels=1, dataset="fashion-mnist")


def test_imagenet_data_without_weights_takes_torchvisions_default(monkeypatch):
    asked = []
    real = torchvision.models.get_model

    def get_model(name, **kwargs):  # the architecture as torchvision builds it, without its download
        asked.append((name, kwargs.get("weights")))
        return real(name, num_classes=1000)

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    bundle = build_model("resnet50", num_classes=1000, in_channels=3, dataset="imagenet:/data/imagenet")
    assert asked == [("resnet50", torchvision.models.ResNet50_Weights.DEFAULT)]
    assert bundle.weights == "ResNet50_Weights.IMAGENET1K_V2"


def test_default_weights_are_downloaded_once_into_torch_hubs_cache(monkeypatch):
    """torchvision's own loading path end to end, with the download writing a local state_dict instead."""
    reference = torchvision.models.get_model("squeezenet1_1", num_classes=1000).state_dict()
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append((url, Path(dst)))
        torch.save(reference, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    for _ in range(2):
        bundle = build_model("squeezenet1_1", num_classes=1000, in_channels=3, dataset="imagenet:/data/imagenet")
        state = bundle.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items())
    expected = Path(torch.hub.get_dir()) / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert fetched == [(torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url, expected)]  # once, then cached
    assert bundle.weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"


def _fake_imagenet(root: Path) -> Path:
    """1,000 class folders of one tiny image each, for train and val: ImageNet's shape, not its pictures."""
    from PIL import Image

    image = Image.new("RGB", (8, 8), (120, 60, 30))
    for part in ("train", "val"):
        for c in range(1000):
            folder = root / part / f"n{c:08d}"
            folder.mkdir(parents=True)
            image.save(folder / "0.png")
    return root


def test_offline_download_is_one_line_naming_the_file_and_folder(tmp_path, capsys, monkeypatch):
    def offline(url, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = _fake_imagenet(tmp_path / "imagenet")
    out = tmp_path / "run"
    code, _, err = cli_main(["search", "--budget", "50%FLOPs", "resnet50", "--data", f"imagenet:{data}",
                             "--heldout", "500", "--out", str(out)], capsys, monkeypatch)
    line = _one_line_error(code, err)
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    assert f"put resnet50-11ad3fa6.pth (from https://download.pytorch.org/models/resnet50-11ad3fa6.pth) in {folder}" \
        in line, line
    assert "cannot download torchvision's ResNet50_Weights.IMAGENET1K_V2" in line and "Name or service" in line
    assert not out.exists()


@needs_fashion
def test_near_chance_base_model_is_warned_about_in_the_api_log(fmnist_subset, caplog):
    with caplog.at_level(logging.WARNING, logger="autoprune.search_job"):
        result = autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, weights="random", **FAST)
    base = result.summary["base_heldout_accuracy"]
    assert abs(base - 0.1) <= 0.02  # random weights: at chance on ten classes
    warnings = [r.getMessage() for r in caplog.records if "look untrained" in r.getMessage()]
    assert warnings == [f"the base model scores {100 * base:.1f}% on held-out, chance is 10.0%: its weights look "
                        "untrained; the search will rank noise"]


@needs_fashion
def test_trained_base_model_is_not_warned_about(fmnist_subset, caplog):
    weights = str(shipped_weights("resnet20", "fashion-mnist"))  # the subset is a path: name the shipped file
    with caplog.at_level(logging.WARNING, logger="autoprune.search_job"):
        result = autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, weights=weights, **FAST)
    assert result.summary["base_heldout_accuracy"] > 0.8
    assert not [r for r in caplog.records if "look untrained" in r.getMessage()]


@needs_fashion
def test_near_chance_warning_reaches_the_clis_output(fmnist_subset, tmp_path):
    script = shutil.which("autoprune", path=str(Path(sys.executable).parent)) or "autoprune"
    proc = subprocess.run([script, "search", "resnet20", "--budget", "50%FLOPs", "--weights", "random", "--data",
                           fmnist_subset, "--agent", "uniform", "--evals", "1", "--calib-batches", "2", "--heldout",
                           "1000", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "look untrained" in line]
    assert len(warned) == 1 and "chance is 10.0%" in warned[0] and warned[0].startswith("WARNING"), proc.stderr
