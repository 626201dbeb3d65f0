"""The package's import graph: no cycles (lazy imports inside functions included), no core module importing
a searcher, every module importable on its own, and searchers using only the problem's searcher interface.

The graph is read from the source with `ast` (grimp, import-linter's engine, walks a package's folder
and so misses agents/, envs/ and search_spaces/, which setuptools maps into the package from outside it).
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"autoprune": ROOT / "autoprune", "autoprune.agents": ROOT / "agents", "autoprune.envs": ROOT / "envs",
           "autoprune.search_spaces": ROOT / "search_spaces"}
SEARCHERS = ("autoprune.agents.", "autoprune.envs.")


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "autoprune" and parts[0] in ("agents", "envs", "search_spaces"):
                continue
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package `name` imports, anywhere in the file except `if TYPE_CHECKING:` blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out = set()
    for target in found:
        while target and target not in known:  # `autoprune.cost.profile.X` -> the module that defines X
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring a package's own __init__
    importing its submodules (that is how a package exposes its surface, not a circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if v.startswith(w + "."):  # a submodule importing its parent package: the __init__ edge
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_the_package_has_no_import_cycle():
    assert _cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_core_module_imports_a_searcher():
    core = {n: deps for n, deps in graph().items()
            if not n.startswith(SEARCHERS) and n not in ("autoprune.agents", "autoprune.envs")}
    bad = {n: sorted(d for d in deps if d.startswith(SEARCHERS)) for n, deps in core.items()}
    assert {n: d for n, d in bad.items() if d} == {}


def test_every_module_imports():
    for name in modules():
        if name != "autoprune.__main__":
            importlib.import_module(name)


def test_importing_autoprune_alone_leaves_optuna_logging_and_warnings_as_they_were():
    # the third-party libraries first: their own warning filters are theirs, not ours
    code = ("import warnings, optuna, torch, torch_pruning, stable_baselines3, torch_geometric, sympy; "
            "optuna.logging.set_verbosity(optuna.logging.INFO); "
            "n = len(warnings.filters); import autoprune, autoprune.api, autoprune.agents.optuna, autoprune.study; "
            "assert optuna.logging.get_verbosity() == optuna.logging.INFO; assert len(warnings.filters) == n; "
            "import autoprune.report as r; assert autoprune.report is r; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_searchers_use_only_the_search_problem_interface():
    from autoprune.search_problem import SEARCH_PROBLEM_MEMBERS

    used: dict[str, set[str]] = {}
    for folder in (ROOT / "agents", ROOT / "envs"):
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("problem", "self.problem"):
                    used.setdefault(node.attr, set()).add(path.name)
    assert {m: sorted(f) for m, f in used.items() if m not in SEARCH_PROBLEM_MEMBERS} == {}
