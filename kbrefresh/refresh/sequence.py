"""The one refresh sequence, run by the CLI (plain calls) and by the flow (Prefect tasks).

``run_refresh`` owns the order of the steps, the KB's refresh lock, the timings, the
MLflow warm-up, the failure handling and the rejection check. It hands each step to a
**step runner**: ``DirectRunner`` calls it; ``tasks.PrefectStepRunner`` runs it as a
Prefect task named like the step, with retries and artifacts. A step's function name in
``steps`` is its task name and its key in ``RefreshReport.seconds``. Hooks see every
step start, finish or fail from inside the step (so a Prefect runner's hooks log to the
task run), plus embedding progress and the finished report. ``embed_changed`` is a
fan-out, not one call: ``plan_embedding`` cuts the work into batches and the runner's
``map`` runs ``embed_steps.embed_batch`` on each (``DirectRunner``: one after the other;
Prefect: tasks under global rate limits, ``embed_parallelism`` in flight), so its hooks
run in the caller. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from kbrefresh._faults import fault_point
from kbrefresh.build.budget import AdmittedBatches, BudgetGuard
from kbrefresh.build.embedding import NO_STATS, EmbedBatch, EmbedStats, ThrottleFn
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.build.ratelimit import RateLimits, rate_limits
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.embedders.throttled import ThrottledEmbedder
from kbrefresh.errors import GateFailed
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import BuildTicket
from kbrefresh.refresh import embed_steps, steps
from kbrefresh.refresh.chunk_steps import ChunkMap
from kbrefresh.refresh.report import RefreshReport, make_report
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs

__all__ = ["STEPS", "DirectRunner", "RefreshHooks", "RefreshReport", "StepRunner", "make_report",
           "run_refresh"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
X = TypeVar("X")

# In order; validate_candidate runs only after smoke checks passed, and a rejected
# candidate stops after record_build (no publish, no compaction). fail_build runs only
# after an error.
STEPS = ("begin_version", "prepare_data", "plan_build", "reuse_unchanged", "plan_embedding",
         "embed_changed", "finalize_version", "smoke_check", "validate_candidate",
         "publish_version", "record_build", "compact_index", "sync_aliases")


class RefreshHooks:
    """What a refresh tells its caller; every method does nothing unless overridden.

    ``step_*`` are called inside the step (a Prefect runner: inside its task run).
    """

    def refresh_started(self, request: RefreshRequest) -> None:
        """The refresh of ``request.kb`` begins (before the lock is taken)."""

    def step_started(self, step: str) -> None:
        """``step`` is about to run (again, on a retry)."""

    def step_finished(self, step: str, result: object) -> None:
        """``step`` returned ``result``."""

    def step_failed(self, step: str, error: BaseException) -> None:
        """``step`` raised ``error`` (it may still be retried)."""

    def embed_progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` texts are embedded and loaded."""

    def refreshed(self, report: RefreshReport) -> None:
        """The refresh published ``report.version``; called last, outside any step."""


class StepRunner(Protocol):
    """Runs one named step of a refresh; ``hooks`` are the runner's own (e.g. artifacts)."""

    flow_run_id: str | None
    hooks: RefreshHooks

    def run(self, step: str, call: Callable[[], T]) -> T: ...

    def map(
        self, step: str, call: Callable[[X], T], items: Sequence[X], *, parallelism: int
    ) -> Iterator[T]:
        """Run ``call`` on every item, at most ``parallelism`` at once; yield as they finish."""
        ...

    def throttle(self, limits: RateLimits) -> ThrottleFn | None:
        """Return what makes each embedding request wait for ``limits`` (None: nothing)."""
        ...


class DirectRunner:
    """Call each step in this process: no Prefect, no server (the CLI, tests, benchmarks).

    Batches run one after the other; provider rate limits are left to the client's
    retries (429 with Retry-After): one process sends one request at a time.
    """

    flow_run_id: str | None = None
    hooks: RefreshHooks = RefreshHooks()

    def run(self, step: str, call: Callable[[], T]) -> T:
        return call()

    def map(
        self, step: str, call: Callable[[X], T], items: Sequence[X], *, parallelism: int
    ) -> Iterator[T]:
        return (call(item) for item in items)

    def throttle(self, limits: RateLimits) -> ThrottleFn | None:
        return None


class _FanOut(RefreshHooks):
    def __init__(self, hooks: Sequence[RefreshHooks]) -> None:
        self.hooks = hooks

    def refresh_started(self, request: RefreshRequest) -> None:
        for hook in self.hooks:
            hook.refresh_started(request)

    def step_started(self, step: str) -> None:
        for hook in self.hooks:
            hook.step_started(step)

    def step_finished(self, step: str, result: object) -> None:
        for hook in self.hooks:
            hook.step_finished(step, result)

    def step_failed(self, step: str, error: BaseException) -> None:
        for hook in self.hooks:
            hook.step_failed(step, error)

    def embed_progress(self, done: int, total: int) -> None:
        for hook in self.hooks:
            hook.embed_progress(done, total)

    def refreshed(self, report: RefreshReport) -> None:
        for hook in self.hooks:
            hook.refreshed(report)


class _Stepper:
    """Run step functions through the runner, tell the hooks, time each under its name."""

    def __init__(self, runner: StepRunner, hooks: RefreshHooks) -> None:
        self.runner, self.hooks = runner, hooks
        self.seconds: dict[str, float] = {}
        # Called before each step under the KB's lock: a run that lost it must stop.
        self.guard: Callable[[], None] = _nothing

    def __call__(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        name, hooks = step.__name__, self.hooks
        self.guard()

        # The closure holds the hooks, not the stepper: a step's task may be serialized
        # with its context (a Dask fan-out inside it), and the stepper holds the KB lock's
        # connection.
        def call() -> T:
            hooks.step_started(name)
            try:
                result = step(*args, **kwargs)
            except BaseException as exc:
                hooks.step_failed(name, exc)
                raise
            hooks.step_finished(name, result)
            return result

        started = time.perf_counter()
        result = self.runner.run(name, call)
        self.seconds[name] = time.perf_counter() - started
        return result

    def embed(
        self, settings: Settings, ticket: BuildTicket, batches: Sequence[EmbedBatch],
        embedder: Embedder, *, total_texts: int, guard: BudgetGuard | None = None,
    ) -> EmbedStats:
        """Run ``embed_steps.embed_batch`` over ``batches`` through the runner, as ``embed_changed``.

        With a ``guard``, each batch is admitted by the build's budget before it is handed
        to the runner (so the check holds whatever process runs the batch).
        """
        name, stats = "embed_changed", NO_STATS
        self.guard()
        call = partial(embed_steps.embed_batch, settings, ticket, embedder=embedder)
        items = AdmittedBatches(batches, guard) if guard is not None else batches
        started = time.perf_counter()
        self.hooks.step_started(name)
        try:
            for done in self.runner.map("embed_batch", call, items,
                                        parallelism=settings.embed_parallelism):
                stats += done
                if guard is not None:
                    guard.batch_finished()
                self.hooks.embed_progress(stats.texts, total_texts)
        except BaseException as exc:
            self.hooks.step_failed(name, exc)
            raise
        self.hooks.step_finished(name, stats)
        self.seconds[name] = time.perf_counter() - started
        return stats


def run_refresh(
    settings: Settings,
    request: RefreshRequest,
    *,
    runner: StepRunner | None = None,
    hooks: RefreshHooks | None = None,
    embedder: Embedder | None = None,
    policy: AcceptancePolicy | None = None,
    quality: QualityPolicy | None = None,
    judge: steps.Judge | None = None,
    embed_first: Sequence[str] = (),
) -> RefreshReport:
    """Build a new version of ``request.kb`` from its source, validate it and swap it live.

    ``embedder``, ``policy`` and ``quality`` replace the configured embedder, the request's
    policy file and its quality limits (tests and benchmarks hold them as objects).
    ``judge`` replaces the validation gate and ``embed_first`` names documents whose
    chunks are embedded first (both used by a rebrand).

    Raises:
        DataQualityError: the source failed quality checks (nothing built).
        GateFailed: the candidate failed smoke checks or the validation gate (marked
            rejected; live untouched).
        BuildLockedError: another refresh of the KB is running.
        BudgetExceeded: the next embedding batch would pass the request's token or time
            budget (version failed, nothing published, finished batches reused next run).
    """
    started = time.monotonic()
    budget = request.budget(settings)
    runner = runner or DirectRunner()
    hooks = _FanOut([runner.hooks] + ([hooks] if hooks else []))
    step = _Stepper(runner, hooks)
    embedder = _throttled(settings, runner, embedder or make_embedder(settings))
    if policy is None:
        policy = request.acceptance_policy()
    fingerprint = steps.fingerprint_for(embedder, request.chunker(),
                                        storage=settings.embedding_storage)
    if request.publish:
        steps.refuse_during_rollout(settings, request.kb)
    hooks.refresh_started(request)
    with steps.refresh_lock(settings, request.kb, wait_seconds=request.lock_wait_seconds) as lock:
        step.guard = lock.check
        ticket = step(steps.begin_version, settings, request.kb, fingerprint,
                      source=request.source, flow_run_id=runner.flow_run_id)
        try:
            prepared = step(steps.prepare_data, settings, ticket, request.source,
                            query=request.query, chunker=request.chunker(),
                            quality=quality or request.quality_policy(),
                            profiles=request.profiles(), chunk_map=_chunk_map(settings, runner))
            plan = step(steps.plan_build, settings, ticket)
            reuse = step(steps.reuse_unchanged, settings, ticket)
            by_batch_api = (step(embed_steps.embed_with_batch_api, settings, ticket, plan,
                                 embedder=embedder) if settings.embed_batch_api else NO_STATS)
            batches = step(embed_steps.plan_embedding, settings, ticket,
                           first_doc_ids=embed_first)
            guard = (BudgetGuard(budget, kb=request.kb, started=started,
                                 plan_tokens=plan.estimated_tokens) if budget.active else None)
            stats = by_batch_api + step.embed(settings, ticket, batches, embedder,
                                              total_texts=plan.to_embed_texts, guard=guard)
            step.seconds["embed_only"] = stats.embed_seconds
            if settings.tracking:
                runs.warm_up()  # the steps below mostly wait on Postgres
            counts = steps.build_counts(prepared, plan, stats, reuse)
            step(steps.finalize_version, settings, ticket, counts)
            smoke = step(steps.smoke_check, settings, ticket, embedder=embedder)
            outcome = (step(steps.validate_candidate, settings, ticket, smoke=smoke, policy=policy,
                            judge=judge)
                       if smoke.passed else None)
        except BaseException as exc:
            step(steps.fail_build, settings, ticket, exc, source=request.source)
            raise

        def record() -> runs.BuildRecord:
            return step(steps.record_build, settings, ticket, source=request.source,
                        counts=counts, seconds=dict(step.seconds),
                        estimated_tokens=plan.estimated_tokens, outcome=outcome,
                        quality=prepared.quality)

        if outcome is None or not outcome.verdict.passed:
            record()
            raise GateFailed(steps.rejection_message(ticket, smoke, outcome),
                             verdict=outcome.as_dict() if outcome else smoke.as_dict())
        # Publishing does not wait for MLflow: the swap needs nothing it records.
        if request.publish:
            published = step(steps.publish_version, settings, ticket, reason=request.reason,
                             flow_run_id=runner.flow_run_id, keep_versions=request.keep_versions)
        else:
            published = step(steps.stage_version, settings, ticket)
        fault_point("published")
        build_record = record()
        if request.publish:
            # Off the critical path: the new version already serves while its segments merge.
            step(steps.compact_index, settings, request.kb)
        step.guard = _nothing
    registry_warning = step(steps.sync_aliases, settings, request.kb)
    report = make_report(ticket, prepared, plan, stats, reuse, published, step.seconds,
                         outcome=outcome, record=build_record, registry_warning=registry_warning)
    hooks.refreshed(report)
    return report


def _nothing() -> None:
    return None


def _chunk_map(settings: Settings, runner: StepRunner) -> ChunkMap | None:
    """Chunk batches through the runner when it has processes to spread them over (Dask)."""
    if settings.task_runner != "dask":
        return None
    return partial(runner.map, "chunk_batch", parallelism=settings.chunk_parallelism)


def _throttled(settings: Settings, runner: StepRunner, embedder: Embedder) -> Embedder:
    """Route every request of this refresh (batches, smoke checks, gate) through the limits."""
    throttle = runner.throttle(rate_limits(settings, embedder.provider))
    if throttle is None:
        return embedder
    return ThrottledEmbedder(embedder, throttle, batch_size=settings.embed_batch_size,
                             max_chars=settings.embed_batch_max_chars)
