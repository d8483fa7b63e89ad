"""Connections and the background writer behind the Retriever's query and feedback log.

Rows go through a bounded queue to a daemon thread that COPYs them in batches on its
own connection, so logging may drop rows (counted) but never fails or slows a search.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import psycopg
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from kbrefresh._text import redact_url, scrub
from kbrefresh.errors import DatabaseError
from kbrefresh.serving.search import search_settings

logger = logging.getLogger(__name__)

_MAX_IDLE_CONNECTIONS = 8

Conn = psycopg.Connection[dict[str, Any]]
T = TypeVar("T")
Row = tuple[Literal["query", "feedback"], tuple[Any, ...]]

_QUERY_COPY = (
    "COPY query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
    " top_doc_ids, top_similarity, query_sketch, error) FROM STDIN (FORMAT BINARY)"
)
_QUERY_TYPES = ["uuid", "int4", "timestamptz", "text", "text", "int4", "float4", "text[]",
                "float4", "float4[]", "text"]
_FEEDBACK_COPY = (
    "COPY feedback (query_id, kb_id, ts, rating, thumbs) FROM STDIN (FORMAT BINARY)"
)
_FEEDBACK_TYPES = ["uuid", "int4", "timestamptz", "int2", "bool"]


@dataclass(frozen=True)
class _Marker:
    done: threading.Event
    stop: bool = False


def reason(exc: BaseException, url: str) -> str:
    """Return the first line of ``exc`` with the URL and its password masked."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text.replace(url, redact_url(url))
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    return scrub(text, str(password) if password else None)


def connect(url: str, *, vectors: bool) -> Conn:
    try:
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact_url(url)}: {reason(exc, url)}") from exc
    if vectors:
        try:
            register_vector(conn)
            search_settings(conn, local=False)
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(
                f"the pgvector extension is not installed in {redact_url(url)}; "
                "run a refresh first (it applies the migrations)"
            ) from exc
    return conn


class Pool:
    """Idle autocommit connections reused across searches; a broken one is dropped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect(self.url, vectors=True)
        try:
            yield conn
        finally:
            self._give_back(conn)

    def run(self, work: Callable[[Conn], T]) -> T:
        """Return ``work(conn)`` on a pooled connection, again on a new one if a reused one was dead.

        An idle connection learns that the server restarted (or dropped it) only when it is
        used: measured in the kill harness, each reader's first search after a PostgreSQL
        restart failed on its pooled connection although the server was back.
        """
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                return work(conn)
            except psycopg.OperationalError:
                if not conn.broken:
                    raise
                with self._lock:  # the other idle connections died with the same server
                    dead, self._idle = self._idle, []
                for other in dead:
                    other.close()
            finally:
                self._give_back(conn)
        with self.connection() as fresh:
            return work(fresh)

    def _give_back(self, conn: Conn) -> None:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            keep = idle and not self._closed and len(self._idle) < _MAX_IDLE_CONNECTIONS
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()


class LogWriter:
    """A daemon thread that COPYs queued log rows in batches on its own connection."""

    def __init__(self, url: str, batch_size: int, flush_seconds: float) -> None:
        self._url = url
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._queue: queue.Queue[Row | _Marker] = queue.Queue(max(10_000, 2 * batch_size))
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.counts = {"logged": 0, "log_errors": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name="kbrefresh-query-log", daemon=True)
        self._thread.start()

    def put(self, row: Row) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._count("dropped", 1)

    def flush(self, timeout: float, *, stop: bool = False) -> bool:
        marker = _Marker(threading.Event(), stop=stop)
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return self._thread.is_alive() and marker.done.wait(timeout)

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _run(self) -> None:
        batch: list[Row] = []
        deadline = math.inf
        while True:
            wait = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                item: Row | _Marker | None = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, tuple):
                batch.append(item)
                if len(batch) == 1:
                    deadline = time.monotonic() + self._flush_seconds
                if len(batch) < self._batch_size and time.monotonic() < deadline:
                    continue
            self._write(batch)
            batch = []
            if isinstance(item, _Marker):
                if item.stop:
                    self._disconnect()
                item.done.set()
                if item.stop:
                    return

    def _write(self, batch: list[Row]) -> None:
        if not batch:
            return
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._url, vectors=False)
            with self._conn.transaction(), self._conn.cursor() as cur:
                for kind, sql_copy, types in (
                    ("query", _QUERY_COPY, _QUERY_TYPES),
                    ("feedback", _FEEDBACK_COPY, _FEEDBACK_TYPES),
                ):
                    rows = [values for k, values in batch if k == kind]
                    if rows:
                        with cur.copy(sql_copy) as copy:
                            copy.set_types(types)
                            for values in rows:
                                copy.write_row(values)
        except (psycopg.Error, DatabaseError) as exc:
            self._count("log_errors", 1)
            self._disconnect()
            logger.warning(
                "could not write %d query-log rows to %s (they are lost): %s",
                len(batch), redact_url(self._url), reason(exc, self._url),
            )
        else:
            self._count("logged", len(batch))

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
