"""Tasks of the urgent rebrand: find the rename map to apply, report what the rebrand did."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.retraining.rebrand import RenameMap, load_rename_map
from kbrefresh.retraining.rebrand_run import RebrandReport, pending_rename_map
from tasks._common import TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings


@task(**TASK_OPTIONS)
def resolve_renames(kb: str, renames_file: str | None) -> RenameMap:
    """The rename map of ``renames_file``, or else the one on record for ``kb``.

    Raises:
        ConfigError: the file is bad, or no file was given and none is on record.
    """
    if renames_file:
        return load_rename_map(renames_file)
    with connect(flow_settings()) as conn:
        pending = pending_rename_map(conn, store.get_kb_id(conn, kb))
    if pending is None:
        raise ConfigError(f"no rename map on record for {kb!r}; pass renames_file "
                          f"(or store one with `kbrefresh rebrand --kb {kb} --renames FILE`)")
    return pending.renames


@task(**TASK_OPTIONS)
def report_rebrand(report: RebrandReport) -> str:
    """Show the impact report and the before/after figures as ``kbrefresh-rebrand-<kb>``."""
    key = artifact_key("rebrand", report.refresh.kb)
    lines = [f"## Rebrand of {report.refresh.kb!r}: v{report.refresh.version} live", "",
             report.headline(), "", report.impact.to_markdown(), "",
             f"Golden queries: {dict(report.golden)}"]
    create_markdown_artifact("\n".join(lines), key=key, description=report.headline())
    get_run_logger().info("%s", report.headline())
    return key


__all__ = ["report_rebrand", "resolve_renames"]
