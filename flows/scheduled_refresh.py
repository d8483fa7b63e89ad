"""The scheduled refresh: rebuild a knowledge base from its source, validate it, swap it live."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kbrefresh.errors import DataQualityError, GateFailed
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.release.notify import Notice
from tasks import PrefectStepRunner
from tasks._settings import flow_settings
from tasks.monitor import schedule_monitoring
from tasks.notify import run_links, send_notice


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
    Summary: artifact kbrefresh-refresh-<kb>. After a swap the post-deploy monitor is
    scheduled (every 2 h for 24 h, then daily for a week) and on-call is notified; a skipped
    run notifies too. Undo a swap with the rollback-kb deployment.
    """
    settings = flow_settings()
    try:
        report = run_refresh(settings, params, runner=PrefectStepRunner(settings))
    except (DataQualityError, GateFailed) as exc:
        send_notice(Notice("skipped", params.kb, {}, str(exc)[:1000]))  # never raises
        raise
    if report.published:
        schedule_monitoring(params.kb, report.version, params.reason)
        send_notice(Notice("published", params.kb,
                           {"live": report.version, "previous": report.from_version},
                           params.reason, links=run_links(report.mlflow_run_id)))
    return report.as_dict()
