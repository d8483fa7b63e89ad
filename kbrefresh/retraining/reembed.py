"""Drift-biased re-embedding of one segment: re-chunk it with its profile, train its query
adapter, judge the segment, stage the candidate for a canary.

1. The refresh sequence (``publish=False``) with the KB's segment profiles: only the
   segment's documents are re-chunked and embedded (the plan is announced first).
2. The segment's query adapter is trained on that candidate; it ships (stored with the
   version, registered in MLflow) only if it beats no adapter on held-out segment queries
   with confidence and no other segment gets worse.
3. The scenario gate: the segment must improve against live (``SegmentPolicy``), the other
   segments must not regress; a failure rejects the candidate. A pass leaves it staged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kbrefresh import store
from kbrefresh.build.staging import BuildPlan
from kbrefresh.db import connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import ConfigError, GateFailed, VersionError
from kbrefresh.gate.evaluation import GateOutcome, run_gate, stored_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.segment import SegmentPolicy, SegmentVerdict, judge_segment
from kbrefresh.refresh.request import parse_request
from kbrefresh.refresh.sequence import RefreshHooks, RefreshReport, StepRunner, run_refresh
from kbrefresh.refresh.steps import PrepareResult
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.retraining import adapter as qa
from kbrefresh.retraining import segment_training as training
from kbrefresh.retraining.profiles import load_profiles
from kbrefresh.serving import routing
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

# The playbook's canary: 10% for 2 days, then 50%, then 100%, with analysis between steps.
DRIFT_ROLLOUT_POLICY = RolloutPolicy(steps=(10.0, 50.0, 100.0), min_step_seconds=2 * 86400.0)

# US$ per million input tokens (list prices); unknown models are announced without a cost.
PRICE_PER_MTOK = {("openai", "text-embedding-3-small"): 0.02,
                  ("openai", "text-embedding-3-large"): 0.13,
                  ("openai", "text-embedding-ada-002"): 0.10}


def estimated_cost(provider: str, model: str, tokens: int) -> float | None:
    if provider == "offline":
        return 0.0
    price = PRICE_PER_MTOK.get((provider, model))
    return None if price is None else tokens * price / 1e6


class PlanAnnouncer(RefreshHooks):
    """Say what will be embedded (documents, chunks, tokens, cost) before embedding starts."""

    def __init__(self, embedder: Embedder, say: Callable[[str], None] | None = None) -> None:
        self.embedder, self.say = embedder, say
        self.documents = 0
        self.announcement = ""
        self.plan: dict[str, Any] = {}

    def step_finished(self, step: str, result: object) -> None:
        if isinstance(result, PrepareResult):
            self.documents = result.changes.new + result.changes.changed
        elif isinstance(result, BuildPlan):
            plan = result.as_dict()
            cost = estimated_cost(self.embedder.provider, self.embedder.model,
                                  plan["estimated_tokens"])
            self.plan = plan | {"documents": self.documents, "estimated_cost_usd": cost}
            self.announcement = (
                f"plan: re-chunk {self.documents} documents, embed {plan['to_embed_chunks']} "
                f"chunks (~{plan['estimated_tokens']} tokens, "
                + (f"~${cost:.4f}" if cost is not None else "cost unknown for this model")
                + f" with {self.embedder.provider}/{self.embedder.model}); reuse "
                f"{plan['unchanged'] + plan['reusable']} chunks")
            logger.info("%s", self.announcement)
            if self.say:
                self.say(self.announcement)


@dataclass(frozen=True)
class ReembedReport:
    kb: str
    segment: str
    version: int
    live_version: int
    refresh: RefreshReport
    plan: dict[str, Any]
    adapter_shipped: bool
    adapter_note: str
    adapter_verdict: SegmentVerdict | None
    verdict: SegmentVerdict  # the candidate (with its adapter) against live
    mlflow_run_id: str | None = None
    model_version: str | None = None
    trigger: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.kb!r} v{self.version} (segment {self.segment!r}): embedded "
                f"{self.refresh.chunks_embedded} chunks, reused {self.refresh.chunks_reused}; "
                f"adapter {'shipped' if self.adapter_shipped else 'not shipped'} "
                f"({self.adapter_note}); against live v{self.live_version}: "
                f"{self.verdict.summary()}")

    def as_dict(self) -> dict[str, Any]:
        return {"kb": self.kb, "segment": self.segment, "version": self.version,
                "live_version": self.live_version, "plan": self.plan,
                "chunks_embedded": self.refresh.chunks_embedded,
                "chunks_reused": self.refresh.chunks_reused,
                "adapter_shipped": self.adapter_shipped, "adapter_note": self.adapter_note,
                "adapter_verdict": self.adapter_verdict.to_dict() if self.adapter_verdict else None,
                "verdict": self.verdict.to_dict(), "mlflow_run_id": self.mlflow_run_id,
                "model_version": self.model_version, "trigger": self.trigger,
                "summary": self.summary()}


def segment_build_policy(policy: AcceptancePolicy | None) -> AcceptancePolicy:
    """The build gate of a segment re-embed: ``policy`` (default: the gate's) without its
    slice-gap rules, which the segment gate replaces.

    A re-embed biased toward one segment widens the gap between slices on purpose when it
    works (bundled help center, 64-d: technical hit@5 +19.5 points, p = 1.5e-5, gap 0.064
    → 0.236: the gap rule rejected it). The per-slice "≥ live − 2 points" rules stay, and
    the segment gate fails any other segment that loses hit@5.
    """
    return (policy or AcceptancePolicy()).model_copy(update={"max_slice_disparity": ()})


def live_source(settings: Settings, kb: str) -> tuple[int, str, dict[str, Any]]:
    """Live version, its source, and its table's chunking (kept for every other document)."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        if live is None:
            raise VersionError(f"{kb!r} has no live version; build one with `kbrefresh refresh`")
        chunker = dict(store.fingerprint_for_version(conn, kb_id, live).spec.get("chunker", {}))
        fields = {k: chunker[k] for k in ("max_chars", "overlap_chars", "header_template")
                  if k in chunker}
        return live, str(store.version_row(conn, kb_id, live).source), fields


def run_reembed(
    settings: Settings, kb: str, segment: str, *, profile_file: str, source: str | None = None,
    embedder: Embedder | None = None, policy: AcceptancePolicy | None = None,
    segment_policy: SegmentPolicy | None = None, seed: int = 0, train: bool = True,
    runner: StepRunner | None = None, say: Callable[[str], None] | None = None,
    trigger: dict[str, Any] | None = None,
) -> ReembedReport:
    """Re-embed ``segment`` of ``kb`` with its profile, train its adapter, stage a candidate.

    Raises:
        ConfigError: no profile for ``segment`` or a bad profile file.
        GateFailed: the candidate failed the build gate or the segment gate (rejected).
    """
    profile = load_profiles(profile_file).require(segment)
    embedder = embedder or make_embedder(settings)
    live, live_src, chunking = live_source(settings, kb)
    # The live table's chunking for every other document: same table, their vectors reused.
    request = parse_request(kb=kb, source=source or live_src, publish=False, **chunking,
                            profile_file=profile_file,
                            reason=f"drift-reembed of segment {segment!r}")
    announcer = PlanAnnouncer(embedder, say)
    policy = policy or segment_build_policy(request.acceptance_policy())
    refresh = run_refresh(settings, request, runner=runner, hooks=announcer, embedder=embedder,
                          policy=policy)
    version = refresh.version
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        docs = training.segment_doc_ids(conn, kb_id, version, profile)
        tr: training.AdapterTraining | None = None
        note = "training disabled"
        if train:
            try:
                tr = training.train_adapter(conn, kb_id, version, segment, segment_docs=docs,
                                            embedder=embedder, seed=seed, policy=segment_policy)
                note = tr.verdict.summary()
            except ConfigError as exc:
                note = str(exc)
        shipped = tr is not None and tr.verdict.passed
        verdict = _judge_against_live(conn, kb_id, live, version, segment, embedder,
                                      tr if shipped else None, segment_policy)
    run_id, model_version = _record(settings, kb, version, segment, tr, shipped, seed)
    failure = None if verdict.passed else f"the segment gate: {verdict.summary()}"
    gate = None
    if shipped and tr is not None and failure is None:
        gate = attach_adapter(settings, kb, version, tr.adapter, policy, mlflow_run_id=run_id,
                              model_version=model_version)
        if not gate.verdict.passed:
            failure = f"the validation gate with its adapter: {gate.verdict.summary}"
    with connect(settings) as conn:
        row = store.version_row(conn, kb_id, version)
        merged = (gate.as_dict() if gate else dict(row.verdict or {})) | {
            "segment": verdict.to_dict(), "adapter": note}
        status = store.VersionStatus.REJECTED if failure else store.VersionStatus.CANDIDATE
        store.set_status(conn, kb_id, version, status, verdict=merged,
                         error=failure[:2000] if failure else None)
        if failure:
            qa.remove_adapters(conn, kb_id, version)
        conn.commit()
    if failure:
        raise GateFailed(f"version {version} of {kb!r} was rejected by {failure}; adapter: "
                         f"{note}; live v{live} keeps serving", verdict=merged)
    return ReembedReport(kb, segment, version, live, refresh, announcer.plan, shipped, note,
                         tr.verdict if tr else None, verdict, run_id, model_version,
                         dict(trigger or {}))


def attach_adapter(
    settings: Settings, kb: str, version: int, adapter: qa.QueryAdapter,
    policy: AcceptancePolicy | None, *, mlflow_run_id: str | None = None,
    model_version: str | None = None,
) -> GateOutcome:
    """Store ``adapter`` with ``version`` and re-run the validation gate on it.

    The gate searches as the Retriever will (the version's adapters applied), so the
    verdict stored on the version, and the golden accuracy the rollout analysis reads from
    it, are the version's as it serves. The caller stores the verdict.
    """
    with connect(settings) as conn:
        qa.save_adapter(conn, store.get_kb_id(conn, kb), version, adapter,
                        mlflow_run_id=mlflow_run_id, model_version=model_version)
        conn.commit()
    return run_gate(settings, kb, version, policy=policy)


def _judge_against_live(
    conn: store.Conn, kb_id: int, live: int, version: int, segment: str, embedder: Embedder,
    tr: training.AdapterTraining | None, policy: SegmentPolicy | None,
) -> SegmentVerdict:
    """Live (no adapter) against the candidate as it would serve, on queries nothing was
    fitted to: the held-out split when an adapter ships, else every golden query."""
    queries = (list(tr.split.heldout) if tr is not None
               else list({q.query: q for q in stored_golden(conn, kb_id) if q.slice}.values()))
    raw = qa.normalize(embedder.embed([q.query for q in queries]))
    served = qa.apply_adapters(raw, (tr.adapter,) if tr is not None else ())
    live_table = store.fingerprint_for_version(conn, kb_id, live).table
    cand_table = store.fingerprint_for_version(conn, kb_id, version).table
    before = training.run_queries(conn, live_table, live, queries, raw)
    after = training.run_queries(conn, cand_table, version, queries, np.asarray(served))
    return judge_segment(before, after, segment, policy)


def _record(
    settings: Settings, kb: str, version: int, segment: str,
    tr: training.AdapterTraining | None, shipped: bool, seed: int,
) -> tuple[str | None, str | None]:
    if not settings.tracking or tr is None:
        return None, None
    from kbrefresh.tracking._client import TrackingError
    from kbrefresh.tracking.adapter_runs import log_adapter_run

    params = {"method": "ridge-to-identity", "seed": seed, "lambda": tr.fit.lam,
              "train_pairs": len([q for q in tr.split.train if q.slice == segment]) + tr.feedback,
              "feedback_pairs": tr.feedback, "val_queries": len(tr.split.val),
              "heldout_queries": len(tr.split.heldout), "data_version": tr.data_version,
              "shipped": shipped}
    try:
        return log_adapter_run(settings, kb=kb, version=version, segment=segment,
                               matrix=tr.adapter.matrix, params=params,
                               loss_curve=tr.fit.val_losses, metrics=dict(tr.adapter.metrics),
                               register=shipped)
    except TrackingError as exc:  # tracking never fails a re-embed; say why
        logger.warning("adapter run not recorded in MLflow: %s", exc)
        return None, None
