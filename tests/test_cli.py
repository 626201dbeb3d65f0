"""The `autoprune` command line end to end: search, resume, apply, listings, and one-line refusals.

Runs on a small subset of the installed Fashion-MNIST (same idx format, read by the real loader
through `--data fashion-mnist:ROOT`) so that the test-set passes of a search take seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from typer.testing import CliRunner

from autoprune.cli import app
from autoprune.data import _read_idx
from autoprune.evaluate import accuracy
from autoprune.rebuild import load_run_model
from autoprune.run_summary import FINETUNE_KEYS, RunSummary
from autoprune.zoo import build_model

from conftest import FASHION, needs_fashion, write_idx
from conftest import cli_main as _main

N_TRAIN, N_TEST = 2000, 500

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data subset, checkpoints, a user model module; everything the commands below need."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "fmnist"
    data.mkdir()
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(data / name, _read_idx(FASHION / name)[:n])
    torch.manual_seed(0)
    ckpt = root / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1, weights="random").model.state_dict(), ckpt)
    ckpt56 = root / "resnet56.pt"
    torch.save(build_model("resnet56", num_classes=10, in_channels=1, weights="random").model.state_dict(), ckpt56)
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"\x00\x13not a checkpoint\xff" * 100)
    mods = root / "usermods"
    mods.mkdir()
    (mods / "autoprune_untraceable_net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self, num_classes=10, in_channels=1):
                super().__init__()
                self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
                self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
                self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
                self.fc = nn.Linear(16, num_classes)

            def forward(self, x):
                x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
                # leaves autograd through numpy: fine in inference, nothing for a tracer to follow
                x = torch.from_numpy(x.numpy())
                return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


        def factory(num_classes, in_channels):
            return Net(num_classes, in_channels)
    """))
    return {"root": root, "data": f"fashion-mnist:{data}", "ckpt": ckpt, "ckpt56": ckpt56,
            "garbage": garbage, "mods": mods}


def _search_args(env, out: Path, *extra: str) -> list[str]:
    return ["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(env["ckpt"]), "--evals", "3",
            "--heldout", "300", "--calib-batches", "2", "--data", env["data"], "--out", str(out), *extra]


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _assert_one_line_error(code: int, err: str, out: Path | None, *words: str) -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    assert lines[-1].startswith("error:"), err
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    if out is not None:
        assert not out.exists(), f"{out} was created"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"


def _snapshot(folder: Path) -> dict[str, tuple[int, str, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(env):
    out = env["root"] / "runs" / "run"
    result = _invoke(*_search_args(env, out))
    assert result.exit_code == 0, result.output
    return out


def test_search_writes_policy_and_exports(run, env):
    policy = json.loads((run / "policy.json").read_text())
    for key in ("ratios", "macs", "base_macs", "params", "base_params", "heldout_accuracy",
                "base_heldout_accuracy", "test_accuracy", "base_test_accuracy", "agent", "seed", "evaluations"):
        assert key in policy, key
    assert policy["agent"] == "tpe" and policy["seed"] == 0 and policy["model"] == "resnet20"
    assert policy["evaluations"] == 3 and policy["cached_evaluations"] == 0
    assert policy["weights"] == str(env["ckpt"])
    assert 0.495 * policy["base_macs"] <= policy["macs"] <= 0.5 * policy["base_macs"]
    assert policy["params"] < policy["base_params"]
    for key in ("heldout_accuracy", "base_heldout_accuracy", "test_accuracy", "base_test_accuracy"):
        assert 0.0 <= policy[key] <= 1.0
    assert policy["heldout_images"] == 300
    ratios = policy["ratios"]
    assert ratios and all(0.0 <= r <= 0.8 for r in ratios.values())
    assert set(ratios) == set(policy["kept_channels"])
    assert "conv1" not in ratios and "fc" not in ratios
    for name in ("nni_config_list.json", "tp_pruning_ratio_dict.json", "pruned.pt", "study.db"):
        assert (run / name).is_file(), name
    pruned = torch.load(run / "pruned.pt", weights_only=False)
    macs, params = tp.utils.count_ops_and_params(pruned, torch.randn(1, 1, 28, 28))
    assert macs == policy["macs"] and params == policy["params"]
    tp_dict = json.loads((run / "tp_pruning_ratio_dict.json").read_text())
    assert set(tp_dict) <= set(ratios) and tp_dict


def test_rerun_without_resume_is_refused_by_console_script(run, env):
    before = _snapshot(run)
    script = shutil.which("autoprune", path=str(Path(sys.executable).parent)) or "autoprune"
    environ = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(env["mods"]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([script, *_search_args(env, run)], capture_output=True, text=True, env=environ,
                          timeout=300)
    _assert_one_line_error(proc.returncode, proc.stderr, None, "--resume")
    assert _snapshot(run) == before


def test_resume_reuses_every_evaluation(run, env):
    # a copy under the same folder name (the study is named after it), so the original stays as it was
    copy = env["root"] / "resumed" / run.name
    shutil.copytree(run, copy)
    first = json.loads((run / "policy.json").read_text())
    result = _invoke(*_search_args(env, copy, "--resume"))
    assert result.exit_code == 0, result.output
    policy = json.loads((copy / "policy.json").read_text())
    assert policy["evaluations"] == 3 and policy["cached_evaluations"] == 3
    assert policy["ratios"] == first["ratios"]
    assert policy["heldout_accuracy"] == first["heldout_accuracy"]
    assert policy["macs"] == first["macs"]


def test_apply_rebuilds_the_pruned_model(run, env):
    out = env["root"] / "applied" / "p.pt"
    result = _invoke("apply", str(run / "policy.json"), "--out", str(out))
    assert result.exit_code == 0, result.output
    policy = json.loads((run / "policy.json").read_text())
    rebuilt = torch.load(out, weights_only=False)
    macs, params = tp.utils.count_ops_and_params(rebuilt, torch.randn(1, 1, 28, 28))
    assert macs == policy["macs"] and params == policy["params"]
    # same base weights, criterion and calibration batches: the very model the search wrote (refitted by least
    # squares by default, which the rebuild repeats up to float rounding: ~1e-7 here)
    searched = torch.load(run / "pruned.pt", weights_only=False)
    a, b = rebuilt.state_dict(), searched.state_dict()
    assert a.keys() == b.keys() and policy["reconstruction"]
    for k in a:
        if k.endswith("weight") and a[k].dim() == 4:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), searched.eval()(x), atol=1e-4)
    # and refuses to overwrite
    again = CliRunner().invoke(app, ["apply", str(run / "policy.json"), "--out", str(out)])
    assert again.exit_code != 0


def test_prune_stem_and_ignore_reach_the_policy_and_apply(env):
    """--prune-stem frees the stem's residual group, --ignore freezes one; `apply` rebuilds the same groups."""
    out = env["root"] / "runs" / "stem"
    result = _invoke(*_search_args(env, out, "--agent", "uniform", "--prune-stem", "--ignore", "layer2.1.conv1"))
    assert result.exit_code == 0, result.output
    policy = json.loads((out / "policy.json").read_text())
    assert policy["prune_stem"] is True and policy["ignore"] == ["layer2.1.conv1"]
    # default resnet20: 11 groups; the stem's group comes in, layer2.1.conv1's goes out
    assert len(policy["ratios"]) == 11 and "layer2.1.conv1" not in policy["ratios"]
    assert policy["ratios"]["conv1"] > 0  # the stem's group, with every stage-1 residual add
    applied = env["root"] / "applied" / "stem.pt"
    assert _invoke("apply", str(out / "policy.json"), "--out", str(applied)).exit_code == 0
    rebuilt = torch.load(applied, weights_only=False)
    assert rebuilt.conv1.out_channels < 16 and rebuilt.layer2[1].conv1.out_channels == 32
    macs, _ = tp.utils.count_ops_and_params(rebuilt, torch.randn(1, 1, 28, 28))
    assert macs == policy["macs"]


def test_data_aware_criterion_and_stem_cap_reach_the_policy_and_apply(env):
    """--criterion taylor writes the run's channel orders, so `apply` rebuilds the model without the batches."""
    out = env["root"] / "runs" / "taylor"
    result = _invoke(*_search_args(env, out, "--agent", "random", "--criterion", "taylor", "--stem-max-ratio", "0.25"))
    assert result.exit_code == 0, result.output
    policy = json.loads((out / "policy.json").read_text())
    assert policy["criterion"] == "taylor" and policy["space"]["stem_max_ratio"] == 0.25
    assert 0 < policy["ratios"]["conv1"] <= 0.25 and len(policy["channel_orders"]) == len(policy["ratios"])
    applied = env["root"] / "applied" / "taylor.pt"
    assert _invoke("apply", str(out / "policy.json"), "--out", str(applied)).exit_code == 0
    rebuilt, searched = torch.load(applied, weights_only=False), torch.load(out / "pruned.pt", weights_only=False)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), searched.eval()(x), atol=1e-4)


@pytest.mark.parametrize("case", [
    "unknown-model", "unknown-dataset", "unknown-agent", "malformed-budget", "infeasible-budget",
    "missing-data-dir", "unreadable-checkpoint", "mismatched-checkpoint", "untraceable-model",
    "missing-weights-path-with-brackets", "unknown-finetune-start",
])
def test_bad_input_exits_2_with_one_line(case, env, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(env["mods"]))
    out = tmp_path / "run"
    base = ["--evals", "1", "--heldout", "300", "--calib-batches", "1", "--out", str(out)]
    data = ["--data", env["data"]]
    cases = {
        "unknown-model": (["search", "nosuchnet", "--budget", "50%FLOPs", "--weights", "random", *data],
                          ["unknown model", "nosuchnet"]),
        "unknown-dataset": (["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random",
                             "--data", "nosuchdata"], ["unknown dataset", "nosuchdata"]),
        "unknown-agent": (["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random", "--agent",
                           "nosuchagent", *data], ["unknown agent", "nosuchagent"]),
        "malformed-budget": (["search", "resnet20", "--budget", "50%FLOPZ", "--weights", "random", *data],
                             ["malformed budget", "50%FLOPZ"]),
        "infeasible-budget": (["search", "resnet20", "--budget", "1%FLOPs", "--weights", "random", *data],
                              ["infeasible", "smallest reachable"]),
        "missing-data-dir": (["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random",
                              "--data", "imagenet:/nonexistent"], ["/nonexistent"]),
        "unreadable-checkpoint": (["search", "resnet20", "--budget", "50%FLOPs", "--weights",
                                   str(env["garbage"]), *data], ["cannot read checkpoint"]),
        "mismatched-checkpoint": (["search", "resnet20", "--budget", "50%FLOPs", "--weights",
                                   str(env["ckpt56"]), *data], ["does not match"]),
        "untraceable-model": (["search", "autoprune_untraceable_net:factory", "--budget", "50%FLOPs",
                               "--weights", "random", *data], ["cannot trace"]),
        "missing-weights-path-with-brackets": (
            ["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(tmp_path / "[/x]" / "w.pt"), *data],
            ["weights file not found", "[/x]"]),
        "unknown-finetune-start": (["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random",
                                    "--finetune-epochs", "1", "--finetune-start", "warm", *data],
                                   ["--finetune-start", "refit, plain", "warm"]),
    }
    args, words = cases[case]
    code, _, err = _main(args + base, capsys, monkeypatch)
    _assert_one_line_error(code, err, out, *words)


def test_listings():
    models = _invoke("models")
    assert models.exit_code == 0
    names = {line.split()[0] for line in models.output.splitlines() if line.strip()}
    assert {"resnet20", "resnet56", "vgg11", "mobilenetv2", "resnet18", "mobilenet_v2"} <= names
    datasets = _invoke("datasets")
    assert datasets.exit_code == 0
    assert {"fashion-mnist", "cifar10", "imagenet:PATH"} <= {line.split()[0] for line in datasets.output.splitlines()}
    agents = _invoke("agents")
    assert agents.exit_code == 0
    assert {"random", "uniform", "global", "tpe"} <= {line.split()[0] for line in agents.output.splitlines()}
    assert [line.split()[0] for line in agents.output.splitlines() if line.endswith("(default)")] == ["tpe"]


def test_search_help_lists_options():
    result = _invoke("search", "--help")
    assert result.exit_code == 0
    for option in ("--budget", "--agent", "--evals", "--resume", "--storage", "--weights", "--data", "--out"):
        assert option in result.output, option


def test_finetune_raises_test_accuracy(run, env, tmp_path):
    """A pruned random-init net learns from the training split; policy.json records before/after."""
    folder = tmp_path / run.name
    shutil.copytree(run, folder)
    result = _invoke("finetune", str(folder), "--epochs", "2", "--lr", "0.05", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["finetuned_test_accuracy"] > meta["test_accuracy_before_finetune"] + 0.2
    assert (folder / "finetuned.pt").exists()


def test_finetune_with_distillation_records_it(run, env, tmp_path, capsys, monkeypatch):
    folder = tmp_path / run.name
    shutil.copytree(run, folder)
    result = _invoke("finetune", str(folder), "--epochs", "1", "--lr", "0.05", "--batch-size", "32", "--distill",
                     "--temperature", "2")
    assert result.exit_code == 0, result.output
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["finetune_distill"] is True and meta["distill_temperature"] == 2.0
    assert meta["finetuned_test_accuracy"] > meta["test_accuracy_before_finetune"]
    # every key the fine-tune wrote is one RunSummary names (the report and the CLI table read it there)
    written = set(meta) - set(json.loads((run / "policy.json").read_text()))
    assert written == set(FINETUNE_KEYS)
    assert RunSummary.read(meta).extra == {}
    code, _, err = _main(["finetune", str(folder), "--distill", "--distill-weight", "1.5"], capsys, monkeypatch)
    _assert_one_line_error(code, err, None, "--distill-weight")


def test_finetune_from_plain_starts_from_the_kept_channels_own_weights(run, env, tmp_path, capsys, monkeypatch):
    """--start plain trains the pruned model without the search's least-squares refit (the weights differ from
    pruned.pt's) and records it; a start that does not exist is one line, exit 2, before anything loads."""
    folder = tmp_path / run.name
    shutil.copytree(run, folder)
    assert json.loads((folder / "policy.json").read_text())["reconstruction"]  # the search refitted
    plain = load_run_model(folder / "policy.json", device="cpu", refit=False)
    refit = load_run_model(folder / "policy.json", device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(plain.pruned.state_dict().values(),
                                                       refit.pruned.state_dict().values()))
    expected = accuracy(plain.pruned, plain.data.test, torch.device("cpu"))["top1"]
    result = _invoke("finetune", str(folder), "--epochs", "1", "--lr", "0.05", "--batch-size", "32", "--start", "plain")
    assert result.exit_code == 0, result.output
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["finetune_start"] == "plain"
    assert meta["test_accuracy_before_finetune"] == pytest.approx(expected, abs=1e-12)
    code, _, err = _main(["finetune", str(folder), "--start", "warm"], capsys, monkeypatch)
    _assert_one_line_error(code, err, None, "refit, plain", "warm")


def test_train_writes_weights_and_model_card(env, tmp_path):
    out = tmp_path / "w" / "resnet20-tiny.pt"
    result = _invoke("train", "resnet20", "--data", env["data"], "--epochs", "2", "--heldout", "300",
                     "--batch-size", "32", "--lr", "0.05", "--out", str(out))
    assert result.exit_code == 0, result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["train_images"] == N_TRAIN - 300 and card["heldout_images"] == 300
    assert card["test_accuracy"] > 0.5 and "autoprune train resnet20" in card["recipe"]
    assert out.with_suffix(".md").exists()
    model = build_model("resnet20", num_classes=10, in_channels=1, weights=str(out)).model
    assert sum(p.numel() for p in model.parameters()) == 272186


def test_final_table_says_slower_when_pruning_made_it_slower():
    from autoprune.ui import speedup

    assert speedup(2.0, 1.6) == "1.25x faster"
    assert speedup(2.55, 3.29) == "1.29x slower"  # not "0.78x faster" (H200, pruned ResNet-56)


def test_failed_run_leaves_nothing_and_the_same_command_runs_again(env, monkeypatch, capsys):
    """A crash before any evaluation is stored takes back the run folder; the rerun then works."""
    from autoprune.problem import Problem

    out = env["root"] / "runs" / "crashed"
    args = ["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(env["ckpt"]), "--agent", "uniform",
            "--heldout", "300", "--calib-batches", "1", "--data", env["data"], "--out", str(out)]
    original = Problem.score

    def crash(self, ratios):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(Problem, "score", crash)
    with pytest.raises(RuntimeError, match="exploded"):
        _main(args, capsys, monkeypatch)
    assert not out.exists()
    monkeypatch.setattr(Problem, "score", original)
    code, _, err = _main(args, capsys, monkeypatch)
    assert code == 0, err
    assert (out / "policy.json").is_file()


def test_failed_run_with_stored_evaluations_is_kept_and_says_resume(env, monkeypatch, capsys):
    from autoprune.errors import UserError
    from autoprune.problem import Problem

    out = env["root"] / "runs" / "half"
    args = ["search", "resnet20", "--budget", "50%FLOPs", "--weights", str(env["ckpt"]), "--agent", "random",
            "--evals", "3", "--heldout", "300", "--calib-batches", "1", "--data", env["data"], "--out", str(out)]
    original, calls = Problem.score, []

    def fail_second(self, ratios):
        calls.append(1)
        if len(calls) == 2:
            raise UserError("the user's evaluate() gave up")
        return original(self, ratios)

    monkeypatch.setattr(Problem, "score", fail_second)
    code, _, err = _main(args, capsys, monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # below the progress bar
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "gave up" in errors[0] and "1 evaluations are stored" in errors[0] and "--resume" in errors[0]
    assert (out / "study.db").is_file()
    monkeypatch.setattr(Problem, "score", original)
    code, _, err = _main(args + ["--resume"], capsys, monkeypatch)
    assert code == 0, err
    policy = json.loads((out / "policy.json").read_text())
    assert policy["evaluations"] == 3 and policy["cached_evaluations"] == 1


def test_data_too_small_for_the_heldout_split_is_refused_up_front(env, capsys, monkeypatch, tmp_path):
    out = tmp_path / "run"
    code, _, err = _main(["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random", "--data", env["data"],
                          "--heldout", "5000", "--out", str(out)], capsys, monkeypatch)
    _assert_one_line_error(code, err, out, f"has {N_TRAIN} images", "held-out split of 5000",
                           f"--heldout {N_TRAIN - 64} or less")


def test_a_user_factory_that_raises_is_one_line(env, capsys, monkeypatch, tmp_path):
    (env["mods"] / "autoprune_raising_factories.py").write_text(textwrap.dedent("""
        def model(num_classes, in_channels):
            raise ValueError("no such width")

        def data():
            raise OSError("my bucket is offline")
    """))
    monkeypatch.syspath_prepend(str(env["mods"]))
    out = tmp_path / "run"
    code, _, err = _main(["search", "autoprune_raising_factories:model", "--budget", "50%FLOPs", "--weights",
                          "random", "--data", env["data"], "--heldout", "300", "--out", str(out)], capsys, monkeypatch)
    _assert_one_line_error(code, err, out, "model factory", "ValueError", "no such width")
    code, _, err = _main(["search", "resnet20", "--budget", "50%FLOPs", "--weights", "random", "--data",
                          "autoprune_raising_factories:data", "--out", str(out)], capsys, monkeypatch)
    _assert_one_line_error(code, err, out, "dataset factory", "OSError", "my bucket is offline")
    (env["mods"] / "autoprune_broken_module.py").write_text("import os\nWIDTH = undefined_name\n")
    code, _, err = _main(["search", "autoprune_broken_module:model", "--budget", "50%FLOPs", "--weights", "random",
                          "--data", env["data"], "--heldout", "300", "--out", str(out)], capsys, monkeypatch)
    _assert_one_line_error(code, err, out, "importing model factory 'autoprune_broken_module:model' failed",
                           "NameError", "undefined_name")
