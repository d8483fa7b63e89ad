"""The core's shape: no Prefect, no import cycle, no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "kbrefresh"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imported(name: str, path: Path, *, module_level_only: bool) -> set[str]:
    """Return the absolute names ``path`` imports (``from x import y`` gives x and x.y)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module level includes `if`/`try` blocks, not function bodies
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        nodes += [n for top in tree.body if isinstance(top, ast.ClassDef)
                  for stmt in top.body if not isinstance(stmt, ast.FunctionDef)
                  for n in ast.walk(stmt)]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if _type_checking_only(tree, node):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    for top in tree.body:
        if (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
                and any(node is inner for stmt in top.body for inner in ast.walk(stmt))):
            return True
    return False


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_core_module_imports_prefect(name: str) -> None:
    if name == "kbrefresh.cli._prefect":  # the CLI's one doorway to a Prefect server
        return
    names = imported(name, MODULES[name], module_level_only=False)
    bad = sorted(n for n in names if n.split(".")[0] in {"prefect", "flows", "tasks", "deployments"})
    assert bad == [], f"{name} imports {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_at_most_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle of ``graph`` (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_module_level_import_graph_has_no_cycle() -> None:
    graph = {
        name: sorted({n for n in imported(name, path, module_level_only=True) if n in MODULES}
                     - {name})
        for name, path in MODULES.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_walk_sees_the_whole_core() -> None:
    assert {"kbrefresh", "kbrefresh.cli._common", "kbrefresh.settings"} <= set(MODULES)
    assert len(MODULES) > 40
