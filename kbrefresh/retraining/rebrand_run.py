"""The urgent rebrand: one sequence for the ``urgent-rebrand`` flow and ``kbrefresh rebrand``.

1. Impact report: the live version's chunks and documents that name an old name.
2. The rename map is put on record for the KB (``kb_rename_maps``).
3. The ``rebrand`` golden set (new-name and ``legacy names`` slices) is derived.
4. The refresh sequence runs with the affected documents embedded first; its gate is
   the usual one plus the rebrand rules, and the rename map is stored with the new
   version just before the gate (so the gate, then readers, expand old names).
5. When the gate passes the sequence's publish swaps the version live at once.

What follows a swap (the post-deploy monitor, the ``published`` notice) is the caller's;
:meth:`RebrandReport.notice` builds the notice. Nothing here imports Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from kbrefresh import store
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.db import connect
from kbrefresh.embedders import Embedder
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.verdict import RuleResult
from kbrefresh.models import BuildTicket
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import (
    DirectRunner,
    RefreshHooks,
    RefreshReport,
    StepRunner,
    run_refresh,
)
from kbrefresh.release.notify import Notice
from kbrefresh.retraining.rebrand import ImpactReport, RenameMap, find_impact, parse_rename_map
from kbrefresh.retraining.rebrand_expansion import save_version_renames
from kbrefresh.retraining.rebrand_gate import (
    LEGACY_SLICE,
    NEW_SLICE,
    RebrandRules,
    run_rebrand_gate,
    store_rebrand_golden,
)
from kbrefresh.settings import Settings

__all__ = ["RebrandJudge", "RebrandReport", "pending_rename_map", "record_rename_map",
           "run_rebrand"]


@dataclass(frozen=True)
class PendingRenames:
    renames: RenameMap
    source: str | None


def record_rename_map(conn: store.Conn, kb_id: int, renames: RenameMap, source: str | None) -> None:
    """Put ``renames`` on record for the KB (replacing any), pending until a version applies it."""
    conn.execute(
        "INSERT INTO kb_rename_maps (kb_id, renames, source) VALUES (%s, %s, %s)"
        " ON CONFLICT (kb_id) DO UPDATE SET renames = EXCLUDED.renames,"
        " source = EXCLUDED.source, stored_at = now(), applied_version = NULL",
        (kb_id, Jsonb(renames.as_dict()), source),
    )


def pending_rename_map(conn: store.Conn, kb_id: int) -> PendingRenames | None:
    """The KB's rename map on record that no published version applied yet, or None."""
    row = conn.execute(
        "SELECT renames, source FROM kb_rename_maps WHERE kb_id = %s AND applied_version IS NULL",
        (kb_id,),
    ).fetchone()
    if row is None:
        return None
    return PendingRenames(parse_rename_map(row["renames"], source="rename map on record"),
                          row["source"])


@dataclass(frozen=True)
class RebrandJudge:
    """The gate of a rebrand: store the renames with the version, then the rebrand gate."""

    renames: RenameMap
    rules: RebrandRules

    def __call__(
        self,
        settings: Settings,
        ticket: BuildTicket,
        *,
        policy: AcceptancePolicy | None,
        build_smoke_failures: Sequence[str],
    ) -> GateOutcome:
        with connect(settings) as conn:
            save_version_renames(conn, ticket.kb_id, ticket.version, self.renames)
            conn.commit()
        return run_rebrand_gate(settings, ticket.kb, ticket.version, rules=self.rules,
                                policy=policy, build_smoke_failures=build_smoke_failures)


@dataclass(frozen=True)
class RebrandReport:
    """What a rebrand did: its impact on the old live version, the golden set, the refresh."""

    impact: ImpactReport
    golden: Mapping[str, int]
    refresh: RefreshReport
    pairs: tuple[tuple[str, str], ...]

    @property
    def rules(self) -> tuple[RuleResult, ...]:
        """The rebrand rules of the verdict (new-name and legacy-name queries)."""
        verdict = self.refresh.verdict
        wanted = (NEW_SLICE, LEGACY_SLICE)
        return tuple(r for r in verdict.rules if r.name in ("rebrand queries", "legacy names")
                     and r.slice in wanted) if verdict else ()

    def figures(self) -> dict[str, float | None]:
        """hit@k of new-name and legacy-name queries, live before and the new version after."""
        out: dict[str, float | None] = {}
        for rule in self.rules:
            key = "rebrand" if rule.slice == NEW_SLICE else "legacy"
            out[f"{key} before"], out[f"{key} after"] = rule.baseline, rule.value
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the flow's return value)."""
        return {"impact": self.impact.to_dict(), "golden": dict(self.golden),
                "figures": self.figures(), "headline": self.headline(),
                "refresh": self.refresh.as_dict()}

    def headline(self) -> str:
        f = self.figures()
        return (f"rebrand queries {_pct(f.get('rebrand before'))} → {_pct(f.get('rebrand after'))}, "
                f"legacy names {_pct(f.get('legacy before'))} → {_pct(f.get('legacy after'))}")

    def notice(self, links: Mapping[str, str] | None = None) -> Notice:
        """The ``published`` notice: versions, impact, before/after figures."""
        r = self.refresh
        reason = (f"rebrand ({', '.join(f'{o} → {n}' for o, n in self.pairs)}): "
                  f"{self.headline()}; {self.impact.total.documents} documents and "
                  f"{self.impact.total.chunks} chunks named an old name")
        return Notice("published", r.kb, {"live": r.version, "previous": r.from_version},
                      reason[:1000], metrics=self.figures(), links=dict(links or {}))


def run_rebrand(
    settings: Settings,
    request: RefreshRequest,
    renames: RenameMap,
    *,
    runner: StepRunner | None = None,
    hooks: RefreshHooks | None = None,
    embedder: Embedder | None = None,
    policy: AcceptancePolicy | None = None,
    rules: RebrandRules | None = None,
    quality: QualityPolicy | None = None,
) -> RebrandReport:
    """Rebrand ``request.kb`` from the rebranded documents at ``request.source`` (see above).

    Raises:
        VersionError: the KB has no live version (nothing to rebrand).
        GateFailed: the candidate failed the gate or the rebrand rules; live keeps serving.
        DataQualityError, BuildLockedError: as ``run_refresh``.
    """
    step = runner or DirectRunner()
    impact = step.run("rebrand_impact", lambda: rebrand_impact(settings, request, renames))
    golden = step.run("rebrand_golden", lambda: rebrand_golden(settings, request.kb, renames))
    judge = RebrandJudge(renames, rules or RebrandRules())
    report = run_refresh(settings, request, runner=runner, hooks=hooks, embedder=embedder,
                         policy=policy, quality=quality, judge=judge,
                         embed_first=impact.documents)
    if report.published:
        with connect(settings) as conn:
            conn.execute("UPDATE kb_rename_maps SET applied_version = %s"
                         " WHERE kb_id = (SELECT id FROM kb WHERE name = %s)",
                         (report.version, request.kb))
            conn.commit()
    return RebrandReport(impact, golden, report, renames.pairs)


def rebrand_impact(settings: Settings, request: RefreshRequest, renames: RenameMap) -> ImpactReport:
    """Count what the renames touch in live, and put the map on record for the KB."""
    with connect(settings) as conn:
        impact = find_impact(conn, request.kb, renames)
        record_rename_map(conn, store.get_kb_id(conn, request.kb), renames, request.source)
        conn.commit()
    return impact


def rebrand_golden(settings: Settings, kb: str, renames: RenameMap) -> dict[str, int]:
    """Derive the ``rebrand`` golden set; return the number of queries per slice."""
    with connect(settings) as conn:
        golden = store_rebrand_golden(conn, store.get_kb_id(conn, kb), renames)
        conn.commit()
    return golden


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"
