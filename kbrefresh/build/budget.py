"""A build's cost and time budget: the playbook's "training time/cost budget".

A refresh may be given at most ``max_tokens`` tokens to send to the embedder and
``max_seconds`` of wall time. Both are checked *before* each embedding batch is
dispatched, from the plan's own estimate (``EmbedBatch.estimated_tokens``, the same
figure the plan announces), so a run stops before it would pass a limit, never after.
Batches already dispatched finish and are committed; the version is marked failed and
nothing is published; the next run reuses every finished batch by content hash. The
budget counts this run only: a rerun continues where the last one stopped.

The check runs where batches are handed out (the caller's process), so it holds for
every runner: plain calls, Prefect thread tasks, a Dask cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from kbrefresh.build.embedding import EmbedBatch
from kbrefresh.errors import BudgetExceeded


@dataclass(frozen=True)
class BuildBudget:
    """Limits of one refresh run; ``None`` means no limit."""

    max_tokens: int | None = None
    max_seconds: float | None = None

    @property
    def active(self) -> bool:
        return self.max_tokens is not None or self.max_seconds is not None


class BudgetGuard:
    """Admit batches while the run stays within ``budget``; raise ``BudgetExceeded`` otherwise.

    Args:
        budget: the limits.
        kb: the knowledge base (named in the error).
        started: ``clock()`` when the run began (time counts from there).
        plan_tokens: the plan's estimated tokens to embed (named in the error).
        clock: a monotonic clock in seconds (tests inject one).
    """

    def __init__(
        self, budget: BuildBudget, *, kb: str, started: float, plan_tokens: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget, self.kb, self.started = budget, kb, started
        self.plan_tokens, self.clock = plan_tokens, clock
        self.tokens = 0  # estimated tokens of the batches admitted so far
        self.admitted = 0
        self.finished = 0
        self._embed_started: float | None = None
        self._lock = threading.Lock()

    def admit(self, batch: EmbedBatch, total: int) -> None:
        """Charge ``batch`` to the budget, or raise if sending it could pass a limit."""
        with self._lock:
            now = self.clock()
            if self._embed_started is None:
                self._embed_started = now
            tokens = self.tokens + batch.estimated_tokens
            limit = self.budget.max_tokens
            if limit is not None and tokens > limit:
                raise BudgetExceeded(self._message(
                    f"token budget max_tokens={limit!r} would be exceeded: the next batch "
                    f"(~{batch.estimated_tokens} tokens) would bring this run to ~{tokens} "
                    f"tokens (plan: ~{self.plan_tokens})", total,
                    "raise --max-tokens / KBREFRESH_BUILD_MAX_TOKENS"))
            seconds = self.budget.max_seconds
            if seconds is not None:
                per_batch = (now - self._embed_started) / self.finished if self.finished else 0.0
                expected = now - self.started + per_batch
                if expected > seconds:
                    raise BudgetExceeded(self._message(
                        f"time budget max_seconds={seconds!r} would be exceeded: "
                        f"{now - self.started:.1f}s spent and the next batch takes "
                        f"~{per_batch:.1f}s", total,
                        "raise --max-seconds / KBREFRESH_BUILD_MAX_SECONDS"))
            self.tokens = tokens
            self.admitted += 1

    def batch_finished(self) -> None:
        with self._lock:
            self.finished += 1

    def _message(self, why: str, total: int, fix: str) -> str:
        return (
            f"refresh of {self.kb!r} stopped before embedding batch {self.admitted + 1} of "
            f"{total}: {why}; nothing was published, the {self.admitted} batches sent are "
            f"kept and the next run reuses them; {fix}, or rerun to continue"
        )


class AdmittedBatches(Sequence[EmbedBatch]):
    """``batches`` whose iteration asks ``guard`` before handing out each one."""

    def __init__(self, batches: Sequence[EmbedBatch], guard: BudgetGuard) -> None:
        self._batches, self._guard = batches, guard

    def __len__(self) -> int:
        return len(self._batches)

    @overload
    def __getitem__(self, index: int) -> EmbedBatch: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[EmbedBatch]: ...

    def __getitem__(self, index: int | slice) -> EmbedBatch | Sequence[EmbedBatch]:
        return self._batches[index]

    def __iter__(self) -> Iterator[EmbedBatch]:
        for batch in self._batches:
            self._guard.admit(batch, len(self._batches))
            yield batch
