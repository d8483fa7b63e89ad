"""Data-volume signal: what changed at the source since the live version, without embedding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kbrefresh import store
from kbrefresh.build.quality import QualityPolicy, QualityReport, check_documents
from kbrefresh.build.sources import load_source
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.serving import routing
from kbrefresh.settings import Settings


@dataclass(frozen=True)
class SourceVolume:
    """What changed at the source since the live version, counted without embedding."""

    source: str
    live_version: int | None
    documents: int
    new: int
    changed: int
    deleted: int
    unchanged: int
    quality: QualityReport

    @property
    def new_samples(self) -> int:
        return self.new + self.changed


def source_volume(
    settings: Settings,
    kb: str,
    source: str,
    query: str | None = None,
    *,
    quality: QualityPolicy | None = None,
    now: datetime,
) -> SourceVolume:
    """Load ``source`` and diff it against the live version's manifest (ids + content hashes).

    Raises:
        SourceError: the source cannot be read.
    """
    if now.tzinfo is None:
        raise ConfigError(f"now must be timezone-aware, got {now!r}; use datetime.now(UTC)")
    loaded = load_source(source, query=query)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        manifest = {
            r["doc_id"]: r["content_hash"]
            for r in conn.execute(
                "SELECT doc_id, content_hash FROM kb_version_documents"
                " WHERE kb_id = %s AND version = %s",
                (kb_id, live),
            ).fetchall()
        } if live is not None else {}
    current = {d.doc_id: d.content_hash for d in loaded.documents}
    report = check_documents(loaded, previous_doc_count=len(manifest) if live else None,
                             policy=quality or QualityPolicy(), now=now)
    return SourceVolume(
        source=source, live_version=live, documents=len(current),
        new=sum(1 for d in current if d not in manifest),
        changed=sum(1 for d, h in current.items() if d in manifest and manifest[d] != h),
        deleted=sum(1 for d in manifest if d not in current),
        unchanged=sum(1 for d, h in current.items() if manifest.get(d) == h),
        quality=report,
    )
