"""Build a candidate that stops before going live, for a canary or A/B to deliver.

The same steps as ``refresh.sequence.refresh`` up to the gate; the candidate stays
``candidate`` (searchable with ``Retriever(kb, version=N)``) instead of being swapped in.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbrefresh.build.quality import QualityPolicy
from kbrefresh.build.staging import clear_staging
from kbrefresh.db import connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import GateFailed
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps as pipeline
from kbrefresh.settings import Settings


@dataclass(frozen=True)
class StagedCandidate:
    kb: str
    version: int
    summary: str


def stage_candidate(
    settings: Settings, kb: str, source: str, *, embedder: Embedder | None = None,
    chunker: ChunkerConfig | None = None, quality: QualityPolicy | None = None,
    policy: AcceptancePolicy | None = None, flow_run_id: str | None = None,
) -> StagedCandidate:
    """Build, smoke-check and gate a new version of ``kb`` from ``source``; do not publish it.

    Raises:
        DataQualityError: the source failed quality checks.
        GateFailed: the candidate failed smoke checks or the gate (marked rejected).
        BuildLockedError: another refresh of ``kb`` is running.
    """
    embedder = embedder or make_embedder(settings)
    chunker = chunker or ChunkerConfig()
    with pipeline.refresh_lock(settings, kb):
        ticket = pipeline.begin_build(settings, kb, pipeline.fingerprint_for(embedder, chunker),
                                      source=source, flow_run_id=flow_run_id)
        try:
            prepared = pipeline.prepare_data(settings, ticket, source, chunker=chunker,
                                             quality=quality)
            plan = pipeline.plan_build(settings, ticket)
            reuse = pipeline.reuse_unchanged(settings, ticket)
            stats = pipeline.embed_changed(settings, ticket, embedder=embedder,
                                           total_texts=plan.to_embed_texts)
            pipeline.finalize_build(settings, ticket,
                                    pipeline.build_counts(prepared, plan, stats, reuse))
            smoke = pipeline.smoke_validate(settings, ticket, embedder=embedder)
            gate = (pipeline.validate_candidate(settings, ticket, smoke=smoke, policy=policy)
                    if smoke.passed else None)
        except BaseException as exc:
            pipeline.fail_build(settings, ticket, exc)
            raise
        if gate is None or not gate.verdict.passed:
            raise GateFailed(pipeline.rejection_message(ticket, smoke, gate),
                             verdict=gate.as_dict() if gate else smoke.as_dict())
        with connect(settings, autocommit=True) as conn:
            clear_staging(conn, ticket.kb_id, ticket.version)
    return StagedCandidate(kb, ticket.version, gate.verdict.summary)
