"""Drift-biased re-embedding: one segment re-chunked with its profile, its query adapter
retrained, the segment judged, then a canary."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from kbrefresh.retraining.reembed import run_reembed
from kbrefresh.retraining.reembed_request import ReembedRequest
from tasks import PrefectStepRunner
from tasks._settings import flow_settings
from tasks.reembed import start_canary


@flow(name="drift-reembed")
def drift_reembed(params: ReembedRequest) -> dict[str, Any]:
    """Re-embed the drifted segment of a knowledge base and canary the result.

    Started by kbrefresh.retraining.drift.detected (the trigger passes kb, the first grown
    segment, the divergence and the severity) or by hand (`kbrefresh reembed`). The
    segment's documents are re-chunked with its profile from profile_file and embedded
    (the plan, with chunks, tokens and cost, is logged first); every other vector is
    reused. The segment's query adapter is trained (ridge, seeded 80/10/10 split, an
    MLflow run) and ships with the version only if it beats no adapter on held-out
    segment queries with confidence and no other segment gets worse. The candidate must
    gain >= 2 points hit@5 on the segment against live with confidence, other segments
    must not regress; then a canary 10 → 50 → 100 starts (rollout-step moves it).
    """
    report = run_reembed(
        flow_settings(), params.kb, params.segment, profile_file=params.profile_file,
        source=params.source, seed=params.seed, train=params.train_adapter,
        runner=PrefectStepRunner(), trigger=params.trigger())
    out = report.as_dict()
    if params.rollout:
        out["rollout"] = start_canary(params.kb, report.version,
                                      f"drift-reembed of {params.segment!r}", flow_run.id)
    return out
