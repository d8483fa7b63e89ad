"""One whole refresh of a knowledge base, for the CLI, the demo and tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kbrefresh.build.embedding import EmbedStats, ProgressFn
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.build.staging import BuildPlan
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import GateFailed
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.verdict import Verdict
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps as pipeline
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did, in numbers a person can check."""

    kb: str
    version: int
    dataset_tag: str
    resumed: bool
    documents: int
    chunks: int
    documents_new: int
    documents_changed: int
    documents_deleted: int
    chunks_embedded: int
    texts_embedded: int
    chunks_reused: int
    chunks_removed: int
    full_build: bool
    estimated_tokens: int
    from_version: int | None
    live_version: int
    archived: list[int]
    verdict: Verdict | None = None
    golden: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kb!r} v{self.version} ({self.dataset_tag}) is live"
            f"{f' (was v{self.from_version})' if self.from_version else ''}: "
            f"{self.documents} documents, {self.chunks} chunks; embedded {self.chunks_embedded}, "
            f"reused {self.chunks_reused}, removed {self.chunks_removed}"
        )


def refresh(
    settings: Settings,
    kb: str,
    source: str,
    *,
    query: str | None = None,
    chunker: ChunkerConfig | None = None,
    quality: QualityPolicy | None = None,
    embedder: Embedder | None = None,
    keep_versions: int | None = None,
    policy: AcceptancePolicy | None = None,
    lock_wait_seconds: float = 0.0,
    reason: str = "refresh",
    flow_run_id: str | None = None,
    on_plan: Callable[[BuildPlan], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> RefreshReport:
    """Build a new version of ``kb`` from ``source``, validate it and swap it live.

    Raises:
        DataQualityError: the source failed quality checks (nothing built).
        GateFailed: the candidate failed smoke checks or the validation gate (marked
            rejected; live untouched).
        BuildLockedError: another refresh of ``kb`` is running.
    """
    embedder = embedder or make_embedder(settings)
    chunker = chunker or ChunkerConfig()
    fingerprint = pipeline.fingerprint_for(embedder, chunker)
    seconds: dict[str, float] = {}
    with pipeline.refresh_lock(settings, kb, wait_seconds=lock_wait_seconds):
        t = time.perf_counter()
        ticket = pipeline.begin_build(settings, kb, fingerprint, source=source, flow_run_id=flow_run_id)
        seconds["begin"] = time.perf_counter() - t
        try:
            t = time.perf_counter()
            prepared = pipeline.prepare_data(settings, ticket, source, query=query, chunker=chunker,
                                             quality=quality)
            seconds["prepare"] = time.perf_counter() - t
            t = time.perf_counter()
            plan = pipeline.plan_build(settings, ticket)
            seconds["plan"] = time.perf_counter() - t
            if on_plan:
                on_plan(plan)
            t = time.perf_counter()
            closed, copied = pipeline.reuse_unchanged(settings, ticket)
            seconds["reuse"] = time.perf_counter() - t
            t = time.perf_counter()
            stats = pipeline.embed_changed(settings, ticket, embedder=embedder,
                                           total_texts=plan.to_embed_texts, on_progress=on_progress)
            seconds["embed_and_load"] = time.perf_counter() - t
            seconds["embed_only"] = stats.embed_seconds
            if settings.tracking:
                records.warm_up()  # index, smoke and gate below mostly wait on Postgres
            t = time.perf_counter()
            counts = pipeline.build_counts(prepared, plan, stats, (closed, copied))
            pipeline.finalize_build(settings, ticket, counts)
            seconds["index"] = time.perf_counter() - t
            t = time.perf_counter()
            smoke = pipeline.smoke_validate(settings, ticket, embedder=embedder)
            seconds["smoke"] = time.perf_counter() - t
            t = time.perf_counter()
            gate = None
            if smoke.passed:
                gate = pipeline.validate_candidate(settings, ticket, smoke=smoke, policy=policy)
            seconds["gate"] = time.perf_counter() - t
        except BaseException as exc:
            pipeline.fail_build(settings, ticket, exc)
            if settings.tracking and isinstance(exc, Exception):  # every build is a run
                records.record_failure(settings, ticket, source=source, error=exc)
            raise
        t = time.perf_counter()
        record = (records.record_build(
            settings, ticket, source=source, counts=counts, seconds=seconds, estimated_tokens=plan.estimated_tokens, outcome=gate,
            quality=prepared.quality) if settings.tracking else records.BuildRecord(None, None))
        seconds["track"] = time.perf_counter() - t
        if gate is None or not gate.verdict.passed:
            raise GateFailed(pipeline.rejection_message(ticket, smoke, gate),
                             verdict=gate.as_dict() if gate else smoke.as_dict())
        t = time.perf_counter()
        published = pipeline.publish(settings, ticket, reason=reason, flow_run_id=flow_run_id,
                                     keep_versions=keep_versions)
        seconds["publish"] = time.perf_counter() - t
    t = time.perf_counter()
    registry_warning = records.sync_aliases(settings, kb) if settings.tracking else None
    seconds["registry"] = time.perf_counter() - t
    return make_report(ticket, prepared, plan, stats, (closed, copied), published, seconds,
                       outcome=gate, record=record, registry_warning=registry_warning)


def make_report(
    ticket: pipeline.BuildTicket,
    prepared: pipeline.PrepareResult,
    plan: BuildPlan,
    stats: EmbedStats,
    reuse: tuple[int, int],
    published: pipeline.PublishResult,
    seconds: dict[str, float],
    *,
    outcome: GateOutcome | None,
    record: records.BuildRecord,
    registry_warning: str | None,
) -> RefreshReport:
    """Assemble the report of a published refresh from its steps' results."""
    closed, copied = reuse
    return RefreshReport(
        kb=ticket.kb, version=ticket.version, dataset_tag=prepared.dataset_tag,
        resumed=ticket.resumed, documents=prepared.documents, chunks=prepared.chunks,
        documents_new=prepared.changes.new, documents_changed=prepared.changes.changed,
        documents_deleted=prepared.changes.deleted, chunks_embedded=stats.rows,
        texts_embedded=stats.texts, chunks_reused=plan.unchanged + copied, chunks_removed=closed,
        full_build=plan.full_build, estimated_tokens=plan.estimated_tokens,
        from_version=published.from_version, live_version=published.to_version,
        archived=published.archived, verdict=outcome.verdict if outcome else None,
        golden=outcome.evaluation.golden if outcome else "", seconds=seconds,
        mlflow_run_id=record.run_id, model_version=record.model_version,
        warnings=[w for w in (record.warning, registry_warning) if w],
    )
