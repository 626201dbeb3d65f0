"""autoprune: search layer-wise pruning ratios for trained CNNs within a FLOPs, params or latency budget.

    import autoprune
    result = autoprune.search(model, budget="50%FLOPs", train=train_set, heldout=val_set, evals=60)
    result.pruned_model          # physically pruned nn.Module, BN recalibrated
    result.save("runs/mine")     # the run folder `autoprune search` writes

The surface (autoprune.api) loads on first use, so `import autoprune` and the CLI start fast.
`autoprune.report` is the report module (`autoprune.report.write_report(path, out=None)`),
loaded on first use like the rest and the same object before and after.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.api import SearchResult, apply, search
    from autoprune.policy import Policy

__all__ = ["Policy", "SearchResult", "UserError", "apply", "search"]
_LAZY = {"search": ("autoprune.api", "search"), "apply": ("autoprune.api", "apply"),
         "SearchResult": ("autoprune.api", "SearchResult"), "Policy": ("autoprune.policy", "Policy")}
# Submodules reached as attributes: importing one binds it on the package, so the name is the
# module itself from the first access on (never a function of the same name).
_SUBMODULES = ("report",)


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
