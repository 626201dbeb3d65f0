"""`autoprune.report` is the module docs/report.md documents, before and after it is imported.

It used to be the function `write_report` until something imported the submodule, which then
replaced it on the package: the same name meant two things depending on import order. Run in a
fresh interpreter, so no earlier import in the test session decides the answer.
"""
from __future__ import annotations

import subprocess
import sys


def test_autoprune_report_is_the_module_before_and_after_importing_it():
    code = ("import types, autoprune; first = autoprune.report; assert isinstance(first, types.ModuleType), first; "
            "import autoprune.report as r; assert first is r and autoprune.report is r; "
            "assert callable(r.write_report); assert 'report' not in autoprune.__all__; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_report_modules_import_downward_only():
    """html and plots import nothing of the report; the pages import neither the package nor each other."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "autoprune" / "report"
    allowed = {"html": set(), "plots": set(), "candidates": set(), "run": {"html", "plots", "candidates"},
               "sweep": {"html", "plots", "candidates"}}
    for name, ok in allowed.items():
        found = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoprune.report"):
                found.add((node.module or "").removeprefix("autoprune.report").lstrip(".") or "<package>")
            elif isinstance(node, ast.Import):
                found.update(a.name.removeprefix("autoprune.report.") for a in node.names
                             if a.name.startswith("autoprune.report"))
        assert found <= ok, (name, found - ok)
