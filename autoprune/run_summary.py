"""What policy.json says about a run, besides the ratios: its keys, their defaults, and its version.

`autoprune search` writes a `RunSummary`; `apply`, `export`, `finetune`, `rebuild`, the Python API
and the report read one back with `RunSummary.read(policy.meta)`, so a key is named in one place and
a policy written by hand (ratios only) reads with the same defaults everywhere. Keys a searcher or
a later step adds (metapruning's "pruningnet", a fine-tune's results) ride along in `extra`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from autoprune.policy import POLICY_VERSION

VERSION = POLICY_VERSION  # policy.json's "version": Policy.load refuses a newer one
# What `autoprune finetune` (autoprune.finetune.finetune_run) adds to a run's policy.json afterwards.
FINETUNE_KEYS = ("finetune_epochs", "finetune_lr", "finetune_distill", "finetune_start", "distill_temperature",
                 "distill_weight", "test_accuracy_before_finetune", "finetuned_test_accuracy",
                 "finetuned_heldout_accuracy", "finetune_history")
# Written only when set: a run without a ladder, a latency budget or a front has no such key at all.
OPTIONAL = frozenset({"ladder_heldout_accuracy", "ladder", "latency_verification", "predicted_latency_ms",
                      "base_predicted_latency_ms", "latency_floor_ms", "latency_table_check", "kept_channels",
                      "group_channels", "uniform_kept_channels", "uniform_macs", "channel_orders",
                      "pareto_front_size", *FINETUNE_KEYS})


@dataclass
class RunSummary:
    # what was pruned, and how (enough for `apply` / `export` to rebuild the pruned model)
    model: str | None = None
    weights: str | None = None
    data: str = "fashion-mnist"
    input_shape: list[int] | None = None
    space: dict = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    prune_stem: bool = False
    frozen_groups: list[dict] = field(default_factory=list)
    example_inputs: str | None = None  # the type name of the user's example_inputs, if not one tensor
    criterion: str = "l2"
    agent: str | None = None
    seed: int = 0
    budgets: list[str] = field(default_factory=list)
    # the returned policy's costs and scores
    macs: float | None = None
    base_macs: float | None = None
    params: float | None = None
    base_params: float | None = None
    heldout_accuracy: float | None = None  # the returned model's own full score (with the ladder: its rung 1)
    base_heldout_accuracy: float | None = None
    ladder_heldout_accuracy: float | None = None  # after the ladder's fine-tune rung (not the returned weights)
    test_accuracy: float | None = None
    base_test_accuracy: float | None = None
    latency_ms: float | None = None
    base_latency_ms: float | None = None
    latency_batch: int = 1
    latency_device: str | None = None
    # the search
    evaluations: int = 0
    cached_evaluations: int = 0
    fidelity: str = "full"
    partial_evaluations: int = 0
    ladder: dict | None = None
    best_evaluation: int | None = None
    search_seconds: float | None = None
    overhead_share: float | None = None
    heldout_images: int | None = None
    scored_by: str = "held-out top-1"
    calib_batches: int = 20
    storage: str = "study.db"
    # how the returned candidate was chosen (autoprune.outcome.final_pick)
    latency_verification: dict | None = None
    reconstruction: dict | None = None  # the least-squares refit: set when the search's models were refitted
    # latency-table figures and channels of the pick (autoprune.outcome.policy_details)
    predicted_latency_ms: float | None = None
    base_predicted_latency_ms: float | None = None
    latency_floor_ms: float | None = None
    latency_table_check: dict | None = None
    kept_channels: dict[str, int] | None = None
    group_channels: dict[str, int] | None = None
    uniform_kept_channels: dict[str, int] | None = None
    uniform_macs: float | None = None
    channel_orders: dict[str, list[int]] | None = None
    pareto_front_size: int | None = None
    # a fine-tune's results (FINETUNE_KEYS): absent until `autoprune finetune` or --finetune-epochs ran
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    finetune_distill: bool | None = None
    finetune_start: str | None = None  # "refit" or "plain": the weights the fine-tune started from
    distill_temperature: float | None = None
    distill_weight: float | None = None
    test_accuracy_before_finetune: float | None = None
    finetuned_test_accuracy: float | None = None
    finetuned_heldout_accuracy: float | None = None
    finetune_history: list[dict] | None = None
    extra: dict = field(default_factory=dict)  # keys of searchers (Searcher.extras) and later steps

    def to_meta(self) -> dict:
        """policy.json's entries besides "format", "version" and "ratios", in the order written."""
        out = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in OPTIONAL:
                continue
            out[f.name] = value
        return {**out, **self.extra}

    def update(self, entries: dict) -> None:
        """Set known keys as fields, the rest into `extra`."""
        names = _names()
        for key, value in entries.items():
            if key in names:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    @classmethod
    def read(cls, meta: dict) -> RunSummary:
        """A policy.json's entries (Policy.meta) as a summary; keys it lacks take the defaults above."""
        summary = cls()
        summary.update({k: v for k, v in meta.items() if k not in ("format", "version", "ratios")})
        return summary


def _names() -> frozenset[str]:
    return frozenset(f.name for f in fields(RunSummary) if f.name != "extra")
