"""The retraining check as Markdown for operators (the CLI, Prefect artifacts, notices)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kbrefresh._text import escape_markdown, num
from kbrefresh.retraining import signals as measure

if TYPE_CHECKING:
    from kbrefresh.retraining.check import CheckResult


def render_markdown(result: CheckResult) -> str:
    """Render the check for operators: decision, driver, every signal, drift segments."""
    d = result.decision
    lines = [
        (f"# Retraining check of {escape_markdown(repr(result.kb))}: "
         f"{d.action.value} ({d.urgency})"),
        "",
        f"**Decision:** {escape_markdown(d.summary)}",
        "",
        f"**Driven by:** {d.driver.name}{' (alert)' if d.alert else ''}",
        "",
        "| signal | value | severity | action | reason |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in d.signals:
        mark = " ⬅" if s is d.driver else ""
        lines.append(f"| {s.name}{mark} | {num(s.value, '.3g')} | {s.severity} | {s.action.value} "
                     f"| {escape_markdown(s.reason)} |")
    return "\n".join(lines + _drift_lines(result.drift) + _detail_lines(result)) + "\n"


def _drift_lines(drift: measure.QueryDrift) -> list[str]:
    lines = [
        "", "## Query drift", "",
        (f"{drift.reference_size} reference queries, {drift.current_size} recent; "
         f"{escape_markdown(drift.reason)}"), "",
        "| view | KL | PSI | JS | severity | grown segments |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in drift.views:
        grown = ", ".join(escape_markdown(g) for g in v.grown) or "-"
        lines.append(f"| {v.view} | {num(v.kl, '.3g')} | {num(v.psi, '.3g')} | {num(v.js, '.3g')} | {v.severity} "
                     f"| {grown} |")
    cov = drift.coverage
    lines += ["", (f"Coverage: share of queries with top similarity below {cov.cutoff:g}: "
                   f"{num(cov.reference_share_below, '.3g')} → {num(cov.current_share_below, '.3g')}")]
    return lines


def _detail_lines(result: CheckResult) -> list[str]:
    sat, golden, volume = result.satisfaction, result.golden, result.volume
    built = result.days_since_build
    lines = [
        "", "## Feedback, accuracy, data", "",
        f"- Last build: {'never' if built is None else f'{built:.1f} days ago'}",
        (f"- Satisfaction: {num(sat.baseline, '.3g')} (n={sat.n_baseline}, {sat.baseline_days:g} days "
         f"before) → {num(sat.current, '.3g')} (n={sat.n_current}, last {sat.window_days:g} days)"),
    ]
    if result.proven is not None:
        p = result.proven
        lines.append(f"- Proven baseline: v{p.version} satisfaction {p.satisfaction:.3g} "
                     f"(n={p.n_feedback}, set {p.set_at:%Y-%m-%d})")
    if golden is None:
        lines.append("- Golden accuracy: not measured (no validated live version to compare)")
    else:
        lines.append(f"- Golden {golden.metric} of v{golden.version}: {golden.baseline:.3f} when "
                     f"validated → {golden.current:.3f} now ({golden.n_queries} queries)")
    if volume is None:
        lines.append("- Source: not checked (no source given)")
    else:
        verdict = "passed" if volume.quality.passed else "FAILED"
        lines.append(f"- Source {escape_markdown(repr(volume.source))}: {volume.documents} "
                     f"documents, {volume.new} new, {volume.changed} changed, {volume.deleted} "
                     f"deleted since v{volume.live_version}; quality {verdict}")
    if result.rename_pending:
        lines.append("- Rename map on record, not applied yet"
                     + (": rebrand due" if result.rebrand_due else ""))
    if result.dispatched is not None:
        lines.append(f"- Dispatched: {escape_markdown(json.dumps(result.dispatched, default=str))}")
    if result.decision_id is not None:
        lines.append(f"- Recorded as retrain decision {result.decision_id}")
    return lines
