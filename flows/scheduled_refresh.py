"""The scheduled refresh: rebuild a knowledge base from its source, validate it, swap it live."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, Field, model_validator

import tasks
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.store import validate_kb_name


class RefreshParameters(BaseModel):
    """Which knowledge base to refresh from which source, and the limits the run respects."""

    kb: Annotated[str, AfterValidator(validate_kb_name)] = Field(
        min_length=1, max_length=55, description="Knowledge base name")
    source: str = Field(min_length=1, description="Directory, .csv/.parquet or SQLAlchemy URL")
    query: str | None = Field(default=None, description="SQL, when the source is a URL")
    max_chars: int = Field(default=1200, ge=100, le=8000, description="Largest chunk (chars)")
    overlap_chars: int = Field(default=150, ge=0, le=2000, description="Overlap (chars)")
    header_template: str = Field(default=ChunkerConfig().header_template, min_length=6)
    max_shrink: float = Field(default=0.2, ge=0, le=1, description="Max share of docs lost")
    max_age_days: float | None = Field(default=365.0, gt=0, description="Max newest-doc age")
    keep_versions: int = Field(default=2, ge=1, le=20, description="Kept for rollback")
    lock_wait_seconds: float = Field(default=0, ge=0, le=3600, description="Wait for a run")
    reason: str = Field(default="scheduled refresh", min_length=1, max_length=500)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RefreshParameters:
        if self.overlap_chars >= self.max_chars:
            raise ValueError(f"overlap_chars ({self.overlap_chars}) must be below "
                             f"max_chars ({self.max_chars})")
        return self

    def chunker(self) -> ChunkerConfig:
        return ChunkerConfig(max_chars=self.max_chars, overlap_chars=self.overlap_chars,
                             header_template=self.header_template)

    def quality_policy(self) -> QualityPolicy:
        return QualityPolicy(max_shrink=self.max_shrink, max_age_days=self.max_age_days)


@flow(name="scheduled-refresh")
def scheduled_refresh(params: RefreshParameters) -> dict[str, Any]:
    """Rebuild a knowledge base from its source, validate it and swap it live (blue/green).

    Bad data (empty source, short or duplicate documents, a source that shrank by more
    than max_shrink, stale content) stops the run before anything is embedded: live keeps
    serving and the artifact kbrefresh-quality-<kb> lists which documents failed and why.
    Only new or changed chunks are embedded; unchanged vectors are reused in Postgres. A new
    embedding fingerprint (model, dims, chunking) means a full re-embed, announced with its
    chunk count and estimated tokens first. The candidate must pass smoke checks and the
    validation gate against live on golden queries (kbrefresh-smoke-<kb>, kbrefresh-gate-<kb>,
    kbrefresh-verdict-<kb>); if not, it is rejected and live keeps serving. Every build is an
    MLflow run; a published version is a registered model version with alias champion.
    Summary: artifact kbrefresh-refresh-<kb>.
    Undo a swap with the rollback-kb deployment.
    """
    run_id, clock = flow_run.id, tasks.Stopwatch()
    with tasks.hold_refresh_lock(params.kb, params.lock_wait_seconds):
        ticket = tasks.begin_version(params.kb, params.source, params.chunker(), run_id)
        try:
            with clock("prepare"):
                prepared = tasks.prepare_dataset(ticket, params.source, params.query,
                                                 params.chunker(), params.quality_policy())
            plan = tasks.plan_version(ticket)
            with clock("reuse"):
                reuse = tasks.reuse_unchanged_chunks(ticket)
            with clock("embed_and_load"):
                stats = tasks.embed_changed_chunks(ticket, plan.to_embed_texts)
            with clock("index"):
                tasks.finalize_version(ticket, prepared, plan, stats, reuse)
            with clock("smoke"):
                smoke = tasks.smoke_check_version(ticket)
            with clock("gate"):
                outcome = tasks.validate_candidate_version(ticket, smoke)
        except BaseException as exc:
            tasks.mark_build_failed(ticket, exc, params.source)  # no-op if already rejected
            raise
        record = tasks.record_build_run(ticket, params.source, prepared, plan, stats, reuse,
                                        outcome, clock.seconds)
        tasks.raise_if_rejected(ticket, smoke, outcome)  # GateFailed: live untouched
        with clock("publish"):
            published = tasks.swap_live_version(ticket, params.reason, run_id, params.keep_versions)
    aliases = tasks.sync_registry_aliases(params.kb)
    return tasks.report_refresh(ticket, prepared, plan, stats, reuse, published, clock.seconds,
                                outcome, record, aliases)
