"""The client a chatbot imports: route each query to the live or canary version, log it.

``Retriever`` needs only SELECT on the catalog and chunk tables (``kbrefresh_reader``)
and INSERT on ``query_log`` / ``feedback`` (``kbrefresh_logger``): it never migrates
or runs DDL. The routing row is cached for a few seconds, each version's table and
embedder for good (they never change). Log rows go through a bounded queue to a
daemon thread that COPYs them in batches, so logging can drop rows but can never
fail or slow a search.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Self

import numpy as np
import numpy.typing as npt
import psycopg

from kbrefresh import store
from kbrefresh._text import redact_url
from kbrefresh.db import database_url as default_database_url
from kbrefresh.embedders import Embedder, embedder_for_spec
from kbrefresh.errors import ConfigError, DatabaseError, KBRefreshError, VersionError
from kbrefresh.retraining.adapter import QueryAdapter, apply_adapters, load_adapters
from kbrefresh.retraining.rebrand_expansion import QueryExpander, query_expander
from kbrefresh.serving.lookup import check_embedder_matches
from kbrefresh.serving.querylog import LogWriter, Pool, reason
from kbrefresh.serving.search import Hit, search_version
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

SKETCH_DIMS = 64
# Fixed so that sketches logged by any process, today or next year, are comparable.
_SKETCH_SEED = 0x6B62_5345
_CANARY_BUCKETS = 10_000
_MAX_K = 1000
_MAX_TTL_SECONDS = 3600.0
_MAX_IDLE_CONNECTIONS = 8
_MAX_CACHED_VERSIONS = 32
_MAX_LOGGED_QUERY_CHARS = 10_000  # one pasted log file must not bloat query_log



@dataclass(frozen=True)
class SearchResult:
    """The hits of one query, the version that served them and the id to give feedback on."""

    query_id: str
    version: int
    hits: tuple[Hit, ...]
    latency_ms: float


@dataclass(frozen=True)
class _Routing:
    live: int | None
    canary: int | None
    canary_buckets: int  # sessions whose bucket is below this go to the canary
    expires_at: float


@dataclass(frozen=True)
class _Served:
    table: store.FingerprintTable
    embedder: Embedder
    # Old names in a query are rewritten to the names this version uses (a rebrand).
    expand: QueryExpander
    adapters: tuple[QueryAdapter, ...] = ()


def session_hash(kb: str, session_id: str) -> str:
    """Return the hex sha256 of a per-KB constant and ``session_id`` (never store it raw)."""
    return hashlib.sha256(f"kbrefresh-session\x00{kb}\x00{session_id}".encode()).hexdigest()


def canary_bucket(hashed_session: str) -> int:
    """Return the session's stable bucket in ``[0, 10000)``."""
    return int(hashed_session[:16], 16) % _CANARY_BUCKETS


@lru_cache(maxsize=8)
def _projection(dims: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(_SKETCH_SEED)
    matrix = rng.standard_normal((dims, SKETCH_DIMS))
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    out = matrix.astype(np.float32)
    out.setflags(write=False)
    return out


def query_sketch(vector: npt.NDArray[np.float32]) -> list[float]:
    """Project a query embedding onto 64 fixed random directions, L2-normalised."""
    sketch = np.asarray(vector, dtype=np.float32) @ _projection(int(vector.shape[0]))
    norm = float(np.linalg.norm(sketch))
    return (sketch / norm if norm > 0 else sketch).tolist()  # type: ignore[no-any-return]


class Retriever:
    """Search a knowledge base the way its routing says, and log queries and feedback.

    Args:
        kb: the knowledge base name.
        database_url: where to read (a ``kbrefresh_reader`` role is enough); default
            ``settings.database_url`` or the embedded server.
        log_database_url: where to write ``query_log`` / ``feedback`` (a
            ``kbrefresh_logger`` role is enough); default ``database_url``.
        routing_ttl_seconds: how long a routing row is trusted before it is re-read.
        embedder: use this embedder (it must match the served versions' fingerprint)
            instead of the one each fingerprint names.
        clock: a monotonic clock in seconds (tests inject one to expire the routing).
        version: search this version only (a staged candidate that passed the gate, for
            smoke tests by people) instead of following the routing.

    Raises:
        ConfigError: an argument is out of range.
        VersionError: ``kb`` does not exist.
        DatabaseError: the database is unreachable.
    """

    def __init__(
        self,
        kb: str,
        *,
        database_url: str | None = None,
        log_database_url: str | None = None,
        settings: Settings | None = None,
        routing_ttl_seconds: float = 5.0,
        log_batch_size: int = 200,
        log_flush_seconds: float = 1.0,
        embedder: Embedder | None = None,
        clock: Callable[[], float] = time.monotonic,
        version: int | None = None,
    ) -> None:
        _check_range("routing_ttl_seconds", routing_ttl_seconds, 0.0, _MAX_TTL_SECONDS)
        _check_range("log_batch_size", log_batch_size, 1, 100_000)
        _check_range("log_flush_seconds", log_flush_seconds, 0.01, 3600.0)
        self.kb = kb
        self._settings = settings or Settings()
        url = database_url or default_database_url(self._settings)
        self._pool = Pool(url)
        try:
            with self._pool.connection() as conn:
                self._kb_id = store.get_kb_id(conn, kb)
                if version is not None:
                    _check_servable(conn, self._kb_id, kb, version)
        except psycopg.Error as exc:
            self._pool.close()
            raise self._db_error(exc) from exc
        except KBRefreshError:
            self._pool.close()
            raise
        self._pinned = version
        self._ttl = float(routing_ttl_seconds)
        self._clock = clock
        self._embedder = embedder
        self._routing: _Routing | None = None
        self._served: dict[int, _Served] = {}
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._writer = LogWriter(log_database_url or url, log_batch_size, log_flush_seconds)
        # Also runs at interpreter exit, so queued log rows of an unclosed Retriever are written.
        self._shutdown = weakref.finalize(self, _shutdown, self._writer, self._pool)

    def search(self, query: str, k: int = 5, *, session_id: str | None = None) -> SearchResult:
        """Embed ``query`` and return the ``k`` best chunks of the version this session sees.

        Raises:
            ConfigError: empty query, ``k`` out of range, or a mismatched embedder.
            VersionError: the knowledge base has no live version.
            DatabaseError: the database is unreachable or refused the query.
        """
        started = time.perf_counter()
        self._check_open()
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"query {query!r} is empty; expected some words to search for")
        _check_range("k", k, 1, _MAX_K)
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ConfigError(f"session_id {session_id!r} is invalid; expected text or None")
        hashed = session_hash(self.kb, session_id if session_id else uuid.uuid4().hex)
        version = self._pick_version(canary_bucket(hashed))
        query_id = uuid.uuid4()
        try:
            served = self._serve(version)
            vector = served.embedder.embed([served.expand(query)])[0]
            # The version's query adapters move only their segment's queries.
            searched = apply_adapters([vector], served.adapters)[0]
            hits = self._pool.run(lambda conn: search_version(
                conn, served.table, version, searched, k, session_configured=True))
        except (psycopg.Error, KBRefreshError) as exc:
            # A failed search is logged too: rollouts and the monitor need its error rate.
            self._log(query_id, hashed, query, version, started, [], None, type(exc).__name__)
            if isinstance(exc, psycopg.Error):
                raise self._db_error(exc) from exc
            raise
        latency_ms = self._log(query_id, hashed, query, version, started, hits,
                               query_sketch(vector), None)
        return SearchResult(str(query_id), version, tuple(hits), latency_ms)

    def _log(
        self, query_id: uuid.UUID, hashed: str, query: str, version: int, started: float,
        hits: list[Hit], sketch: list[float] | None, error: str | None,
    ) -> float:
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._writer.put(("query", (
            query_id, self._kb_id, datetime.now(UTC), hashed,
            query[:_MAX_LOGGED_QUERY_CHARS].replace("\x00", "\ufffd"), version, latency_ms,
            [h.doc_id for h in hits], hits[0].similarity if hits else None, sketch, error,
        )))
        return latency_ms

    def feedback(
        self, query_id: str | uuid.UUID, *, rating: int | None = None, thumbs: bool | None = None
    ) -> None:
        """Queue a rating (1 to 5) and/or thumbs up/down for the query ``query_id``."""
        self._check_open()
        try:
            qid = query_id if isinstance(query_id, uuid.UUID) else uuid.UUID(str(query_id))
        except ValueError as exc:
            raise ConfigError(
                f"query_id {query_id!r} is not a UUID; expected a SearchResult.query_id"
            ) from exc
        if rating is None and thumbs is None:
            raise ConfigError("feedback needs a rating (1 to 5) or thumbs (True or False); got neither")
        if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):
            raise ConfigError(f"rating {rating!r} is invalid; expected an int from 1 to 5")
        if thumbs is not None and not isinstance(thumbs, bool):
            raise ConfigError(f"thumbs {thumbs!r} is invalid; expected True or False")
        self._writer.put(("feedback", (qid, self._kb_id, datetime.now(UTC), rating, thumbs)))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every log row queued so far is written (or its write failed)."""
        if not self._closed and not self._writer.flush(timeout):
            logger.warning("query-log rows still queued after %.1f s", timeout)

    def close(self) -> None:
        """Write queued log rows, stop the log thread and close connections."""
        self._closed = True
        self._shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``retriever.logged``, ``retriever.log_errors``, ``retriever.dropped``."""
        return {f"retriever.{name}": n for name, n in self._writer.snapshot().items()}

    @property
    def logged(self) -> int:
        return self.stats["retriever.logged"]

    @property
    def log_errors(self) -> int:
        return self.stats["retriever.log_errors"]

    @property
    def dropped(self) -> int:
        return self.stats["retriever.dropped"]

    def _check_open(self) -> None:
        if self._closed:
            raise KBRefreshError(f"the Retriever of {self.kb!r} is closed; create a new one")

    def _db_error(self, exc: psycopg.Error) -> DatabaseError:
        url = self._pool.url
        return DatabaseError(
            f"reading {self.kb!r} from {redact_url(url)} failed: {reason(exc, url)}"
        )

    def _pick_version(self, bucket: int) -> int:
        if self._pinned is not None:
            return self._pinned
        routing = self._routing
        if routing is None or self._clock() >= routing.expires_at:
            routing = self._read_routing()
        if routing.live is None:
            raise VersionError(f"knowledge base {self.kb!r} has no live version yet; run a refresh first")
        if routing.canary is not None and bucket < routing.canary_buckets:
            return routing.canary
        return routing.live

    def _read_routing(self) -> _Routing:
        with self._lock:
            routing = self._routing
            if routing is not None and self._clock() < routing.expires_at:
                return routing  # another thread re-read it while we waited
            try:
                row = self._pool.run(lambda conn: conn.execute(
                    "SELECT live_version, canary_version, canary_percent FROM kb_routing"
                    " WHERE kb_id = %s", (self._kb_id,),
                ).fetchone())
            except psycopg.Error as exc:
                raise self._db_error(exc) from exc
            if row is None:
                raise VersionError(f"knowledge base {self.kb!r} has no routing row; run a refresh first")
            percent = float(row["canary_percent"] or 0)
            routing = _Routing(
                live=row["live_version"],
                canary=row["canary_version"],
                canary_buckets=round(percent * _CANARY_BUCKETS / 100),
                expires_at=self._clock() + self._ttl,
            )
            self._routing = routing
            # Re-read each version's segments too: a compaction raises main_upto (a stale
            # one stays correct, its exact branch is only larger).
            self._served.clear()
            return routing

    def _serve(self, version: int) -> _Served:
        served = self._served.get(version)
        if served is not None:
            return served
        with self._lock:
            try:
                fp, adapters, expand = self._pool.run(lambda conn: (
                    store.fingerprint_for_version(conn, self._kb_id, version),
                    load_adapters(conn, self._kb_id, version),
                    query_expander(conn, self._kb_id, version)))
            except psycopg.Error as exc:
                raise self._db_error(exc) from exc
            if self._embedder is not None:
                check_embedder_matches(self._embedder, fp.spec, kb=self.kb, version=version)
            embedder = self._embedder or self._embedders.get(fp.key)
            if embedder is None:
                embedder = self._embedders[fp.key] = embedder_for_spec(self._settings, fp.spec)
            served = _Served(fp, embedder, expand, adapters)
            if len(self._served) >= _MAX_CACHED_VERSIONS:
                self._served.pop(next(iter(self._served)))
            self._served[version] = served
            return served


def _shutdown(writer: LogWriter, pool: Pool) -> None:
    if not writer.flush(10.0, stop=True):
        logger.warning("query-log thread did not stop within 10 s; queued rows are lost")
    pool.close()


_SERVABLE = ("candidate", "canary", "live", "retired")


def _check_servable(conn: store.Conn, kb_id: int, kb: str, version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"version {version!r} is invalid; expected a version number")
    status = store.version_row(conn, kb_id, version).status
    if status not in _SERVABLE:
        raise VersionError(
            f"version {version} of {kb!r} is {status.value!r}; only a version in "
            f"{', '.join(map(repr, _SERVABLE))} can be searched explicitly"
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    kind = int if isinstance(low, int) else int | float
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        expected = "an int" if kind is int else "a number"
        raise ConfigError(f"{name} {value!r} is out of range; expected {expected} from {low} to {high}")
