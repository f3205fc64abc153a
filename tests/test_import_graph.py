"""The package's import graph: no cycle between files, and no import hidden in a function
without a reason.

The graph is read from the source with `ast` (nothing is imported): an edge ``a -> b`` for every
``import``/``from ... import`` in ``a`` that names module ``b`` of the package, at module level
or inside a function, except under ``if TYPE_CHECKING:`` (those never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``root/package``."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every import of one module: (target module, line, inside a function)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.depth = 0
        self.found: list[tuple[str, int, bool, ast.stmt]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:  # only the ``else`` branch runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0, node))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolve against this module's package
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:  # ``from pkg import submodule`` names the submodule
            self.found.append((f"{base}.{alias.name}", node.lineno, self.depth > 0, node))
            self.found.append((base, node.lineno, self.depth > 0, node))


def imports_of(modules: dict[str, Path]) -> dict[str, list[tuple[str, int, bool, ast.stmt]]]:
    """Per module, its imports: (imported name, line, in a function, statement)."""
    out = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out[name] = visitor.found
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """``{module: {imported module of the package: first line}}`` (self-imports dropped).

    ``from a import b`` is an edge to ``a.b`` when that is a module, else to ``a``."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, found in imports_of(modules).items():
        seen_statements: set[int] = set()
        for target, line, _, node in found:
            if id(node) in seen_statements and isinstance(node, ast.ImportFrom):
                continue
            if isinstance(node, ast.ImportFrom):
                # the submodule edge if ``target`` is one, else the ``from`` module itself
                if target in modules:
                    graph[name].setdefault(target, line) if target != name else None
                    continue
                base = target.rsplit(".", 1)[0]
                if base in modules and base != name:
                    graph[name].setdefault(base, line)
            elif target in modules and target != name:
                graph[name].setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a (line 3) -> b (line 9) -> a``: the cycle with the line of each import."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*steps, cycle[-1]])


def unexplained_function_imports(root: Path, package: str) -> list[str]:
    """Function-level imports with no comment on their line or the line above, as
    ``module:line``. A deferred import is fine for an optional dependency or a measured
    import cost, and the comment says which."""
    modules = module_files(root, package)
    missing = []
    for name, found in imports_of(modules).items():
        lines = modules[name].read_text(encoding="utf-8").splitlines()
        for line in sorted({line for _, line, in_function, _ in found if in_function}):
            here, above = lines[line - 1], lines[line - 2].strip() if line > 1 else ""
            block = line - 2  # a comment above a run of imports covers the run
            while block > 0 and lines[block].strip().startswith(("import ", "from ")):
                block -= 1
            if "#" not in here and not above.startswith("#") and "#" not in lines[block]:
                missing.append(f"{name}:{line}")
    return missing


# ---- the package ---------------------------------------------------------------------------
def test_no_import_cycle_between_files():
    graph = import_graph(SRC, "icg")
    assert len(graph) > 100  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(cycle, graph)}"


def test_function_level_imports_say_why():
    missing = unexplained_function_imports(SRC, "icg")
    assert not missing, (
        "function-level imports without a '# reason' comment (an optional dependency or a "
        f"measured import cost; otherwise import at module top level): {missing}"
    )


def test_models_and_rewards_never_import_training():
    graph = import_graph(SRC, "icg")
    upward = [
        (a, b)
        for a, targets in graph.items()
        if a.startswith(("icg.models", "icg.rewards", "icg.pipeline"))
        for b in targets
        if b.startswith(("icg.training", "icg.evaluation"))
    ]
    assert not upward, f"inference imports training/evaluation: {upward}"


# ---- the checker itself, on tiny synthetic packages ----------------------------------------
def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
            "pkg/b.py": "def g():\n    from pkg import a  # deferred\n    return a\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root, "pkg")
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}
    text = describe(cycle, graph)
    assert "pkg.a (line 1)" in text and "pkg.b (line 2)" in text
    with pytest.raises(AssertionError, match="pkg.a"):
        assert cycle is None, f"import cycle: {text}"


def test_a_relative_import_cycle_is_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from .x import X\n",
            "pkg/sub/x.py": "from ..top import T\nX = 1\n",
            "pkg/top.py": "from pkg.sub import x\nT = 2\n",
        },
    )
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None and {"pkg.sub.x", "pkg.top"} <= set(cycle)


def test_type_checking_imports_are_not_edges(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
            "pkg/b.py": "from pkg.a import A\nclass B: ...\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {} and find_cycle(graph) is None


def test_an_acyclic_package_passes_and_a_silent_deferred_import_is_reported(tmp_path):
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "import os\n\ndef f():\n    import json\n    return json\n",
            "pkg/b.py": "def g():\n    # optional dependency\n    import fastapi\n    import uvicorn\n",
        },
    )
    assert find_cycle(import_graph(root, "pkg")) is None
    assert unexplained_function_imports(root, "pkg") == ["pkg.a:4"]
