"""Tasks that embed new or changed chunks and show their progress in the Prefect UI."""

from __future__ import annotations

import time
from typing import cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from kbrefresh.build.embedding import EmbedStats
from kbrefresh.refresh import steps as pipeline
from kbrefresh.refresh.steps import BuildTicket
from kbrefresh.settings import Settings
from tasks._common import TASK_OPTIONS, artifact_key

# At most one update a second: a fast offline embedder must not flood the Prefect API.
_MIN_UPDATE_SECONDS = 1.0


class _Progress:
    """Forward ``on_progress(done, total)`` to a progress artifact, throttled."""

    def __init__(self, artifact_id: UUID) -> None:
        self.artifact_id = artifact_id
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < _MIN_UPDATE_SECONDS:
            return
        self._last = now
        update_progress_artifact(self.artifact_id, _percent(done, total))


def _percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else min(100.0, round(100.0 * done / total, 1))


@task(**TASK_OPTIONS)
def embed_changed_chunks(ticket: BuildTicket, total_texts: int) -> EmbedStats:
    """Embed only chunks whose text this fingerprint has never seen, and load them.

    Progress shows as the artifact ``kbrefresh-embed-<kb>``. A retry resumes:
    batches loaded before a failure are not embedded again.
    """
    logger = get_run_logger()
    # A sync task has no running event loop, so async_dispatch returns the id, not a coroutine.
    artifact_id = cast(UUID, create_progress_artifact(
        0.0 if total_texts else 100.0,
        key=artifact_key("embed", ticket.kb),
        description=f"Embedding {total_texts} new or changed texts of {ticket.kb!r} "
        f"v{ticket.version}",
    ))
    stats = pipeline.embed_changed(
        Settings(), ticket, total_texts=total_texts, on_progress=_Progress(artifact_id)
    )
    update_progress_artifact(artifact_id, 100.0)
    logger.info(
        "embedded %d texts into %d rows (embed %.2fs, load %.2fs)",
        stats.texts, stats.rows, stats.embed_seconds, stats.load_seconds,
    )
    return stats
