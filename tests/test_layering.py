"""The package's layers, read from every module's imports (ast; nothing is imported or run).

    base (_version, _validation, constants)
      <- io <- head <- (simulate, data)
      <- (models, evaluate, train, localization, config)
      <- commands, cli, __main__, the package's own __init__

A module may import its own layer or a lower one, never a higher one; within a layer the
packages import one another without a cycle, and a few pairs never at all (data and
evaluate do not use simulate, train uses neither evaluate nor localization). Imports
inside functions count: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lowest layer first; a unit is the first name under ``esikit`` (a subpackage or a module),
#: ``""`` the package's own ``__init__``.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"_version", "_validation", "constants"}),
    frozenset({"io"}),
    frozenset({"head"}),
    frozenset({"simulate", "data"}),
    frozenset({"models", "evaluate", "train", "localization", "config"}),
    frozenset({"commands", "cli", "__main__", ""}),
)

#: Pairs that must not import each other even though the layers would allow it.
FORBIDDEN: frozenset[tuple[str, str]] = frozenset({
    ("data", "simulate"), ("simulate", "data"), ("evaluate", "simulate"),
    ("train", "evaluate"), ("train", "localization"), ("train", "simulate"),
    ("models", "data"), ("models", "evaluate"), ("models", "train"), ("models", "config"),
    ("evaluate", "train"), ("evaluate", "localization"),
})


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, src: Path, root: str) -> Iterable[tuple[str, int]]:
    """``(imported module, line)`` for every import of ``root`` in ``path``, at any depth."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == root or target.startswith(root + "."):
                # ``from esikit import io`` imports the subpackage, not the package's __init__
                for alias in node.names if target == root else [None]:
                    yield (f"{target}.{alias.name}" if alias is not None else target), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    yield alias.name, node.lineno


def unit(module: str, root: str, known: set[str]) -> str:
    rest = module[len(root) + 1:] if module != root else ""
    first = rest.split(".")[0]
    return first if first in known or not first else ""


def layer_of(name: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    return None


def check_layers(src: Path, root: str = "esikit") -> list[str]:
    """Every layering problem of the package ``src/root``, one line each."""
    pkg = src / root
    known = {p.stem if p.is_file() else p.name for p in pkg.iterdir()
             if (p.is_file() and p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    problems: list[str] = []
    edges: dict[str, set[str]] = {}
    for u in sorted(known | {""}):
        if layer_of(u) is None:
            problems.append(f"{root}.{u}: in no layer (add it to LAYERS in tests/test_layering.py)")
    for path in sorted(pkg.rglob("*.py")):
        here = unit(module_name(path, src), root, known)
        for target, line in imports(path, src, root):
            there = unit(target, root, known)
            if there == here:
                continue
            edges.setdefault(here, set()).add(there)
            where = f"{path.relative_to(src)}:{line}: {module_name(path, src)} imports {target}"
            lh, lt = layer_of(here), layer_of(there)
            if lh is not None and lt is not None and lt > lh:
                problems.append(f"{where}: a back-edge ({here or root} is below {there or root})")
            if (here, there) in FORBIDDEN:
                problems.append(f"{where}: {here} must not import {there}")
    problems += [f"a cycle between packages: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_package_has_no_back_edges_and_no_cycles():
    problems = check_layers(SRC)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "esikit" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_check_finds_back_edges_forbidden_pairs_cycles_and_unknown_units(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "io/__init__.py": "def f():\n    from ..head import g  # deferred, still a back-edge\n",
        "head/__init__.py": "from esikit.io import x\n",
        "data/__init__.py": "from ..simulate import run\n",
        "simulate/__init__.py": "from esikit import data\n",
        "extra.py": "",
    })
    problems = "\n".join(check_layers(src))
    assert "io/__init__.py:2: esikit.io imports esikit.head: a back-edge (io is below head)" in problems
    assert "data must not import simulate" in problems and "simulate must not import data" in problems
    assert "a cycle between packages: data -> simulate -> data" in problems
    assert "a cycle between packages: head -> io -> head" in problems
    assert "esikit.extra: in no layer" in problems
    assert "head/__init__.py" not in problems  # head -> io is the right direction


@pytest.mark.parametrize("text, target", [
    ("from . import io\n", "esikit.io"),
    ("from .io._mat import load\n", "esikit.io._mat"),
    ("import esikit.head.anatomy as a\n", "esikit.head.anatomy"),
    ("from esikit import io, head\n", "esikit.head"),
])
def test_imports_resolves_relative_and_absolute_forms(tmp_path, text, target):
    src = _tree(tmp_path, {"__init__.py": "", "cli.py": text})
    assert target in [t for t, _ in imports(src / "esikit" / "cli.py", src, "esikit")]
