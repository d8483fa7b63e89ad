"""Static check: identifiers and values never formatted into SQL text.

SQL reaches the driver as a literal string with bound parameters, or as ``psycopg.sql``
composition (``sql.SQL(literal).format(sql.Identifier(...), sql.Literal(...))``). Flagged
anywhere under kbrefresh/, tasks/, flows/ and deployments/:

- an f-string, ``%`` formatting, ``str.format`` or ``+`` with a non-literal passed to
  ``execute``/``executemany``/``copy``/``stream``, ``sql.SQL``, ``sqlalchemy.text`` or
  ``pandas.read_sql``;
- any f-string whose literal text looks like SQL (``SELECT … FROM``, ``INSERT INTO``, …).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kbrefresh", "tasks", "flows", "deployments")
SINKS = {"execute", "executemany", "copy", "stream", "SQL", "text", "read_sql", "read_sql_query"}
SQL_WORDS = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|"
    r"VIEW|ROLE)|DROP\s+(TABLE|VIEW|INDEX)|ALTER\s+(TABLE|ROLE|SYSTEM)|GRANT\s+\w+\s+ON)\b",
    re.IGNORECASE | re.DOTALL,
)


COMPOSERS = {"SQL", "Identifier", "Literal", "Placeholder", "Composed"}


def is_literal(node: ast.expr, constants: frozenset[str] = frozenset()) -> bool:
    """A string built only from literals and module constants that are literals."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return is_literal(node.left, constants) and is_literal(node.right, constants)
    if isinstance(node, ast.IfExp):
        return is_literal(node.body, constants) and is_literal(node.orelse, constants)
    return False


def is_composition(node: ast.expr) -> bool:
    """``sql.SQL(…)``, ``sql.Identifier(…)``, ``….format(…)``/``.join`` of those."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    if node.func.attr in COMPOSERS:
        return True
    return node.func.attr in {"format", "join"} and is_composition(node.func.value)


def operands(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return operands(node.left) + operands(node.right)
    return [node]


def formatted(node: ast.expr, constants: frozenset[str] = frozenset()) -> bool:
    """Whether ``node`` builds a string by formatting or concatenating non-literals."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Mod) and is_literal(node.left, constants):
            return True
        if isinstance(node.op, ast.Add):
            # str + Composable is a TypeError, so one composition means all are.
            parts = operands(node)
            return not any(is_composition(p) for p in parts) and not is_literal(node, constants)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        # "…".format(...) on a plain string (unless every argument is itself a literal);
        # sql.SQL("…").format(...) is composition.
        args = [*node.args, *(k.value for k in node.keywords)]
        return (node.func.attr in {"format", "join"} and is_literal(node.func.value, constants)
                and not all(is_literal(a) for a in args))
    return False


def module_constants(tree: ast.Module, known: set[str] | None = None) -> frozenset[str]:
    """Module-level names bound to literal strings (in order, so later ones may use earlier)."""
    names: set[str] = set(known or ())
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else (
            [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value else [])
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        if value is not None and is_literal(value, frozenset(names)):
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def callee(node: ast.Call) -> str:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return node.func.id if isinstance(node.func, ast.Name) else ""


def imported_constants(tree: ast.Module) -> set[str]:
    """Names imported from our own modules that are literal strings there."""
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
            module = ROOT / Path(*stmt.module.split("."))
            path = module.with_suffix(".py") if module.with_suffix(".py").exists() else (
                module / "__init__.py")
            if path.exists():
                theirs = module_constants(ast.parse(path.read_text("utf-8")))
                names.update(a.asname or a.name for a in stmt.names if a.name in theirs)
    return names


def problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    constants = module_constants(tree, imported_constants(tree))
    found = []
    rel = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and callee(node) in SINKS and node.args
                and formatted(node.args[0], constants)):
            found.append(f"{rel}:{node.lineno}: {callee(node)}() gets SQL built by formatting")
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values
                           if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if SQL_WORDS.search(text):
                found.append(f"{rel}:{node.lineno}: an f-string that looks like SQL: {text[:60]!r}")
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_sql_is_built_by_string_formatting() -> None:
    found = [problem for path in sources() for problem in problems(path)]
    assert found == []


@pytest.mark.parametrize(
    "code",
    [
        'conn.execute(f"SELECT * FROM {table}")',
        'conn.execute("SELECT * FROM %s" % table)',
        'conn.execute("SELECT * FROM {}".format(table))',
        'conn.execute("SELECT * FROM " + table)',
        'sql.SQL(f"DROP TABLE {name}")',
        'sqlalchemy.text("SELECT " + column + " FROM t")',
        'message = f"DELETE FROM {table} WHERE id = {value}"',
    ],
)
def test_the_check_catches_formatting(tmp_path: Path, code: str, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    path = tmp_path / "bad.py"
    path.write_text(code + "\n", "utf-8")
    assert problems(path) != []


@pytest.mark.parametrize(
    "code",
    [
        'conn.execute("SELECT * FROM kb WHERE name = %s", (name,))',
        'conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))',
        'conn.execute("SELECT 1" " FROM kb")',
        'conn.execute(query, params)',
        'log.info(f"refresh of {kb!r} selected {n} documents from the source")',
    ],
)
def test_the_check_allows_bound_and_composed_sql(tmp_path: Path, code: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    path = tmp_path / "good.py"
    path.write_text(code + "\n", "utf-8")
    assert problems(path) == []
