"""Show post-deploy checks: markdown with a time-series chart, MLflow metrics, notices."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.release.notify import Notice
from kbrefresh.release.watch import PROVEN, ROLLED_BACK, CheckResult
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

_BARS = "▁▂▃▄▅▆▇█"
_CHART = (("error_rate", "error rate"), ("p95_latency_ms", "p95 ms"),
          ("golden_accuracy", "golden acc"), ("satisfaction", "satisfaction"))


def check_metrics(result: CheckResult) -> dict[str, float]:
    """The check's numbers (None left out), prefixed ``monitor.`` for MLflow."""
    if result.measurements is None:
        return {}
    m = result.measurements.as_dict()
    keys = ("searches", "error_rate", "p95_latency_ms", "empty_rate", "low_similarity_rate",
            "satisfaction", "golden_accuracy", "drift_kl")
    return {f"monitor.{k}": float(m[k]) for k in keys if m.get(k) is not None}


def log_to_mlflow(settings: Settings, result: CheckResult) -> str | None:
    """Log the check's metrics on the version's run, stepped by check id; warn, never raise."""
    from kbrefresh.tracking._client import TrackingError, session

    try:
        with session(settings) as client:
            ts = int(result.checked_at.timestamp() * 1000)
            for name, value in check_metrics(result).items():
                client.log_metric(str(result.mlflow_run_id), name, value, timestamp=ts,
                                  step=result.check_id or 0)
    except (TrackingError, OSError) as exc:
        return f"monitor metrics of v{result.version} not logged to MLflow: {exc}"
    return None


def sparkline(values: list[float | None]) -> str:
    """One bar per value scaled between the series' min and max; ``·`` where missing."""
    known = [v for v in values if v is not None]
    if not known:
        return "·" * len(values)
    low, high = min(known), max(known)
    span = high - low or 1.0
    return "".join("·" if v is None else _BARS[int((v - low) / span * (len(_BARS) - 1))]
                   for v in values)


def history(settings: Settings, kb: str, limit: int = 60) -> list[dict[str, Any]]:
    """The KB's latest checks and routing changes, oldest first, for charts and the CLI."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        checks = conn.execute(
            "SELECT checked_at AS at, version, outcome, action, measurements FROM monitor_checks"
            " WHERE kb_id = %s ORDER BY id DESC LIMIT %s", (kb_id, limit)).fetchall()
        changes = conn.execute(
            "SELECT changed_at AS at, action, from_version, to_version, reason"
            " FROM kb_routing_history WHERE kb_id = %s ORDER BY id DESC LIMIT %s",
            (kb_id, limit)).fetchall()
    rows = [dict(r) | {"kind": "check"} for r in checks]
    rows += [dict(r) | {"kind": "route"} for r in changes]
    return sorted(rows, key=lambda r: r["at"])


def chart(rows: list[dict[str, Any]]) -> str:
    """A text time series: one column per check; ▲ marks a publish, ✖ a rollback."""
    checks = [r for r in rows if r["kind"] == "check"]
    if not checks:
        return "(no checks yet)"
    marks = []
    for c in checks:
        before = [r for r in rows if r["kind"] == "route" and r["at"] <= c["at"]]
        last = before[-1] if before else None
        marks.append(" " if last is None or last.get("marked") else
                     ("✖" if last["action"] == "rollback" else "▲"))
        if last is not None:
            last["marked"] = True
    lines = [f"{'events':>13} {''.join(marks)}"]
    for key, label in _CHART:
        lines.append(f"{label:>13} {sparkline([c['measurements'].get(key) for c in checks])}")
    lines.append(f"{'version':>13} {''.join(str(c['version'])[-1] for c in checks)}")
    start: datetime = checks[0]["at"]
    lines.append(f"{'':>13} {start:%Y-%m-%d %H:%M} → {checks[-1]['at']:%Y-%m-%d %H:%M} UTC")
    return "\n".join(lines)


def check_markdown(settings: Settings, result: CheckResult) -> str:
    """The artifact: verdict, criteria table, side-by-side numbers and the chart."""
    lines = [f"# Post-deploy check of {result.kb!r} v{result.version}", "",
             f"**{result.summary()}**", ""]
    if result.judgement is not None:
        lines += ["| criterion | outcome | value | threshold | detail |", "|---|---|---|---|---|"]
        for c in result.judgement.criteria:
            lines.append(f"| {c.name} | {c.outcome} | {_num(c.value)} | {_num(c.threshold)} | "
                         f"{c.message.replace('|', '/')} |")
    m = result.measurements
    if m is not None and m.previous:
        lines += ["", f"New v{m.version} vs old v{m.previous_version} (same window):", "",
                  "| metric | new | old |", "|---|---|---|"]
        now = m.as_dict()
        for key, old in m.previous.items():
            lines.append(f"| {key} | {_num(now.get(key))} | {_num(old)} |")
    lines += ["", "```", chart(history(settings, result.kb)), "```"]
    return "\n".join(lines)


def notice_for(result: CheckResult, links: dict[str, str] | None = None) -> Notice | None:
    """The notice a check calls for: rolled back or proven; None otherwise."""
    if result.judgement is None or result.action not in (ROLLED_BACK, PROVEN):
        return None
    kind = "rolled_back" if result.action == ROLLED_BACK else "proven"
    versions: dict[str, int | None] = (
        {"from": result.version, "to": result.live_after} if kind == "rolled_back"
        else {"proven": result.version, "archived": result.archived[0] if result.archived else None})
    metrics = {k.removeprefix("monitor."): v for k, v in check_metrics(result).items()}
    reason = result.judgement.reason() if kind == "rolled_back" else "validation period clean"
    return Notice(kind, result.kb, versions, reason, metrics, links or {})


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
