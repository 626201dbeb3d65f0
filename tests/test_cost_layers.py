"""autoprune.cost's latency modules import one way: profile -> staleness -> timing -> units -> lut -> measured.

Each may import only modules after it in that order (its docstring says which layer it is), so
following a profile through the code never re-enters a module it has left: the job calls what to
time, then the timing, then the table, and each of those only calls further down.
"""
from __future__ import annotations

import ast
from pathlib import Path

ORDER = ("profile", "staleness", "timing", "units", "lut", "measured")
COST = Path(__file__).resolve().parents[1] / "autoprune" / "cost"


def cost_imports(name: str) -> set[str]:
    """The autoprune.cost modules `name` imports, anywhere in the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse((COST / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoprune.cost."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("autoprune.cost."))
    return found


def test_the_latency_modules_import_only_downward():
    for i, name in enumerate(ORDER):
        assert cost_imports(name) <= set(ORDER[i + 1:]), (name, cost_imports(name) - set(ORDER[i + 1:]))


def test_every_latency_module_states_its_layer():
    for name in ORDER:
        doc = ast.get_docstring(ast.parse((COST / f"{name}.py").read_text()))
        assert "Layer:" in doc, name
