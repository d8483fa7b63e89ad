"""Send notices: the core's webhook plus Prefect notification blocks loaded by name."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block

from kbrefresh.release import notify as notices
from kbrefresh.release.notify import Notice
from kbrefresh.settings import Settings
from tasks._settings import flow_settings


def deliver(settings: Settings, notice: Notice, blocks: tuple[str, ...] = ()) -> list[str]:
    """Send ``notice`` everywhere configured; return the problems (never raise).

    Block names are ``<block-type-slug>/<name>`` (``slack-webhook/oncall``).
    """
    problems = notices.send(settings, notice)
    for name in notices.block_names(settings, blocks):
        try:
            block = Block.load(name)
            if not isinstance(block, NotificationBlock):
                problems.append(f"block {name!r} is a {type(block).__name__}, not a notification block")
                continue
            # async_dispatch: called from a sync task this runs the sync implementation.
            send_block: Any = block.notify
            send_block(notice.text(), subject=notice.title)
        except Exception as exc:  # noqa: BLE001 - a notification never fails the flow; it is reported
            problems.append(f"block {name!r} failed: {type(exc).__name__}: {exc}")
    return problems


@task(retries=0)
def send_notice(notice: Notice, blocks: tuple[str, ...] = ()) -> list[str]:
    """Send ``notice`` to the webhook and blocks; log and return problems instead of failing."""
    problems = deliver(flow_settings(), notice, blocks)
    logger = get_run_logger()
    for problem in problems:
        logger.warning("notification %r for %r not delivered: %s", notice.kind, notice.kb, problem)
    if not problems:
        logger.info("notified %r: %s", notice.kind, notice.title)
    return problems


def run_links(mlflow_run_id: str | None) -> dict[str, str]:
    """Where on-call reads more: the MLflow run of the version and this Prefect flow run."""
    from prefect.runtime import flow_run

    links = {"mlflow run": mlflow_run_id} if mlflow_run_id else {}
    ui_url = flow_run.ui_url
    return links | ({"prefect flow run": str(ui_url)} if ui_url else {})
