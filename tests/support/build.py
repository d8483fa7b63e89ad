"""One call that refreshes a KB in tests: the refresh sequence with plain values."""

from __future__ import annotations

from typing import Any

from kbrefresh.build.quality import QualityPolicy
from kbrefresh.embedders import Embedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.release.candidate import chunking_fields
from kbrefresh.settings import Settings


def refresh(
    settings: Settings, kb: str, source: str, *, embedder: Embedder | None = None,
    policy: AcceptancePolicy | None = None, chunker: ChunkerConfig | None = None,
    quality: QualityPolicy | None = None, **request: Any,
) -> RefreshReport:
    """Run ``run_refresh`` for ``kb`` from ``source`` (``request``: other RefreshRequest fields)."""
    return run_refresh(
        settings, RefreshRequest(kb=kb, source=source, **chunking_fields(chunker), **request),
        embedder=embedder, policy=policy, quality=quality)
