"""What a refresh did: the report every caller (CLI, flow, tests) reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.staging import BuildPlan
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.gate.verdict import Verdict
from kbrefresh.models import BuildTicket
from kbrefresh.refresh import steps
from kbrefresh.tracking import runs


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
    live_version: int | None
    archived: list[int]
    verdict: Verdict | None = None
    golden: str = ""
    # One key per step taken (its function name), plus embed_only: the part of
    # embed_changed spent waiting on the embedder.
    seconds: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    published: bool = True
    # Files read and parsed vs read and skipped (bytes unchanged since their last parse).
    documents_parsed: int = 0
    documents_skipped: int = 0

    def summary(self) -> str:
        state = "is live" if self.published else "passed the gate and waits for a rollout"
        return (
            f"{self.kb!r} v{self.version} ({self.dataset_tag}) {state}"
            f"{f' (was v{self.from_version})' if self.from_version else ''}: "
            f"{self.documents} documents, {self.chunks} chunks; embedded {self.chunks_embedded}, "
            f"reused {self.chunks_reused}, removed {self.chunks_removed}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (the flow's return value)."""
        return asdict(self) | {"verdict": self.verdict.to_dict() if self.verdict else None}


def make_report(
    ticket: BuildTicket,
    prepared: steps.PrepareResult,
    plan: BuildPlan,
    stats: EmbedStats,
    reuse: tuple[int, int],
    published: steps.PublishResult,
    seconds: dict[str, float],
    *,
    outcome: GateOutcome | None,
    record: runs.BuildRecord,
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
        golden=outcome.evaluation.golden if outcome else "", seconds=dict(seconds),
        mlflow_run_id=record.run_id, model_version=record.model_version,
        warnings=[w for w in (record.warning, registry_warning) if w],
        published=published.to_version == ticket.version,
        documents_parsed=prepared.intake.get("documents_parsed", 0),
        documents_skipped=prepared.intake.get("documents_skipped", 0),
    )
