"""The embedding fan-out on Prefect: batches as tasks, provider limits as global rate limits.

``fan_out`` submits ``embed_batch`` tasks to a task runner of its own (threads, or Dask
with ``KBREFRESH_TASK_RUNNER=dask``) and keeps at most ``embed_parallelism`` of them in
flight, so memory stays bounded whatever the KB's size. ``acquire_rate_limits`` makes
each request wait on the Prefect server's global concurrency limits
``embed-<provider>-requests`` and ``embed-<provider>-tokens`` (slots that decay, i.e.
rate limits): every flow run and every worker that talks to the same Prefect server
shares them, so together they stay under the provider's per-minute limits.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prefect import Task
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import rate_limit
from prefect.exceptions import ObjectAlreadyExists
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from kbrefresh.build.ratelimit import Bucket, RateLimits
from kbrefresh.errors import ConfigError
from kbrefresh.settings import Settings
from tasks._common import TASK_OPTIONS

T = TypeVar("T")
X = TypeVar("X")

# Limits this process already created or updated (once each, not once per batch).
_ensured: set[Bucket] = set()
_ensuring = threading.Lock()


def ensure_limits(limits: RateLimits) -> None:
    """Create or update the provider's global rate limits on the Prefect server."""
    wanted = [b for b in (limits.requests, limits.tokens) if b is not None and b not in _ensured]
    if not wanted:
        return
    with _ensuring, get_client(sync_client=True) as client:
        for b in wanted:
            try:
                client.upsert_global_concurrency_limit_by_name(
                    b.name, b.server_limit, slot_decay_per_second=b.server_decay)
            except ObjectAlreadyExists:
                # Another flow run created it between our read and create: update it.
                client.upsert_global_concurrency_limit_by_name(
                    b.name, b.server_limit, slot_decay_per_second=b.server_decay)
            _ensured.add(b)


def acquire_rate_limits(limits: RateLimits, requests: int, tokens: int) -> None:
    """Block until ``requests`` request slots and ``tokens`` token slots are granted."""
    ensure_limits(limits)
    if limits.requests is not None:
        occupy = min(requests, limits.requests.slots) * limits.requests.unit
        rate_limit(limits.requests.name, occupy=occupy, strict=True)
    if limits.tokens is not None:
        # A single text longer than the bucket is refused by the embedder anyway.
        occupy = max(1, min(tokens, limits.tokens.slots)) * limits.tokens.unit
        rate_limit(limits.tokens.name, occupy=occupy, strict=True)


def make_task_runner(settings: Settings, parallelism: int) -> TaskRunner[Any]:
    """Return the task runner the fan-out uses: threads, or Dask (``task_runner="dask"``).

    Raises:
        ConfigError: Dask was asked for but prefect-dask is not installed.
    """
    if settings.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=parallelism)
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "KBREFRESH_TASK_RUNNER='dask' needs prefect-dask; install it with "
            "pip install 'kbrefresh[dask]'"
        ) from exc
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None,
    })


def fan_out(
    settings: Settings, step: str, call: Callable[[X], T], items: Sequence[X], *, parallelism: int
) -> Iterator[T]:
    """Run ``call`` on each item as a task named ``<step>-<n>``; yield results in order.

    At most ``parallelism`` tasks are submitted and unfinished at any time.
    """
    if not items:
        return
    task: Task[..., T] = Task(call, name=step, **TASK_OPTIONS)
    parameter = next(iter(inspect.signature(call).parameters))
    pending: deque[PrefectFuture[T]] = deque()
    with make_task_runner(settings, parallelism) as runner:
        for number, item in enumerate(items):
            if len(pending) >= parallelism:
                yield pending.popleft().result()
            named = task.with_options(task_run_name=f"{step}-{number}")
            pending.append(runner.submit(named, parameters={parameter: item}))
        while pending:
            yield pending.popleft().result()
