"""Build a candidate that stops before going live, for a canary or A/B to deliver.

The refresh sequence with ``publish=False``: the same steps up to the gate and the MLflow
record; the candidate stays ``candidate`` (searchable with ``Retriever(kb, version=N)``)
instead of being swapped in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kbrefresh.embedders import Embedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.settings import Settings


@dataclass(frozen=True)
class StagedCandidate:
    kb: str
    version: int
    summary: str


def chunking_fields(chunker: ChunkerConfig | None) -> dict[str, Any]:
    """The refresh request's chunking fields for ``chunker`` (none: the defaults)."""
    if chunker is None:
        return {}
    return {"max_chars": chunker.max_chars, "overlap_chars": chunker.overlap_chars,
            "header_template": chunker.header_template}


def stage_candidate(
    settings: Settings, kb: str, source: str, *, embedder: Embedder | None = None,
    chunker: ChunkerConfig | None = None, policy: AcceptancePolicy | None = None,
) -> StagedCandidate:
    """Build, smoke-check and gate a new version of ``kb`` from ``source``; do not publish it.

    Raises:
        DataQualityError: the source failed quality checks.
        GateFailed: the candidate failed smoke checks or the gate (marked rejected).
        BuildLockedError: another refresh of ``kb`` is running.
    """
    request = RefreshRequest(kb=kb, source=source, publish=False,
                             reason="staged for a rollout", **chunking_fields(chunker))
    report = run_refresh(settings, request, embedder=embedder, policy=policy)
    return StagedCandidate(kb, report.version, report.verdict.summary if report.verdict else "")
