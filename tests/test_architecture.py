"""The package's shape: subpackages by role, imports in one direction, small modules, and one
status vocabulary shared with the lab extension (read from the source, no cluster)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from dtrain_magics.store import schema

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dtrain_magics"
MAX_LINES = 400

# what each part of the package may import from the rest of it (itself always allowed)
ALLOWED = {
    "rank": set(),
    "install": set(),
    "store": set(),
    "server": {"store"},
    "cluster": {"store", "rank", "errors", "install"},  # install.facts: which MPI was found
    "config": {"cluster", "errors"},
    "run": {"cluster", "config", "store", "errors"},
    "ui": {"run", "config", "cluster", "store", "errors"},
    "ipython": {"ui", "run", "config", "cluster", "store", "tracking", "errors"},
    "tracking": {"store"},
    "errors": set(),
    "examples": {"rank"},
    "cli": {"install", "store"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "labextension" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports (``TYPE_CHECKING`` blocks left out)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dtrain_magics"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dtrain_magics"):
                submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
                # ``from . import x`` imports the module x; ``from .x import y`` needs x itself
                found.update(submodules)
                if node.module:
                    found.add(target)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: {i for i in _imports(name, path) if i in MODULES} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_imports_follow_the_layers(name: str) -> None:
    part = _part(name)
    if part in ("__init__", "_version"):
        return
    allowed = ALLOWED[part] | {part, "_version"}
    wrong = sorted(i for i in GRAPH[name] if _part(i) not in allowed and i != "dtrain_magics")
    assert not wrong, f"{name} ({part}/) may import only {sorted(allowed)}, imports {wrong}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt])
                )
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by job"


def test_every_subpackage_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.parent.name}/ has no docstring"


def _ts_union(name: str) -> tuple[str, ...]:
    source = (ROOT / "labextension" / "src" / "tokens.ts").read_text()
    match = re.search(rf"export type {name} =([^;]*);", source)
    assert match, f"tokens.ts declares no {name}"
    return tuple(re.findall(r"'([^']*)'", match.group(1)))


@pytest.mark.parametrize(
    ("ts", "py"),
    [
        ("RunStatus", schema.RunStatus),
        ("RankStatus", schema.RankStatus),
        ("ClusterState", schema.ClusterState),
    ],
)
def test_status_words_are_one_list_in_python_and_typescript(ts: str, py: object) -> None:
    assert _ts_union(ts) == get_args(py)


def test_active_runs_are_the_same_in_python_and_typescript() -> None:
    source = (ROOT / "labextension" / "src" / "tokens.ts").read_text()
    match = re.search(r"export const ACTIVE_RUN: RunStatus\[\] = \[([^\]]*)\]", source)
    assert match and tuple(re.findall(r"'([^']*)'", match.group(1))) == schema.ACTIVE_RUN
