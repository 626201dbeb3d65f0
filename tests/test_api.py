"""The Python API: a model object searched on the user's DataLoaders, with the user's evaluate function, and
on a registered dataset; the same result as the CLI; bad input as `autoprune.UserError` with the CLI's line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoprune
from autoprune.data import load_data
from autoprune.evaluate import accuracy
from autoprune.zoo import build_model, shipped_weights

from conftest import cli_main, needs_fashion

pytestmark = needs_fashion
FAST = dict(agent="random", evals=3, calib_batches=2, seed=1)  # seconds per search on the 2,000-image subset


@pytest.fixture(scope="module")
def splits(fmnist_subset):
    """The subset as a user would hold it: plain TensorDatasets (not autoprune's own tensor splits)."""
    data = load_data(fmnist_subset, heldout_size=300)
    as_ds = lambda s: TensorDataset(s.images, s.labels)  # noqa: E731
    return as_ds(data.train), as_ds(data.heldout), as_ds(data.test)


def shipped_resnet20() -> torch.nn.Module:
    return build_model("resnet20", num_classes=10, in_channels=1, dataset="fashion-mnist").model


def test_search_a_module_on_user_dataloaders(splits, tmp_path):
    train, heldout, test = splits
    model = shipped_resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = autoprune.search(model, "50%FLOPs", train=DataLoader(train, batch_size=32, shuffle=True),
                              heldout=DataLoader(heldout, batch_size=100), test=test, **FAST)
    assert result.macs <= 0.5 * result.summary["base_macs"] * 1.0001
    # the pruned model really is what was scored: our own top-1 on the held-out split gives the same number
    assert accuracy(result.pruned_model, heldout, torch.device("cpu"))["top1"] == pytest.approx(result.heldout_accuracy)
    assert result.heldout_accuracy > 0.5 and result.test_accuracy > 0.5  # shipped weights: far above chance
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    names = dict(model.named_modules())
    assert result.tp_pruning_ratio_dict and set(result.tp_pruning_ratio_dict) <= set(names)
    assert result.nni_config_list and all(set(c["op_names"]) <= set(names) for c in result.nni_config_list)
    assert len(result.study.trials) == result.summary["evaluations"]
    saved = result.save(tmp_path / "mine")
    assert json.loads((saved / "policy.json").read_text())["ratios"] == result.policy.ratios
    assert (saved / "report.html").exists() and (saved / "base_model.pt").exists()
    with pytest.raises(autoprune.UserError, match="already exists and is not empty"):
        result.save(saved)
    # apply rebuilds the same pruned model from the saved folder and the user's training data
    again = autoprune.apply(model, saved, train=train)
    x = test.tensors[0][:16]
    assert torch.allclose(again.eval()(x), result.pruned_model.eval()(x), atol=1e-5)
    # a hand-made Policy (ratios only, no policy.json entries) gets its input shape from the data
    by_hand = autoprune.apply(model, autoprune.Policy(ratios=dict(result.policy.ratios)), train=train)
    assert [p.shape for p in by_hand.parameters()] == [p.shape for p in result.pruned_model.parameters()]


def test_a_fine_tune_from_plain_starts_below_the_refitted_model(splits):
    """finetune_start="plain" on objects in memory: the fine-tune starts from the kept channels' own weights,
    which test below the refitted model the search returned (shipped weights, 50% FLOPs), and says so."""
    train, heldout, test = splits
    result = autoprune.search(shipped_resnet20(), "50%FLOPs", train=train, heldout=heldout, test=test,
                              finetune_epochs=1, finetune_start="plain", **FAST)
    summary = result.run_summary
    assert summary.reconstruction and summary.finetune_start == "plain"
    assert summary.test_accuracy_before_finetune < result.test_accuracy - 0.02
    assert summary.finetuned_test_accuracy > summary.test_accuracy_before_finetune


def test_search_with_the_users_evaluate_function(splits):
    train, heldout, _ = splits
    calls = []

    def my_metric(model: torch.nn.Module) -> float:  # e.g. a task metric the user computes their own way
        calls.append(1)
        with torch.no_grad():
            pred = model(heldout.tensors[0][:200]).argmax(1)
        return (pred == heldout.tensors[1][:200]).float().mean().item()

    result = autoprune.search(shipped_resnet20(), "50%FLOPs", train=train, evaluate=my_metric, **FAST)
    assert result.summary["scored_by"] == "evaluate function"
    assert result.heldout_accuracy == pytest.approx(my_metric(result.pruned_model.eval()))
    assert len(calls) >= 1 + FAST["evals"]  # the unpruned model and every candidate went through it
    assert result.test_accuracy is None  # no test split given: nothing invented

    def broken(model):
        raise RuntimeError("metric server down")

    with pytest.raises(autoprune.UserError, match="your evaluate function failed: RuntimeError: metric server down") \
            as err:
        autoprune.search(shipped_resnet20(), "50%FLOPs", train=train, evaluate=broken, **FAST)
    assert isinstance(err.value.__cause__, RuntimeError)  # chained: a debugger reaches the user's frame
    with pytest.raises(autoprune.UserError, match=r"returned 2.0: scores must lie in \[0, 1\]"):
        autoprune.search(shipped_resnet20(), "50%FLOPs", train=train, evaluate=lambda m: 2.0, **FAST)


def test_registered_dataset_gives_the_clis_result(fmnist_subset, tmp_path, capsys, monkeypatch):
    weights = str(shipped_weights("resnet20", "fashion-mnist"))  # the subset is a path: name the shipped file
    code, _, err = cli_main(["search", "resnet20", "--budget", "50%FLOPs", "--data", fmnist_subset, "--heldout", "300",
                             "--weights", weights, "--agent", "random", "--evals", "3", "--calib-batches", "2",
                             "--seed", "1", "--out", str(tmp_path / "cli")], capsys, monkeypatch)
    assert code == 0, err
    cli = json.loads((tmp_path / "cli" / "policy.json").read_text())
    by_name = autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, heldout=300, weights=weights, **FAST)
    by_object = autoprune.search(shipped_resnet20(), "50%FLOPs", data=fmnist_subset, heldout=300, **FAST)
    for result in (by_name, by_object):
        assert result.policy.ratios == cli["ratios"]
        assert result.heldout_accuracy == cli["heldout_accuracy"] and result.test_accuracy == cli["test_accuracy"]


def test_bad_input_is_a_user_error_with_the_clis_line(splits, tmp_path, capsys, monkeypatch):
    train, _, _ = splits
    code, _, err = cli_main(["search", "resnet20", "--budget", "50%FOO", "--out", str(tmp_path / "r")], capsys,
                            monkeypatch)
    cli_line = re.sub(r"^error:\s*", "", " ".join(err.split()))
    assert code == 2
    with pytest.raises(autoprune.UserError) as exc:
        autoprune.search(shipped_resnet20(), "50%FOO", train=train, heldout=300, **FAST)
    assert " ".join(str(exc.value).split()) == cli_line
    for kwargs, message in (({"train": train, "data": "fashion-mnist"}, "not both"),
                            ({}, "give data="),
                            ({"train": [1, 2, 3]}, "must be a torch Dataset or DataLoader"),
                            ({"train": train, "max_ratoi": 0.5}, "unknown search option max_ratoi")):
        with pytest.raises(autoprune.UserError, match=message):
            autoprune.search(shipped_resnet20(), "50%FLOPs", **kwargs)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's own lines, on an ImageFolder of Fashion-MNIST PNGs (only `evals` made smaller)."""
    from PIL import Image

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    data = load_data("fashion-mnist", heldout_size=1)
    for i in range(700):
        folder = tmp_path / "images" / "train" / str(int(data.train.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        image = (data.train.images[i, 0] * 0.3530 + 0.2860).clamp(0, 1).mul(255).byte().numpy()
        Image.fromarray(image).save(folder / f"{i}.png")
    torch.save(shipped_resnet20(), tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("evals=60", "evals=2"), "README.md", "exec"), {})
    pruned = torch.load(tmp_path / "pruned.pt", weights_only=False)
    assert pruned(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    saved = json.loads((tmp_path / "runs" / "mine" / "policy.json").read_text())
    assert saved["macs"] <= 0.5 * saved["base_macs"] * 1.0001


def test_a_temporary_run_folder_goes_with_its_result_and_verbose_prints_progress(fmnist_subset, tmp_path, capsys):
    import gc
    import logging

    result = autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, heldout=300, weights="random",
                              reconstruct=False, verbose=True, **FAST)
    err = capsys.readouterr().err
    assert "autoprune: searching (random) | 3/3 evaluations | best held-out" in err  # verbose: the progress lines
    folder = result.folder
    assert (folder / "policy.json").is_file() and result.verified is None  # no latency budget: nothing to verify
    kept = result.save(tmp_path / "kept")
    del result
    gc.collect()
    assert not folder.exists() and (kept / "policy.json").is_file()
    assert not logging.getLogger("autoprune").handlers  # verbose's handler lasted only for the call
    autoprune.search("resnet20", "50%FLOPs", data=fmnist_subset, heldout=300, weights="random", reconstruct=False,
                     **FAST)
    assert "evaluations" not in capsys.readouterr().err  # quiet by default


def test_a_failed_latency_check_is_verified_false_and_a_warning(monkeypatch, tmp_path):
    from autoprune import api

    class Setup:
        policy = pruned = None

        class bundle:
            model = None

    monkeypatch.setattr(api, "prepare_search", lambda cfg, inputs=None: (tmp_path, Setup()))
    monkeypatch.setattr(api, "execute_search", lambda out, setup, **kw: {
        "latency_verification": {"verified": False, "checked": []}})
    cfg = api.SearchConfig(model="resnet20", budgets=["60%latency"], out=tmp_path)
    with pytest.warns(UserWarning, match="verified is False"):
        result = api._run(cfg, None, verbose=False)
    assert result.verified is False
