"""Apply docs/roles.sql (the documented least-privilege roles) to a test database."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import sql

ROLES_SQL = Path(__file__).resolve().parents[2] / "docs" / "roles.sql"
_VARIABLE = re.compile(r""":'(\w+)'|:"(\w+)\"""")


def role_url(admin_url: str, user: str, password: str) -> str:
    """Return ``admin_url`` (the embedded server's ``postgres:@``) as ``user:password@``."""
    assert "://postgres:@" in admin_url, admin_url
    return admin_url.replace("://postgres:@", f"://{user}:{password}@", 1)


def apply_roles(admin_url: str, db: str, passwords: dict[str, str]) -> None:
    """Run docs/roles.sql as psql would with ``-v db=… -v <name>_password=…``.

    Roles are per server and the test server is shared by the session, so a role that
    already exists is kept (``CREATE ROLE`` is the only statement that may fail so).
    """
    values = {"db": db, **{f"{name}_password": pw for name, pw in passwords.items()}}
    text = "\n".join(line for line in ROLES_SQL.read_text("utf-8").splitlines()
                     if not line.startswith("--"))
    before, after = text.split('\\connect :"db"')
    db_url = admin_url.replace("/postgres?", f"/{db}?", 1)
    for url, part in ((admin_url, before), (db_url, after)):
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in (s.strip() for s in part.split(";")):
                if statement:
                    _execute(conn, statement, values)


def _execute(conn: psycopg.Connection[tuple[object, ...]], statement: str,
             values: dict[str, str]) -> None:
    def bind(match: re.Match[str]) -> str:
        if match.group(1):
            return sql.Literal(values[match.group(1)]).as_string(conn)
        return sql.Identifier(values[match.group(2)]).as_string(conn)

    query = _VARIABLE.sub(bind, statement)
    try:
        conn.execute(query.encode("utf-8"))
    except psycopg.errors.DuplicateObject:
        if not statement.startswith("CREATE ROLE"):
            raise
        role = statement.split()[2]
        # Existing (shared server): make it match the file, password and memberships.
        conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(sql.Identifier(role)))
