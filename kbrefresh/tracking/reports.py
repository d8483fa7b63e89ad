"""Human reports on a build: the metrics chart, the model card, the comparison report.

Pure renderers over :class:`~kbrefresh.evaluation.GateOutcome`; MLflow stores their
output as run artifacts and Prefect shows the comparison as a markdown artifact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbrefresh._text import num, redact_url
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import Evaluation, GateOutcome
from kbrefresh.gate.metrics import MetricTable, metric_names
from kbrefresh.gate.verdict import Verdict

logger = logging.getLogger(__name__)

OVERALL = "overall"
_COUNT_LABELS = {
    "documents": "Documents",
    "documents_new": "Documents new",
    "documents_changed": "Documents changed",
    "documents_deleted": "Documents deleted",
    "chunks": "Chunks",
    "chunks_embedded": "Chunks embedded",
    "embedded": "Chunks embedded",
    "texts_embedded": "Texts embedded",
    "chunks_reused": "Chunks reused",
    "reused": "Chunks reused",
    "chunks_removed": "Chunks removed",
    "removed": "Chunks removed",
    "estimated_tokens": "Estimated tokens",
}
_CANDIDATE_COLOR = "#1f77b4"
_LIVE_COLOR = "#b0b0b0"


def quality_metrics(table: MetricTable) -> tuple[str, ...]:
    """Return the retrieval-quality metric names of ``table`` (hit, recall, MRR, nDCG)."""
    return metric_names(table.k, table.ndcg_k)[:4]


def metrics_chart(evaluation: Evaluation, path: Path) -> Path:
    """Draw candidate vs live bars per quality metric, overall and per slice, as a PNG.

    A first version (no live table) gets candidate bars only.
    """
    # The object-oriented API with an explicit Agg canvas: no pyplot global state,
    # no display, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    candidate, live = evaluation.candidate, evaluation.live
    groups = [None, *sorted(set(candidate.slices) | set(live.slices if live else ()))]
    labels = [_plain_label(OVERALL if g is None else g) for g in groups]
    series = [("candidate", candidate, _CANDIDATE_COLOR)]
    if live is not None:
        series.append(("live", live, _LIVE_COLOR))
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(8.0, 1.6 * len(groups) + 3), 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharey=True).flatten()
    for ax, metric in zip(axes, quality_metrics(candidate), strict=True):
        for i, (name, table, color) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(groups))]
            heights = [_or_nan(table.get(metric, g)) for g in groups]
            ax.bar(xs, heights, width=width, label=name, color=color)
        ax.set_title(metric)
        ax.set_xticks(range(len(groups)), labels, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside upper right", ncols=len(series))
    against = "candidate vs live" if live is not None else "candidate (first version, no live)"
    figure.suptitle(f"{against} on {evaluation.n_queries} golden queries")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def model_card(
    *,
    kb: str,
    version: int,
    dataset_tag: str,
    fingerprint: Mapping[str, Any],
    counts: Mapping[str, Any],
    outcome: GateOutcome | None,
    built_at: datetime,
    source: str,
) -> str:
    """Render the markdown model card of one knowledge-base version."""
    built = built_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# Model card: {_cell(kb)} v{version}",
        "",
        _table(("Field", "Value"), [
            ("Knowledge base", kb),
            ("Version", f"v{version}"),
            ("Data version (dataset tag)", dataset_tag),
            ("Source", redact_url(source)),
            ("Built", built),
        ]),
        "## Embedding fingerprint",
        "",
        _table(("Field", "Value"), [(str(k), _json(v)) for k, v in sorted(fingerprint.items())]),
        "## Counts",
        "",
        _table(("Count", "Value"), _count_rows(counts)),
    ]
    if outcome is None:
        lines += ["## Validation", "", "No validation gate ran for this version.", ""]
    else:
        verdict = outcome.verdict
        failed = verdict.failed_rules
        decision = (_cell(verdict.summary) if verdict.passed
                    else f"{len(failed)} of {len(verdict.rules)} rules failed:")
        lines += [
            "## Metrics",
            "",
            f"Golden queries: {_cell(outcome.evaluation.golden)} ({outcome.evaluation.n_queries}).",
            "",
            _metrics_table(outcome.evaluation),
            "## Validation verdict",
            "",
            f"**{'PASSED' if verdict.passed else 'FAILED'}**: {decision}",
            "",
        ]
        lines += [f"- {_cell(r.name)}: {_cell(r.reason)}" for r in failed]
    return "\n".join(lines).rstrip() + "\n"


def comparison_markdown(
    kb: str, version: int, outcome: GateOutcome | None, chart_name: str | None
) -> str:
    """Render the candidate-vs-live report shown to operators (a Prefect markdown artifact).

    ``chart_name`` is the chart's artifact path in the MLflow run, or None if none was stored.
    """
    if outcome is None:
        return f"# {_cell(kb)} v{version}\n\nNo validation gate ran for this version.\n"
    ev = outcome.evaluation
    against = "first version, no live baseline" if ev.live is None else "candidate vs live"
    lines = [
        f"# {_cell(kb)} v{version}: {against}",
        "",
        f"Golden queries: {_cell(ev.golden)} ({ev.n_queries}).",
        "",
        "## Metrics",
        "",
        _metrics_table(ev),
        _table(("Size", "Candidate", "Live"), [
            ("bytes", f"{ev.candidate_size:,}",
             num(ev.live_size, ",", missing="–")),
            ("smoke failures", str(len(ev.smoke_failures)), "–"),
        ]),
        "## Verdict",
        "",
        outcome.verdict.to_markdown(),
        "",
    ]
    if chart_name:
        lines += [f"Chart: `{chart_name}` in the MLflow run's artifacts.", ""]
    return "\n".join(lines)


def outcome_from_dict(data: Mapping[str, Any]) -> GateOutcome:
    """Rebuild a gate outcome from ``GateOutcome.as_dict()`` (as stored on a version row).

    Raises:
        ConfigError: the dict is not ``GateOutcome.as_dict()`` output.
    """
    try:
        ev = data["evaluation"]
        live = ev.get("live")
        evaluation = Evaluation(
            candidate=MetricTable.from_dict(ev["candidate"]),
            live=MetricTable.from_dict(live) if live else None,
            candidate_size=int(ev["candidate_size_bytes"]),
            live_size=None if ev.get("live_size_bytes") is None else int(ev["live_size_bytes"]),
            smoke_failures=tuple(str(f) for f in ev.get("smoke_failures", ())),
            golden=str(ev.get("golden", "")),
            n_queries=int(ev.get("n_queries", 0)),
            live_reused=int(ev.get("live_reused", 0)),
            latency_rounds=int(ev.get("latency_rounds", 1)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"not a gate outcome dict ({exc!r}); expected GateOutcome.as_dict() output"
        ) from exc
    return GateOutcome(Verdict.from_dict(data), evaluation)


def _metrics_table(ev: Evaluation) -> str:
    rows = []
    slices = sorted(set(ev.candidate.slices) | set(ev.live.slices if ev.live else ()))
    for metric in metric_names(ev.candidate.k, ev.candidate.ndcg_k):
        for slice_ in (None, *slices):
            value = ev.candidate.get(metric, slice_)
            baseline = ev.live.get(metric, slice_) if ev.live else None
            delta = None if value is None or baseline is None else value - baseline
            digits = 2 if metric.endswith("_ms") else 4
            rows.append((metric, OVERALL if slice_ is None else slice_, num(value, f".{digits}f", missing="–"),
                         num(baseline, f".{digits}f", missing="–"), num(delta, f"+.{digits}f", missing="–")))
    return _table(("Metric", "Slice", "Candidate", "Live", "Δ"), rows)


def _count_rows(counts: Mapping[str, Any]) -> list[tuple[str, str]]:
    known = [k for k in _COUNT_LABELS if k in counts]
    rest = sorted(k for k in counts if k not in _COUNT_LABELS)
    return [(_COUNT_LABELS.get(k, k), _count(counts[k])) for k in known + rest]


def _count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _json(value)
    return f"{value:,}" if isinstance(value, int) or value.is_integer() else f"{value:,.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    # Names come from users (KB names, slices, tags): keep them from breaking the table.
    return " ".join(text.split()).replace("|", "\\|")


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _plain_label(text: str) -> str:
    # matplotlib parses "$...$" as mathtext; a slice named "$x" must print as typed.
    return text.replace("$", r"\$")
