"""The gate reuses live's stored result per query: same version, text, depth and adapters."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.evaluation import evaluate, load_golden
from kbrefresh.gate.latency import LATENCY_ROUNDS
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.gate.policy import AcceptancePolicy, MetricRule
from kbrefresh.gate.reuse import LATENCY_SAMPLE
from kbrefresh.gate.verdict import evaluate_gate
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.adapter import QueryAdapter, save_adapter
from kbrefresh.settings import Settings

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "kbrefresh" / "samples" / "helpcenter"
# What the gate measures is under test here, not what it decides.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def refresh(settings: Settings, corpus: Path) -> int:
    return run_refresh(settings, RefreshRequest(kb="help", source=str(corpus)),
                       embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY).version


def verdict(settings: Settings, version: int) -> dict[str, object]:
    with connect(settings) as conn:
        return dict(store.version_row(conn, 1, version).verdict or {})


def without_latency(table: object) -> object:
    """The metric table without its latency percentiles."""
    if isinstance(table, dict):
        return {k: without_latency(v) for k, v in table.items() if not k.startswith("latency_")}
    return table


def test_live_results_are_reused_per_query_when_the_golden_set_changes(
    settings: Settings, tmp_path: Path,
) -> None:
    corpus = tmp_path / "helpcenter"
    shutil.copytree(SAMPLES / "base", corpus)
    refresh(settings, corpus)
    golden = SAMPLES / "golden" / "smoke.jsonl"
    load_golden(settings, "help", golden)
    assert refresh(settings, corpus) == 2  # v1 gated on auto titles: nothing to reuse
    assert refresh(settings, corpus) == 3
    v2, v3 = verdict(settings, 2)["evaluation"], verdict(settings, 3)["evaluation"]
    # Every quality figure equal to the last digit: measured once, in v2's own gate. The
    # latency is not reused: it is timed again side by side with the candidate.
    assert without_latency(v3["live"]) == without_latency(v2["candidate"])  # type: ignore[index]
    assert v3["live"]["overall"]["latency_p95_ms"] != v2["candidate"]["overall"]["latency_p95_ms"]  # type: ignore[index]
    assert v3["live_reused"] == v3["n_queries"] > 0  # type: ignore[index,operator]

    lines = golden.read_text("utf-8").splitlines()
    smaller = tmp_path / "smoke.jsonl"
    smaller.write_text("\n".join(lines[:-1]) + "\n", "utf-8")
    assert json.loads(lines[0])  # still the same set name, one query fewer
    load_golden(settings, "help", smaller)
    assert refresh(settings, corpus) == 4
    v3, v4 = verdict(settings, 3)["evaluation"], verdict(settings, 4)["evaluation"]
    assert v4["live"] != v3["candidate"]  # type: ignore[index]
    assert v4["n_queries"] == v3["n_queries"] - 1  # type: ignore[index]
    assert v4["live_reused"] == v4["n_queries"]  # type: ignore[index]  # every query, one fewer


def searched(results: tuple[QueryResult, ...] | None) -> list[tuple[object, ...]]:
    """What a search returned, without its latency (measured once, when it ran)."""
    return [(r.query, r.slice, r.retrieved_doc_ids, r.relevant, r.scores) for r in results or ()]


def two_versions(settings: Settings, tmp_path: Path) -> int:
    corpus = tmp_path / "helpcenter"
    shutil.copytree(SAMPLES / "base", corpus)
    assert (refresh(settings, corpus), refresh(settings, corpus)) == (1, 2)
    with connect(settings) as conn:
        return store.get_kb_id(conn, "help")


def test_a_reused_live_result_equals_a_fresh_search_whatever_set_asks(
    settings: Settings, tmp_path: Path,
) -> None:
    kb_id = two_versions(settings, tmp_path)
    with connect(settings) as conn:
        reused = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY)
        assert reused.n_queries > 1
        assert reused.live_reused == reused.n_queries  # every one answered in v1's own gate
        conn.execute("DELETE FROM kb_gate_results WHERE kb_id = %s AND version = 1", (kb_id,))
        conn.commit()
        fresh = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY)
        assert fresh.live_reused == 0
        assert searched(reused.live_results) == searched(fresh.live_results)
        assert fresh.live_results is not None
        title = fresh.live_results[0].query
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(q) + "\n" for q in [
        {"query": title, "relevant": ["elsewhere"], "slice": "s", "set": "mixed"},
        {"query": "how do i sign up and pick a subdomain",
         "relevant": ["general/account/create-workspace"], "slice": "s", "set": "mixed"},
    ]), "utf-8")
    load_golden(settings, "help", mixed)
    with connect(settings) as conn:
        ev = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY, sets=["mixed"])
        assert ev.live_reused == 1  # the title, asked in another set with other labels
        assert ev.live_results is not None
        assert ev.live_results[0].retrieved_doc_ids == fresh.live_results[0].retrieved_doc_ids
        assert ev.live_results[0].relevant == ("elsewhere",)


def test_a_stored_result_serves_only_its_version_and_adapters(
    settings: Settings, tmp_path: Path,
) -> None:
    kb_id = two_versions(settings, tmp_path)
    with connect(settings) as conn:
        conn.execute("UPDATE kb_gate_results SET results = jsonb_set(results, '{retrieved}',"
                     " '[\"tampered\"]') WHERE kb_id = %s AND version = 1", (kb_id,))
        conn.commit()
        from_v1 = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY)
        assert {r.retrieved_doc_ids for r in from_v1.live_results or ()} == {("tampered",)}
        from_v2 = evaluate(settings, conn, kb_id, 1, 2, policy=SMOKE_ONLY)
        assert from_v2.live_reused == from_v2.n_queries  # v2's own gate, not v1's rows
        assert all(r.retrieved_doc_ids != ("tampered",) for r in from_v2.live_results or ())

        dims = 64
        matrix = np.eye(dims, dtype=np.float32)[np.random.default_rng(7).permutation(dims)]
        centroid = np.ones(dims, dtype=np.float32) / np.sqrt(dims)
        save_adapter(conn, kb_id, 1, QueryAdapter("all", matrix, {"all": centroid}))
        conn.commit()
        moved = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY)
        assert moved.live_reused == 0  # the adapter changes v1's searches: none reused
        assert all(r.retrieved_doc_ids != ("tampered",) for r in moved.live_results or ())
        again = evaluate(settings, conn, kb_id, 2, 1, policy=SMOKE_ONLY)
        assert again.live_reused == again.n_queries
        assert searched(again.live_results) == searched(moved.live_results)


def test_a_failing_latency_rule_is_timed_again_and_a_passing_one_is_not(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    kb_id = two_versions(settings, tmp_path)
    never = AcceptancePolicy(rules=(MetricRule(metric="latency_p95_ms", upper_bound=0),),
                             max_slice_disparity=(), max_size_ratio=None)
    always = never.model_copy(update={"rules": (MetricRule(metric="latency_p95_ms",
                                                           upper_bound=1e6),)})
    with connect(settings) as conn, caplog.at_level(logging.INFO, "kbrefresh.gate.latency"):
        slow = evaluate(settings, conn, kb_id, 2, 1, policy=never)
        assert slow.latency_rounds == LATENCY_ROUNDS == 3
        assert caplog.text.count("timing the") == 2  # rounds 2 and 3
        assert "latency_p95_ms ≤ 0" in caplog.text
        caplog.clear()
        fast = evaluate(settings, conn, kb_id, 2, 1, policy=always)
        assert fast.latency_rounds == 1 and "timing the" not in caplog.text
    # However many rounds ran, a candidate slower than the bound in every one still fails.
    verdict = evaluate_gate(slow.candidate_results, slow.live_results, never,
                            candidate_size_bytes=slow.candidate_size, live_size_bytes=slow.live_size,
                            smoke_failures=slow.smoke_failures)
    assert [r.name for r in verdict.failed_rules] == ["latency_p95_ms ≤ 0"]
    timed = [r.latency_ms for r in slow.candidate_results if math.isfinite(r.latency_ms)]
    # Every live result was reused: only the fixed sample was searched side by side.
    assert slow.live_reused == slow.n_queries > LATENCY_SAMPLE == len(timed)
    assert sum(math.isfinite(r.latency_ms) for r in slow.live_results or ()) == LATENCY_SAMPLE
