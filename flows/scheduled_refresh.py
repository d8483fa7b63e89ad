"""The scheduled refresh: rebuild a knowledge base from its source, validate it, swap it live."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.settings import Settings
from tasks import PrefectStepRunner


@flow(name="scheduled-refresh")
def scheduled_refresh(params: RefreshRequest) -> dict[str, Any]:
    """Rebuild a knowledge base from its source, validate it and swap it live (blue/green).

    Bad data (empty source, short or duplicate documents, a source that shrank by more
    than max_shrink, stale content) stops the run before anything is embedded: live keeps
    serving and the artifact kbrefresh-quality-<kb> lists which documents failed and why.
    Only new or changed chunks are embedded; unchanged vectors are reused in Postgres. A new
    embedding fingerprint (model, dims, chunking) means a full re-embed, announced with its
    chunk count and estimated tokens first. The candidate must pass smoke checks and the
    validation gate against live on golden queries, judged by the policy_file's rules when
    one is given (kbrefresh-smoke-<kb>, kbrefresh-gate-<kb>, kbrefresh-verdict-<kb>); if
    not, it is rejected and live keeps serving. Every build is an MLflow run; a published
    version is a registered model version with alias champion.
    Each step is a task named like the step (the same steps `kbrefresh refresh` runs).
    Summary: artifact kbrefresh-refresh-<kb>. Undo a swap with the rollback-kb deployment.
    """
    return run_refresh(Settings(), params, runner=PrefectStepRunner()).as_dict()
