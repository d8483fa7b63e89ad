"""What the kill harness checks after a recovery: rows, versions, relations, vectors reused.

:func:`inspect` checks what a platform engineer would: no duplicate rows, no row of the
source lost, no version left ``building`` or ``candidate``, no orphan relation or leftover
staging, no index left invalid, segment indexes exactly those the bounds name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from kbrefresh.build.chunking import chunk_document
from kbrefresh.build.sources import load_source
from kbrefresh.models import ChunkerConfig, sha256_text
from tests.support.openai_server import FakeOpenAIServer

KB = "kb"


@contextmanager
def connection(url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def expected_rows(source: Path) -> set[tuple[str, int, str]]:
    """(doc id, chunk index, content hash) of every chunk the source should have."""
    chunker = ChunkerConfig()
    return {(c.doc_id, c.chunk_index, c.content_hash)
            for d in load_source(str(source)).documents for c in chunk_document(d, chunker)}


def relations(url: str) -> set[str]:
    """Names of every table, index, view and sequence in the public schema."""
    with connection(url) as conn:
        return {r["relname"] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'").fetchall()}


def stored_hashes(url: str) -> set[str]:
    """Content hashes that have a vector in any chunk table (what a kill must not lose)."""
    with connection(url) as conn:
        tables = [r["table_name"] for r in conn.execute(
            "SELECT table_name FROM kb_fingerprints").fetchall()]
        hashes: set[str] = set()
        for table in tables:
            hashes |= {r["content_hash"] for r in conn.execute(sql.SQL(
                "SELECT DISTINCT content_hash FROM {}").format(sql.Identifier(table))).fetchall()}
    return hashes


def requested_hashes(server: FakeOpenAIServer, since: int) -> list[str]:
    """Hashes of every text sent to the embeddings endpoint from request ``since`` on."""
    return [sha256_text(text) for r in server.requests[since:] if r.path == "/v1/embeddings"
            for text in r.inputs]


@dataclass(frozen=True)
class Inspection:
    """What the database looks like after a recovery; ``problems`` empty means clean."""

    live: int | None
    rows: int
    rows_lost: int
    duplicates: int
    problems: tuple[str, ...]


def inspect(url: str, source: Path, before: set[str], kb: str = KB) -> Inspection:
    """Check the invariants a kill must not break; ``before``: relations before the kill."""
    problems: list[str] = []
    with connection(url) as conn:
        kb_id = conn.execute("SELECT id FROM kb WHERE name = %s", (kb,)).fetchone()["id"]
        live = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s",
                            (kb_id,)).fetchone()["live_version"]
        stuck = conn.execute(
            "SELECT version, status FROM kb_versions WHERE kb_id = %s AND status IN"
            " ('building', 'candidate') ORDER BY version", (kb_id,)).fetchall()
        problems += [f"version {r['version']} left {r['status']!r}" for r in stuck]
        for table in ("kb_build_chunks", "kb_build_docs"):
            n = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE kb_id = %s").format(
                sql.Identifier(table)), (kb_id,)).fetchone()["n"]
            if n:
                problems.append(f"{n} staging rows left in {table}")
        fp = conn.execute(
            "SELECT f.table_name, f.main_upto, f.delta_upto FROM kb_versions v JOIN"
            " kb_fingerprints f ON f.id = v.fingerprint_id WHERE v.kb_id = %s AND v.version = %s",
            (kb_id, live)).fetchone()
        table = fp["table_name"]
        got = conn.execute(sql.SQL(
            "SELECT doc_id, chunk_index, content_hash FROM {} WHERE valid_from <= %(v)s AND"
            " (valid_to IS NULL OR valid_to > %(v)s)").format(sql.Identifier(table)),
            {"v": live}).fetchall()
        invalid = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid").fetchall()
        problems += [f"index {r['relname']} left invalid" for r in invalid]
        segments = {r["indexname"] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND (indexname LIKE %s"
            " OR indexname LIKE %s OR indexname LIKE %s)",
            (table, f"{table}\\_hnsw\\_%", f"{table}\\_dhnsw\\_%", f"{table}\\_tail\\_%"))}
    keys = [(r["doc_id"], r["chunk_index"], r["content_hash"]) for r in got]
    expected = expected_rows(source)
    duplicates = len(keys) - len(set(keys))
    lost = len(expected - set(keys))
    if duplicates:
        problems.append(f"{duplicates} duplicate rows in v{live}")
    if lost or set(keys) - expected:
        problems.append(f"v{live}: {lost} rows lost, {len(set(keys) - expected)} unexpected")
    wanted = _segment_names(table, fp["main_upto"], fp["delta_upto"])
    if segments != wanted:
        problems.append(f"segment indexes {sorted(segments)} != expected {sorted(wanted)}")
    orphans = relations(url) - before - wanted - {table, f"{table}_pkey", f"{table}_id_seq",
                                                  f"{table}_hash", f"{table}_doc", f"kb_{kb}_live"}
    problems += [f"orphan relation {name}" for name in sorted(orphans)]
    return Inspection(live, len(keys), lost, duplicates, tuple(problems))


def _segment_names(table: str, main: int | None, delta: int | None) -> set[str]:
    if main is None:
        return set()
    names = {f"{table}_hnsw_{main}", f"{table}_tail_{max(main, delta or 0)}"}
    if delta is not None:
        names.add(f"{table}_dhnsw_{main}_{delta}")
    return names


def slow_traffic(url: str, version: int, start: datetime, n: int, kb: str = KB) -> None:
    """Log ``n`` searches of ``version`` at 6.2 s each (a monitor must roll it back)."""
    with connection(url) as conn:
        kb_id = conn.execute("SELECT id FROM kb WHERE name = %s", (kb,)).fetchone()["id"]
        conn.cursor().executemany(
            "INSERT INTO query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
            " top_doc_ids, top_similarity) VALUES (gen_random_uuid(), %s, %s, %s, 'q', %s, 6200,"
            " ARRAY['general/doc-000'], 0.7)",
            [(kb_id, start + timedelta(microseconds=10 * i), f"s{i}", version) for i in range(n)])


def routing_row(url: str, kb: str = KB) -> tuple[int | None, int | None, float]:
    with connection(url) as conn:
        row = conn.execute(
            "SELECT r.live_version, r.canary_version, r.canary_percent FROM kb_routing r"
            " JOIN kb k ON k.id = r.kb_id WHERE k.name = %s", (kb,)).fetchone()
    return row["live_version"], row["canary_version"], float(row["canary_percent"])
