"""Record each build in MLflow and keep the registry's aliases on the routing.

Tracking never decides whether a knowledge base refreshes: when MLflow fails, the
build goes on, the failure is logged and returned as a warning for the report, and
``kbrefresh registry sync`` repairs the registry from the routing table later.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.errors import KBRefreshError
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.models import BuildTicket
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

# USD per million input tokens, for the estimated-cost metric (offline costs nothing).
PRICE_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
CHART = "metrics.png"


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking store or registry that is down, misconfigured or missing raises."""
    errors: tuple[type[BaseException], ...] = (KBRefreshError, psycopg.Error, OSError, ImportError)
    with contextlib.suppress(ImportError):
        from mlflow.exceptions import MlflowException

        errors += (MlflowException,)
    return errors


def warm_up() -> threading.Thread:
    """Import MLflow and matplotlib in the background while a build loads data.

    They take 1.5-2 s to import; the build's database-bound steps release the GIL,
    so by the time the build is recorded they are loaded. Import errors surface
    later, where the recording reports them.
    """

    def load() -> None:
        with contextlib.suppress(ImportError, AttributeError):
            import matplotlib.font_manager  # noqa: F401  (builds the font list once)

            # MLflow scans every installed distribution (~2 s) the first time a model's
            # requirements are checked; a private helper, hence the suppress.
            from mlflow.utils.requirements_utils import _init_packages_to_modules_map

            from kbrefresh.tracking import registry, reports  # noqa: F401  (loaded, not used)

            _init_packages_to_modules_map()  # type: ignore[no-untyped-call]

    thread = threading.Thread(target=load, name="kbrefresh-warm-up", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class BuildRecord:
    run_id: str | None
    model_version: str | None
    warning: str | None = None


def estimated_cost_usd(fingerprint: Mapping[str, Any], tokens: int) -> float:
    if fingerprint.get("provider") != "openai":
        return 0.0
    return tokens / 1e6 * PRICE_PER_MILLION_TOKENS.get(str(fingerprint.get("model")), 0.0)


def record_build(
    settings: Settings,
    ticket: BuildTicket,
    *,
    source: str,
    counts: Mapping[str, float],
    seconds: Mapping[str, float],
    estimated_tokens: int,
    outcome: GateOutcome | None,
    quality: Mapping[str, Any] | None = None,
) -> BuildRecord:
    """Log the build as an MLflow run; register the version when it passed the gate."""
    try:
        # MLflow, matplotlib: seconds to import, so only here
        from kbrefresh.tracking import registry as tracking
        from kbrefresh.tracking import reports

        with connect(settings) as conn:
            row = store.version_row(conn, ticket.kb_id, ticket.version)
            spec = dict(store.fingerprint_for_version(conn, ticket.kb_id, ticket.version).spec)
            manifest = list(store.version_manifest(conn, ticket.kb_id, ticket.version).items())
        metrics = {f"count.{k}": float(v) for k, v in counts.items()}
        metrics |= {f"seconds.{k}": float(v) for k, v in seconds.items()}
        metrics |= {"estimated_tokens": float(estimated_tokens),
                    "estimated_cost_usd": estimated_cost_usd(spec, estimated_tokens)}
        with tempfile.TemporaryDirectory() as tmp:
            artifacts: dict[str, Any] = {
                "model_card.md": reports.model_card(
                    kb=ticket.kb, version=ticket.version, dataset_tag=row.dataset_tag,
                    fingerprint=spec, counts=counts, outcome=outcome,
                    built_at=datetime.now(UTC), source=source),
            }
            if quality is not None:
                artifacts["quality.json"] = dict(quality)
            if outcome is not None:
                metrics |= tracking.gate_metrics(outcome)
                artifacts["verdict.json"] = outcome.as_dict()
                artifacts["verdict.md"] = outcome.verdict.to_markdown()
                artifacts[CHART] = reports.metrics_chart(outcome.evaluation, Path(tmp) / CHART)
            run_id = tracking.log_build(
                settings, kb=ticket.kb, version=ticket.version,
                params={"fingerprint": spec, "provider": spec.get("provider"),
                        "model": spec.get("model"), "dims": spec.get("dims"),
                        "chunker": spec.get("chunker"), "table": ticket.table},
                metrics=metrics, artifacts=artifacts, manifest=manifest,
                dataset_tag=row.dataset_tag, source=source,
                tags={"status": "passed" if outcome and outcome.verdict.passed else "rejected"},
            )
        model_version = None
        if outcome is not None and outcome.verdict.passed:
            model_version = tracking.register_version(
                settings, kb=ticket.kb, version=ticket.version, run_id=run_id,
                table=ticket.table, fingerprint=spec)
        return BuildRecord(run_id, model_version)
    except _tracking_errors() as exc:  # reported, not swallowed: the warning reaches the report
        warning = (f"MLflow tracking failed for v{ticket.version} of {ticket.kb!r} "
                   f"({type(exc).__name__}: {exc}); the build itself is unaffected")
        logger.warning("%s", warning)
        return BuildRecord(None, None, warning)


def sync_aliases(settings: Settings, kb: str) -> str | None:
    """Move champion/challenger to the routing's live/canary versions; return a warning on failure."""
    try:
        from kbrefresh.tracking import registry as tracking

        for line in tracking.sync_registry(settings, kb):
            logger.info("registry: %s", line)
        return None
    except _tracking_errors() as exc:  # reported: routing stays the source of truth
        warning = (f"the MLflow registry was not updated for {kb!r} ({type(exc).__name__}: "
                   f"{exc}); routing is correct, run `kbrefresh registry sync --kb {kb}`")
        logger.warning("%s", warning)
        return warning


def record_failure(
    settings: Settings, ticket: BuildTicket, *, source: str, error: BaseException
) -> BuildRecord:
    """Log a build that failed before validation (bad data, embedding errors, crashes)."""
    report: Any = getattr(error, "report", None)  # DataQualityError carries its report
    quality_dict = report.to_dict() if report is not None and hasattr(report, "to_dict") else None
    try:
        from kbrefresh.tracking import registry as tracking

        with connect(settings) as conn:
            row = store.version_row(conn, ticket.kb_id, ticket.version)
        artifacts: dict[str, Any] = {"error.txt": f"{type(error).__name__}: {error}"}
        if quality_dict is not None:
            artifacts["quality.json"] = quality_dict
        run_id = tracking.log_build(
            settings, kb=ticket.kb, version=ticket.version, params={"table": ticket.table},
            metrics={}, artifacts=artifacts, manifest=[], dataset_tag=row.dataset_tag,
            source=source, tags={"status": "failed", "error": type(error).__name__})
        return BuildRecord(run_id, None)
    except _tracking_errors() as exc:
        warning = f"MLflow tracking of failed v{ticket.version} of {ticket.kb!r} failed: {exc}"
        logger.warning("%s", warning)
        return BuildRecord(None, None, warning)
