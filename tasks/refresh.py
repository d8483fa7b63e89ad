"""The refresh on Prefect: each step of ``kbrefresh.refresh.sequence`` as a task named like it.

``PrefectStepRunner`` runs every step as a Prefect task (retries for transient errors
only, see ``tasks._common``) and tells operators what happened: task-run logs, the
progress artifact ``kbrefresh-embed-<kb>``, ``kbrefresh-quality-<kb>`` when data fails
its checks, ``kbrefresh-smoke-<kb>``, ``kbrefresh-verdict-<kb>``, ``kbrefresh-gate-<kb>``
and the summary ``kbrefresh-refresh-<kb>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect import Task, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from kbrefresh import store
from kbrefresh.build.embedding import EmbedStats, ThrottleFn
from kbrefresh.build.ratelimit import RateLimits
from kbrefresh.build.staging import BuildPlan
from kbrefresh.errors import DataQualityError
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.gate.smoke import SmokeResult
from kbrefresh.models import BuildTicket
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshHooks, RefreshReport
from kbrefresh.refresh.steps import PrepareResult, PublishResult
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs
from kbrefresh.tracking.reports import comparison_markdown
from tasks._common import ROUTING_TASK_OPTIONS, TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings
from tasks.embedding import acquire_rate_limits, fan_out
from tasks.refresh_artifacts import quality_markdown, refresh_markdown, smoke_markdown

T = TypeVar("T")
X = TypeVar("X")
# Tracking never fails a run (failures come back as warnings), so retries buy nothing;
# a swap that lost its connection may have committed, so it retries only unconnected.
STEP_OPTIONS: dict[str, dict[str, Any]] = {
    "record_build": TASK_OPTIONS | {"retries": 0},
    "sync_aliases": TASK_OPTIONS | {"retries": 0},
    "publish_version": ROUTING_TASK_OPTIONS,
}
# At most one progress update a second: a fast offline embedder must not flood the API.
_MIN_UPDATE_SECONDS = 1.0


class PrefectStepRunner:
    """Run each refresh step as a Prefect task named like the step; publish its artifacts.

    Embedding batches fan out as ``embed_batch-<n>`` tasks on the task runner that
    ``settings`` name (threads, or Dask), under the provider's global rate limits.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.flow_run_id: str | None = flow_run.id
        self.hooks: RefreshHooks = PrefectHooks()
        self.settings = settings or flow_settings()

    def run(self, step: str, call: Callable[[], T]) -> T:
        options = STEP_OPTIONS.get(step, TASK_OPTIONS)
        return Task(call, name=step, task_run_name=step, **options)()

    def map(
        self, step: str, call: Callable[[X], T], items: Sequence[X], *, parallelism: int
    ) -> Iterator[T]:
        return fan_out(self.settings, step, call, items, parallelism=parallelism)

    def throttle(self, limits: RateLimits) -> ThrottleFn | None:
        return partial(acquire_rate_limits, limits) if limits.active else None


class PrefectHooks(RefreshHooks):
    """Log each step to its task run and publish the artifacts operators look at."""

    def __init__(self) -> None:
        self.source = ""
        self.ticket: BuildTicket | None = None
        self.error: BaseException | None = None
        self._progress: UUID | None = None
        self._last_update = 0.0

    def refresh_started(self, request: RefreshRequest) -> None:
        self.source = request.source

    def step_started(self, step: str) -> None:
        if step == "embed_changed" and self.ticket is not None:
            # Sync code has no running event loop: async_dispatch returns the id itself.
            self._progress = cast(UUID, create_progress_artifact(
                0.0, key=artifact_key("embed", self.ticket.kb),
                description=f"Embedding new or changed texts of {self.ticket.kb!r} "
                f"v{self.ticket.version}",
            ))
            self._last_update = time.monotonic()

    def embed_progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._progress is None or (done < total and now - self._last_update < _MIN_UPDATE_SECONDS):
            return
        self._last_update = now
        update_progress_artifact(self._progress, _percent(done, total))

    def step_finished(self, step: str, result: object) -> None:
        if isinstance(result, BuildTicket):
            self.ticket = result
        publish = _AFTER.get(step)
        if publish is not None and self.ticket is not None:
            publish(self, self.ticket, result)

    def step_failed(self, step: str, error: BaseException) -> None:
        self.error = error
        if step == "prepare_data" and isinstance(error, DataQualityError) and self.ticket:
            create_markdown_artifact(
                quality_markdown(self.ticket, self.source, error),
                key=artifact_key("quality", self.ticket.kb),
                description=f"Data-quality failure of {self.ticket.kb!r} v{self.ticket.version}",
            )
            get_run_logger().error("%s", error)

    def refreshed(self, report: RefreshReport) -> None:
        create_markdown_artifact(refresh_markdown(report), key=artifact_key("refresh", report.kb),
                                 description=report.summary())
        get_run_logger().info("%s", report.summary())


def _percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else min(100.0, round(100.0 * done / total, 1))


def _began(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    get_run_logger().info(
        "%s version %d of %r (fingerprint %s); live is %s",
        "resuming" if ticket.resumed else "building", ticket.version, ticket.kb,
        ticket.fingerprint_key, f"v{ticket.live_version}" if ticket.live_version else "none yet",
    )


def _prepared(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    prepared = cast(PrepareResult, result)
    changes, logger = prepared.changes, get_run_logger()
    logger.info(
        "prepared %s: %d documents (%d new, %d changed, %d unchanged, %d deleted), %d chunks",
        prepared.dataset_tag, prepared.documents, changes.new, changes.changed,
        changes.unchanged, changes.deleted, prepared.chunks,
    )
    for issue in prepared.quality.get("issues", []):
        logger.warning("data quality %s: %s", issue["check"], issue["message"])


def _planned(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    plan, logger = cast(BuildPlan, result), get_run_logger()
    logger.info(
        "plan for v%d: %d chunks, %d unchanged, %d reusable, %d to embed (%d texts, ~%d tokens), "
        "%d replaced",
        ticket.version, plan.chunks_total, plan.unchanged, plan.reusable, plan.to_embed_chunks,
        plan.to_embed_texts, plan.estimated_tokens, plan.replaced,
    )
    if ticket.fingerprint_changed:
        logger.warning(
            "embedding fingerprint changed (%s -> %s): this is a full build into a new table; "
            "%d chunks will be embedded, about %d tokens",
            ticket.live_fingerprint_key, ticket.fingerprint_key, plan.to_embed_chunks,
            plan.estimated_tokens,
        )


def _reused(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    closed, copied = cast(tuple[int, int], result)
    get_run_logger().info("reused in Postgres: %d rows closed, %d vectors copied", closed, copied)


def _embedded(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    stats = cast(EmbedStats, result)
    if hooks._progress is not None:
        update_progress_artifact(hooks._progress, 100.0)
    get_run_logger().info(
        "embedded %d texts into %d rows (embed %.2fs, load %.2fs)",
        stats.texts, stats.rows, stats.embed_seconds, stats.load_seconds,
    )


def _finalized(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    get_run_logger().info("v%d is a candidate: %s", ticket.version, result)


def _smoke_checked(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    smoke = cast(SmokeResult, result)
    verdict = "passed" if smoke.passed else "failed"
    create_markdown_artifact(
        smoke_markdown(ticket, smoke), key=artifact_key("smoke", ticket.kb),
        description=f"Smoke checks of {ticket.kb!r} v{ticket.version}: {verdict}",
    )
    if smoke.passed:
        get_run_logger().info("v%d passed %d smoke checks", ticket.version, len(smoke.checks))
    else:
        get_run_logger().error("v%d failed smoke checks: %s", ticket.version,
                               "; ".join(smoke.failures))


def _validated(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    outcome = cast(GateOutcome, result)
    passed = "passed" if outcome.verdict.passed else "failed"
    create_table_artifact(
        [asdict(rule) for rule in outcome.verdict.rules], key=artifact_key("verdict", ticket.kb),
        description=f"Validation rules of {ticket.kb!r} v{ticket.version}: {passed}",
    )
    create_markdown_artifact(
        comparison_markdown(ticket.kb, ticket.version, outcome, runs.CHART),
        key=artifact_key("gate", ticket.kb),
        description=f"Validation gate of {ticket.kb!r} v{ticket.version}: {passed}",
    )
    get_run_logger().info("validation gate: %s", outcome.verdict.summary)


def _recorded(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    record = cast(runs.BuildRecord, result)
    if record.warning:
        get_run_logger().warning("%s", record.warning)
    elif record.run_id:
        get_run_logger().info("MLflow run %s, model version %s", record.run_id,
                              record.model_version)


def _published(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    published = cast(PublishResult, result)
    get_run_logger().info(
        "%r: live v%s -> v%d; archived %s", ticket.kb, published.from_version,
        published.to_version, published.archived or "nothing",
    )


def _compacted(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    placed = cast(store.Placement, result)
    if placed.action == "compacted":
        get_run_logger().info("merged %d rows past the main index of %r into it in %.1f s",
                              placed.delta_rows, ticket.kb, placed.index_seconds)
    elif placed.action == "failed":
        get_run_logger().warning("compaction of %r failed; its segments stay searchable", ticket.kb)


def _synced(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    if result:
        get_run_logger().warning("%s", result)


def _failed(hooks: PrefectHooks, ticket: BuildTicket, result: object) -> None:
    error = hooks.error
    get_run_logger().error("v%d of %r failed (%s: %s); live version %s keeps serving",
                           ticket.version, ticket.kb, type(error).__name__, error,
                           ticket.live_version)


_AFTER: dict[str, Callable[[PrefectHooks, BuildTicket, object], None]] = {
    "begin_version": _began,
    "prepare_data": _prepared,
    "plan_build": _planned,
    "reuse_unchanged": _reused,
    "embed_changed": _embedded,
    "finalize_version": _finalized,
    "smoke_check": _smoke_checked,
    "validate_candidate": _validated,
    "record_build": _recorded,
    "publish_version": _published,
    "compact_index": _compacted,
    "sync_aliases": _synced,
    "fail_build": _failed,
}
