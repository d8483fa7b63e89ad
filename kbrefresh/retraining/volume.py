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
        manifest = store.version_manifest(conn, kb_id, live)
    current = {d.doc_id: d.content_hash for d in loaded.documents}
    report = check_documents(loaded, previous_doc_count=len(manifest) if live else None,
                             policy=quality or QualityPolicy(), now=now)
    changes = store.diff_documents(manifest, current)
    return SourceVolume(
        source=source, live_version=live, documents=len(current), new=changes.new,
        changed=changes.changed, deleted=changes.deleted, unchanged=changes.unchanged,
        quality=report,
    )
