"""Segment profiles, the ridge adapter and the segment gate, without a database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.gate.segment import (
    SegmentPolicy,
    SegmentVerdict,
    SliceDelta,
    judge_segment,
    rejudge,
    smallest_p_value,
)
from kbrefresh.models import ChunkerConfig, Document
from kbrefresh.retraining import adapter as qa
from kbrefresh.retraining.profiles import apply_profiles, load_profiles, parse_profiles
from kbrefresh.retraining.reembed import estimated_cost
from kbrefresh.retraining.reembed_request import parse_reembed


def doc(doc_id: str, category: str) -> Document:
    return Document(doc_id, f"{doc_id}.md", doc_id, category, "text", "markdown", f"h-{doc_id}")


def test_profiles_match_by_category_or_glob_and_fold_the_chunking_into_the_hash() -> None:
    profiles = parse_profiles({"segments": {
        "api": {"doc_glob": "technical/api/*", "max_chars": 400, "overlap_chars": 0},
        "technical": {"category": "technical", "max_chars": 600}}})
    docs = [doc("general/a", "general"), doc("technical/api/b", "technical"),
            doc("technical/cli/c", "technical")]
    out = apply_profiles(docs, profiles, ChunkerConfig())
    assert [(p.document.doc_id, p.segment) for p in out] == [
        ("technical/api/b", "api"), ("technical/cli/c", "technical"), ("general/a", None)]
    assert out[0].chunker.max_chars == 400 and out[2].chunker == ChunkerConfig()
    assert out[2].document.content_hash == "h-general/a"
    assert out[0].document.content_hash != "h-technical/api/b"
    assert out[0].document.metadata["chunking"] == {
        "segment": "api", "key": profiles.segments["api"].chunking_key()}
    again = apply_profiles(docs, profiles, ChunkerConfig())
    assert [p.document.content_hash for p in again] == [p.document.content_hash for p in out]


@pytest.mark.parametrize(("data", "message"), [
    ({"segments": {"t": {"max_chars": 500}}},
     "kb.yaml: segments.t: expected exactly one of 'category' or 'doc_glob'"),
    ({"segments": {"t": {"category": "t", "colour": 1}}}, "kb.yaml: segments.t.colour: unknown key"),
    ({"segments": {"t": {"category": "t", "max_chars": 50}}},
     "kb.yaml: segments.t.max_chars=50: Input should be greater than or equal to 100"),
])
def test_bad_profiles_fail_in_one_line(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_profiles(data, source="kb.yaml")
    assert str(exc.value) == message


def test_missing_segment_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "kb.yaml"
    path.write_text("segments:\n  technical:\n    category: technical\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^segment 'billing' has no profile; expected one "
                                          r"of: technical$"):
        load_profiles(path).require("billing")
    with pytest.raises(ConfigError, match="cannot read profile file"):
        load_profiles(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"^segment='' is invalid"):
        parse_reembed(kb="hc", segment="", profile_file=str(path))


def test_ridge_is_the_identity_when_queries_already_are_their_documents() -> None:
    rng = np.random.default_rng(0)
    q = qa.normalize(rng.normal(size=(40, 8)))
    w = qa.fit_ridge(q, q, 1.0)
    assert np.allclose(w, np.eye(8), atol=1e-5)
    assert qa.cosine_loss(q, q, w) == pytest.approx(0.0, abs=1e-6)


def test_ridge_learns_a_rotation_and_lowers_the_validation_loss() -> None:
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    q = qa.normalize(rng.normal(size=(80, 8)))
    d = qa.normalize(q @ rotation)
    fit = qa.choose_ridge(q[:60], d[:60], q[60:], d[60:])
    assert fit.lam == 0.3  # the smallest λ of the grid: the data is noiseless
    assert min(v for _, v in fit.val_losses) < 0.01 < fit.identity_val_loss


def test_split_is_seeded_80_10_10() -> None:
    train, val, test = qa.split_indices(50, seed=3)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert qa.split_indices(50, seed=3) == (train, val, test) != qa.split_indices(50, seed=4)
    assert sorted(train + val + test) == list(range(50))


def test_adapter_moves_only_its_segments_queries() -> None:
    tech, gen = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    swap = np.eye(4, dtype=np.float32)[[2, 1, 0, 3]]  # maps axis 0 to axis 2
    adapter = qa.QueryAdapter("technical", swap, {"technical": tech, "general": gen})
    out = adapter.apply(np.stack([tech, gen]))
    assert np.allclose(out[0], np.eye(4)[2]) and np.allclose(out[1], gen)


def result(query: str, slice_: str, hit: bool) -> QueryResult:
    return QueryResult(query, slice_, ("d",) if hit else ("x",), ("d",), 1.0)


def test_segment_gate_passes_a_significant_gain_without_regressions() -> None:
    before = [result(f"t{i}", "technical", i < 10) for i in range(20)] + [
        result(f"g{i}", "general", True) for i in range(5)]
    after = [result(f"t{i}", "technical", i < 16) for i in range(20)] + [
        result(f"g{i}", "general", True) for i in range(5)]
    verdict = judge_segment(before, after, "technical")
    assert verdict.passed and verdict.target.gain == pytest.approx(0.30)
    assert verdict.p_value == pytest.approx(0.5 ** 6)
    assert verdict.summary() == ("'technical' hit@5 0.500 -> 0.800 (+30.0 points, n=20, +6/-0, "
                                 "p=0.0156); passed")


def test_segment_gate_fails_small_insignificant_gains_and_regressions() -> None:
    before = [result(f"t{i}", "technical", i < 10) for i in range(20)] + [
        result(f"g{i}", "general", True) for i in range(5)]
    after = [result(f"t{i}", "technical", i < 11) for i in range(20)] + [
        result(f"g{i}", "general", i > 0) for i in range(5)]
    verdict = judge_segment(before, after, "technical", SegmentPolicy(min_gain=0.1))
    assert not verdict.passed
    assert verdict.reasons == (
        "'technical' gained +5.0 points hit@5, expected at least +10.0",
        "the gain is not significant (McNemar p=0.5 >= 0.05)",
        "'general' regressed -20.0 points hit@5")
    with pytest.raises(ConfigError, match=r"^segment 'billing' has no evaluation queries; "
                                          r"expected one of: general, technical$"):
        judge_segment(before, after, "billing")


def test_plan_cost_is_priced_per_model() -> None:
    assert estimated_cost("openai", "text-embedding-3-small", 1_000_000) == pytest.approx(0.02)
    assert estimated_cost("offline", "lexical-hash-v1", 10**9) == 0.0
    assert estimated_cost("openai", "some-new-model", 10) is None


def _delta(n: int, before: float, after: float, improved: int, worsened: int) -> SliceDelta:
    return SliceDelta(n, before, after, 0.0, 0.0, improved, worsened)


def test_rejudge_applies_another_policy_to_the_same_measurements() -> None:
    measured = SegmentVerdict(True, "technical", _delta(82, 78 / 82, 81 / 82, 3, 0), 0.125,
                              {"general": _delta(90, 0.9, 0.9 - 1 / 90, 0, 1)})
    strict = rejudge(measured, SegmentPolicy())
    loose = rejudge(measured, SegmentPolicy(alpha=0.15, max_other_drop=0.02))

    assert not strict.passed and loose.passed
    assert strict.reasons == ("the gain is not significant (McNemar p=0.125 >= 0.05)",
                              "'general' regressed -1.1 points hit@5")
    assert (strict.target, strict.p_value, strict.others) == (
        measured.target, measured.p_value, measured.others)


@pytest.mark.parametrize(("n", "hit_before", "expected"), [
    (82, 78 / 82, 0.0625), (38, 30 / 38, 0.5 ** 8), (10, 1.0, 1.0)])
def test_smallest_p_value_is_half_to_the_power_of_the_misses(
    n: int, hit_before: float, expected: float,
) -> None:
    assert smallest_p_value(_delta(n, hit_before, hit_before, 0, 0)) == pytest.approx(expected)


def test_a_segment_verdict_reads_back_from_its_dict() -> None:
    verdict = SegmentVerdict(False, "technical", _delta(82, 0.9, 0.95, 4, 0), 0.0625,
                             {"general": _delta(90, 0.9, 0.88, 0, 2)}, ("reason",))
    assert SegmentVerdict.from_dict(verdict.to_dict()) == verdict
