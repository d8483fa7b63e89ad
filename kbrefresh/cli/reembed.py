"""``kbrefresh reembed``: drift-biased re-embedding of one segment, by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kbrefresh.cli._common import JsonOpt, KbOpt, app, console, errors, print_json, read_settings
from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.retraining.reembed import DRIFT_ROLLOUT_POLICY, ReembedReport, run_reembed
from kbrefresh.retraining.reembed_request import SAMPLE_PROFILE, parse_reembed


@app.command()
def reembed(
    kb: KbOpt,
    segment: Annotated[str, typer.Option(help="Segment named in the profile file.")],
    profile: Annotated[Path | None, typer.Option(
        help="KB config file with segment profiles (default: the help center's).")] = None,
    source: Annotated[str | None, typer.Option(help="Source (default: live's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the adapter's 80/10/10 split.")] = 0,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Skip the adapter.")] = False,
    canary: Annotated[bool, typer.Option(help="Start the canary 10 → 50 → 100.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-chunk and re-embed one segment with its profile, train its query adapter, canary it."""
    settings = read_settings()
    with errors():
        request = parse_reembed(kb=kb, segment=segment,
                                profile_file=str(profile) if profile else SAMPLE_PROFILE,
                                source=source, seed=seed, train_adapter=not no_adapter,
                                rollout=canary)
        report = run_reembed(settings, kb, segment, profile_file=request.profile_file,
                             source=request.source, seed=seed, train=not no_adapter,
                             say=None if as_json else console.print)
        detail = None
        if canary:
            with connect(settings, autocommit=True) as conn:
                detail = rollout.start(conn, kb, strategy="canary", policy=DRIFT_ROLLOUT_POLICY,
                                       candidate=report.version, now=datetime.now(UTC),
                                       reason=f"reembed of {segment!r}").detail
        if as_json:
            print_json(report.as_dict() | {"rollout": detail})
            return
        print_reembed(report)
        if detail:
            console.print(escape(f"canary: {detail}; move it with `kbrefresh rollout status "
                                 f"--kb {kb}` or the rollout-step deployment"))


def print_reembed(report: ReembedReport) -> None:
    t = report.verdict.target
    console.print(escape(
        f"v{report.version}: embedded {report.refresh.chunks_embedded} chunks of segment "
        f"{report.segment!r}, reused {report.refresh.chunks_reused}"))
    console.print(escape(
        f"{report.segment!r} hit@5 live v{report.live_version} {t.hit_before:.3f} -> "
        f"v{report.version} {t.hit_after:.3f}; nDCG@10 {t.ndcg_before:.3f} -> {t.ndcg_after:.3f}"
        f" (n={t.n}, p={report.verdict.p_value:.3g})"))
    for name, d in report.verdict.others.items():
        console.print(escape(f"  {name!r}: hit@5 {d.hit_before:.3f} -> {d.hit_after:.3f}"))
    console.print(escape(f"adapter {'shipped' if report.adapter_shipped else 'not shipped'}: "
                         f"{report.adapter_note}"))
