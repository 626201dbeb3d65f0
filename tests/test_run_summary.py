"""RunSummary owns policy.json's keys: what it writes reads back the same, a hand-written policy takes
the defaults, and a key nobody declared rides along instead of being lost."""
from __future__ import annotations

from autoprune.policy import Policy
from autoprune.run_summary import FINETUNE_KEYS, OPTIONAL, RunSummary


def test_round_trip_keeps_every_key_and_its_order(tmp_path):
    summary = RunSummary(model="resnet20", budgets=["50%FLOPs"], macs=1.0, base_macs=2.0, kept_channels={"g": 3},
                         finetuned_test_accuracy=0.9, finetune_epochs=1)
    summary.update({"pruningnet": {"heldout_accuracy": 0.5}})
    Policy({"g": 0.25}, summary.to_meta()).save(tmp_path / "policy.json")
    back = RunSummary.read(Policy.load(tmp_path / "policy.json").meta)
    assert back == summary
    assert list(back.to_meta()) == list(summary.to_meta())
    assert back.extra == {"pruningnet": {"heldout_accuracy": 0.5}}  # a searcher's key, not a field


def test_optional_keys_are_absent_until_set():
    meta = RunSummary(model="resnet20").to_meta()
    assert not set(meta) & OPTIONAL
    assert not set(meta) & set(FINETUNE_KEYS)
    assert meta["fidelity"] == "full" and meta["calib_batches"] == 20  # written defaults


def test_a_hand_written_policy_reads_with_the_defaults():
    summary = RunSummary.read({"format": "autoprune.policy", "version": 1, "ratios": {"g": 0.5}})
    assert summary.data == "fashion-mnist" and summary.criterion == "l2" and summary.seed == 0
    assert summary.budgets == [] and summary.finetuned_test_accuracy is None and summary.extra == {}
