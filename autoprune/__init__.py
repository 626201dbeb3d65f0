"""autoprune: search layer-wise pruning ratios for trained CNNs within a FLOPs, params or latency budget.

    import autoprune
    result = autoprune.search(model, budget="50%FLOPs", train=train_set, heldout=val_set, evals=60)
    result.pruned_model          # physically pruned nn.Module, BN recalibrated
    result.save("runs/mine")     # the run folder `autoprune search` writes

The surface (autoprune.api) loads on first use, so `import autoprune` and the CLI start fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.api import SearchResult, apply, search
    from autoprune.policy import Policy
    from autoprune.report import write_report as report

__all__ = ["Policy", "SearchResult", "UserError", "apply", "report", "search"]
_LAZY = {"search": ("autoprune.api", "search"), "apply": ("autoprune.api", "apply"),
         "SearchResult": ("autoprune.api", "SearchResult"), "Policy": ("autoprune.policy", "Policy"),
         "report": ("autoprune.report", "write_report")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
