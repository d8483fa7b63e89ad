"""Knowledge bases: names, creation, lookup, overview."""

from __future__ import annotations

import unicodedata

from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.store.rows import Conn, KbOverview

_MAX_NAME_BYTES = 55  # "kb_" + name + "_live" must fit PostgreSQL's 63-byte identifiers


def validate_kb_name(name: str) -> str:
    """Return ``name`` if it can name a knowledge base, else raise ConfigError.

    Any printable text is allowed (quotes, semicolons, unicode): names only ever
    reach SQL as bound values or through ``sql.Identifier``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"knowledge base name {name!r} is empty; expected printable text")
    if name != name.strip():
        raise ConfigError(f"knowledge base name {name!r} has leading or trailing spaces")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ConfigError(f"knowledge base name {name!r} contains control characters")
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ConfigError(
            f"knowledge base name {name!r} is {len(name.encode('utf-8'))} bytes; "
            f"expected at most {_MAX_NAME_BYTES} bytes of UTF-8"
        )
    return name


def ensure_kb(conn: Conn, name: str) -> int:
    """Return the id of knowledge base ``name``, creating it and its routing row."""
    validate_kb_name(name)
    row = conn.execute(
        "INSERT INTO kb (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
        "RETURNING id",
        (name,),
    ).fetchone()
    assert row is not None
    kb_id = int(row["id"])
    conn.execute(
        "INSERT INTO kb_routing (kb_id) VALUES (%s) ON CONFLICT (kb_id) DO NOTHING", (kb_id,)
    )
    return kb_id


def get_kb_id(conn: Conn, name: str) -> int:
    """Return the id of an existing knowledge base or raise VersionError."""
    row = conn.execute("SELECT id FROM kb WHERE name = %s", (name,)).fetchone()
    if row is None:
        known = list_kbs(conn)
        raise VersionError(
            f"unknown knowledge base {name!r}; known: {', '.join(map(repr, known)) or 'none yet'}"
        )
    return int(row["id"])


def list_kbs(conn: Conn) -> list[str]:
    return [str(r["name"]) for r in conn.execute("SELECT name FROM kb ORDER BY name").fetchall()]


def kb_overview(conn: Conn) -> list[KbOverview]:
    """Return one row per knowledge base: live version, tag, counts, last change."""
    return [
        KbOverview.from_row(r)
        for r in conn.execute(
            "SELECT k.name, r.live_version, v.dataset_tag, v.counts, v.live_at, r.canary_version,"
            " r.canary_percent, (SELECT count(*) FROM kb_versions x WHERE x.kb_id = k.id) AS versions"
            " FROM kb k JOIN kb_routing r ON r.kb_id = k.id"
            " LEFT JOIN kb_versions v ON v.kb_id = k.id AND v.version = r.live_version"
            " ORDER BY k.name"
        ).fetchall()
    ]
