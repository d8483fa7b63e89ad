"""What every task shares: which errors are worth a retry, artifact keys, markdown escaping."""

from __future__ import annotations

from typing import Any

import openai
import psycopg
from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from kbrefresh._text import slug
from kbrefresh.embedders.openai import CLIENT_MAX_RETRY_AFTER, retry_after
from kbrefresh.errors import (
    BudgetExceeded,
    BuildLockedError,
    ConfigError,
    DatabaseError,
    DataQualityError,
    GateFailed,
    MigrationError,
    SourceError,
    VersionError,
)

# Errors that a second attempt cannot fix: bad data, bad config, a failed gate,
# a held lock, a version in the wrong state.
_PERMANENT = (
    BudgetExceeded,
    DataQualityError,
    GateFailed,
    ConfigError,
    BuildLockedError,
    VersionError,
    SourceError,
    MigrationError,
)


def is_transient(exc: BaseException) -> bool:
    """Return whether ``exc`` is worth retrying: a dropped connection, 429, 5xx or a timeout.

    kbrefresh wraps driver and client errors (``raise ... from exc``), so the cause
    chain is walked: a ``DatabaseError`` caused by a psycopg ``OperationalError`` is
    transient, one caused by a missing pgvector extension is not; an
    ``EmbeddingError`` caused by an OpenAI timeout, connection error, 429 or 5xx is
    transient, one caused by wrong dimensions or a 401 is not.
    """
    if isinstance(exc, _PERMANENT):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.OperationalError | TimeoutError | ConnectionError):
            return True
        if isinstance(current, openai.APITimeoutError | openai.APIConnectionError):
            return True
        if isinstance(current, openai.APIStatusError):
            # A server asking for a longer wait than the client allows is not retried
            # sooner by a task either (the next attempt would only be refused again).
            wait = retry_after(current)
            if wait is not None and wait > CLIENT_MAX_RETRY_AFTER:
                return False
            return current.status_code == 429 or current.status_code >= 500
        current = current.__cause__
    return False


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """``retry_condition_fn`` for every kbrefresh task: retry transient errors only."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def retry_unconnected(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """``retry_condition_fn`` for routing changes: retry only when no connection was opened.

    A swap or rollback that lost its connection may already have committed; running
    it again could move traffic twice, so only "could not connect" is retried.
    """
    error = state.result(raise_on_failure=False)
    cause = error.__cause__ if isinstance(error, DatabaseError) else None
    return isinstance(cause, psycopg.OperationalError) and not isinstance(
        cause, psycopg.errors.LockNotAvailable
    )


# Side-effecting database tasks must never be served from a cache.
TASK_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
}
ROUTING_TASK_OPTIONS: dict[str, Any] = TASK_OPTIONS | {"retry_condition_fn": retry_unconnected}


def artifact_key(kind: str, kb: str) -> str:
    """Return an artifact key for ``kb``: lowercase letters, digits and dashes only.

    The KB part is :func:`kbrefresh._text.slug`, the same name MLflow uses.
    """
    return f"kbrefresh-{kind}-{slug(kb)}"
