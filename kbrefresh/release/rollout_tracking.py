"""Record a concluded A/B on the candidate's MLflow run: one metric per test, the whole result."""

from __future__ import annotations

import logging
from typing import Any

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)


def log_ab_result(settings: Settings, kb: str, version: int, analysis: dict[str, Any]) -> str | None:
    """Log ``ab.<metric>.{effect,p_value,ci_low,ci_high}`` and ``rollout/ab.json``; return a warning.

    Tracking never fails a rollout: MLflow errors come back as the warning.
    """
    from mlflow.exceptions import MlflowException

    from kbrefresh.tracking import _client as mf

    with connect(settings) as conn:
        run_id = store.version_row(conn, store.get_kb_id(conn, kb), version).mlflow_run_id
    if not run_id:
        return f"version {version} of {kb!r} has no MLflow run; the A/B result is in Postgres only"
    metrics = {
        f"ab.{c['metric']}.{key}": float(c[key])
        for c in analysis["ab"]["comparisons"] for key in ("effect", "p_value", "ci_low", "ci_high")
        if c.get(key) is not None
    }
    try:
        with mf.session(settings) as client:
            for name, value in metrics.items():
                client.log_metric(run_id, name, value)
            client.log_dict(run_id, analysis, "rollout/ab.json")
    except (MlflowException, OSError) as exc:
        return f"the A/B result of {kb!r} v{version} was not logged to MLflow ({exc})"
    return None
