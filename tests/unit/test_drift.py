from __future__ import annotations

import math

import numpy as np
import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.retraining.drift import (
    classify_kl,
    compare_distributions,
    coverage_gap,
    fit_query_clusters,
    jensen_shannon,
    kl_divergence,
    psi,
)

# ---- divergences pinned to hand-computed values ---------------------------------------


@pytest.mark.parametrize("fn", [kl_divergence, psi, jensen_shannon])
def test_identical_histograms_have_zero_divergence(fn: object) -> None:
    assert callable(fn)
    assert fn([30, 50, 20], [3, 5, 2], smoothing=0.0) == pytest.approx(0.0, abs=1e-12)
    assert fn([30, 50, 20], [30, 50, 20]) == pytest.approx(0.0, abs=1e-12)


def test_disjoint_bins_with_default_smoothing() -> None:
    # [1, 0] + 0.5 -> [0.75, 0.25]; [0, 1] + 0.5 -> [0.25, 0.75]
    assert kl_divergence([1, 0], [0, 1]) == pytest.approx(0.5 * math.log(3))
    assert kl_divergence([1, 0], [0, 1]) == pytest.approx(0.5493061443)
    assert psi([1, 0], [0, 1]) == pytest.approx(math.log(3))
    # M = [0.5, 0.5]; JSD = 0.25*log2(0.5) + 0.75*log2(1.5); distance = sqrt(JSD)
    jsd = 0.25 * math.log2(0.5) + 0.75 * math.log2(1.5)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(math.sqrt(jsd))
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(0.4344209, abs=1e-6)


def test_kl_direction_is_current_given_reference() -> None:
    reference, current = [9, 1], [5, 5]
    # KL(current || reference) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = ln(5/3)
    assert kl_divergence(reference, current, smoothing=0) == pytest.approx(math.log(5 / 3))
    # the other direction is a different number: 0.9 ln 1.8 + 0.1 ln 0.2
    reverse = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert kl_divergence(current, reference, smoothing=0) == pytest.approx(reverse)
    # PSI = (0.5-0.9) ln(0.5/0.9) + (0.5-0.1) ln(0.5/0.1) = 0.4 ln 9
    assert psi(reference, current, smoothing=0) == pytest.approx(0.4 * math.log(9))


def test_jensen_shannon_of_disjoint_unsmoothed_bins_is_one() -> None:
    assert jensen_shannon([1, 0], [0, 1], smoothing=0) == pytest.approx(1.0)


def test_without_smoothing_an_empty_reference_bin_is_infinite() -> None:
    assert kl_divergence([1, 0], [1, 1], smoothing=0) == math.inf


def test_smoothing_keeps_kl_finite_and_shrinks_it() -> None:
    light = kl_divergence([10, 0], [5, 5], smoothing=0.5)
    heavy = kl_divergence([10, 0], [5, 5], smoothing=5.0)
    assert math.isfinite(light)
    assert heavy < light


@pytest.mark.parametrize(
    ("reference", "current", "smoothing", "message"),
    [
        ([1, 2], [1, 2, 3], 0.5, "expected histograms over the same bins, got 2 and 3 bins"),
        (
            [1, -2],
            [1, 2],
            0.5,
            "expected reference_counts to hold finite counts >= 0, got [1.0, -2.0]",
        ),
        (
            [1, 2],
            [1, math.nan],
            0.5,
            "expected current_counts to hold finite counts >= 0, got [1.0, nan]",
        ),
        ([], [], 0.5, "expected reference_counts to be a non-empty 1-d histogram, got shape (0,)"),
        (
            [[1, 2]],
            [1, 2],
            0.5,
            "expected reference_counts to be a non-empty 1-d histogram, got shape (1, 2)",
        ),
        ([0, 0], [1, 2], 0.0, "reference_counts is all zeros; pass counts or smoothing > 0"),
        ([1, 2], [1, 2], -0.1, "expected smoothing >= 0, got -0.1"),
    ],
)
def test_bad_histograms_are_rejected(
    reference: list[object], current: list[object], smoothing: float, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        kl_divergence(reference, current, smoothing=smoothing)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kl", "severity"),
    [
        (0.0, "none"),
        (0.0999, "none"),
        (0.1, "moderate"),
        (0.3, "moderate"),
        (0.5, "moderate"),
        (0.5001, "severe"),
        (math.inf, "severe"),
    ],
)
def test_classify_kl_bands_and_edges(kl: float, severity: str) -> None:
    assert classify_kl(kl) == severity


def test_classify_kl_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"^expected a KL divergence >= 0, got -0\.1$"):
        classify_kl(-0.1)
    with pytest.raises(ConfigError) as info:
        classify_kl(0.2, (0.5, 0.1))
    assert str(info.value) == (
        "expected kl_thresholds (low, high) with 0 <= low < high, got (0.5, 0.1)"
    )


# ---- clustering ------------------------------------------------------------------------


def _three_topics(
    rng: np.random.Generator, n_per: int, dims: int = 16
) -> tuple[np.ndarray, list[str], np.ndarray]:
    axes = np.eye(dims)[:3] * 3.0
    names = ["billing", "account", "technical"]
    rows, cats = [], []
    for axis, name in zip(axes, names, strict=True):
        rows.append(axis + 0.3 * rng.standard_normal((n_per, dims)))
        cats += [name] * n_per
    return np.vstack(rows), cats, axes


def test_clusters_find_topics_and_carry_majority_labels() -> None:
    rng = np.random.default_rng(7)
    embeddings, categories, axes = _three_topics(rng, 200)
    model = fit_query_clusters(embeddings, n_clusters=3, seed=0, categories=categories)

    assert sorted(label or "" for label in model.labels) == ["account", "billing", "technical"]
    assert sorted(model.sizes) == [200, 200, 200]
    np.testing.assert_allclose(np.linalg.norm(model.centroids, axis=1), 1.0)
    # a fresh "technical" query lands in the technical cluster, at any scale
    query = axes[2] + 0.3 * rng.standard_normal((5, 16))
    assert list(model.segment_names(model.assign(query))) == ["technical"] * 5
    assert list(model.assign(query * 40.0)) == list(model.assign(query))


def test_clustering_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((500, 8))
    first = fit_query_clusters(embeddings, n_clusters=4, seed=11)
    second = fit_query_clusters(embeddings, n_clusters=4, seed=11)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.labels == (None, None, None, None)
    assert list(first.segment_names([0, 3])) == ["cluster-0", "cluster-3"]


def test_majority_label_ties_go_alphabetically() -> None:
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    model = fit_query_clusters(embeddings, n_clusters=1, categories=["z", "b", "b", "z"])
    assert model.labels == ("b",)


def test_float32_assignment_works_and_centroids_are_read_only() -> None:
    rng = np.random.default_rng(5)
    model = fit_query_clusters(rng.standard_normal((100, 32)), n_clusters=4)
    ids = model.assign(rng.standard_normal((10, 32)).astype(np.float32))
    assert ids.dtype == np.intp and ids.shape == (10,)
    with pytest.raises(ValueError):
        model.centroids[0, 0] = 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: fit_query_clusters(np.ones((3, 4)), n_clusters=4),
            "expected 1 <= n_clusters <= 3 rows, got 4",
        ),
        (
            lambda: fit_query_clusters(np.vstack([np.ones((3, 4)), np.zeros((1, 4))]), 2),
            "reference_embeddings has 1 zero or non-finite rows (first at 3)",
        ),
        (
            lambda: fit_query_clusters(np.ones((3, 4)), 2, categories=["a"]),
            "expected one category per embedding (3), got 1",
        ),
        (
            lambda: fit_query_clusters(np.ones(4), 2),
            "expected reference_embeddings as a non-empty 2-d array, got shape (4,)",
        ),
    ],
)
def test_bad_clustering_input_is_rejected(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


def test_assign_rejects_wrong_dims_and_nan() -> None:
    rng = np.random.default_rng(1)
    model = fit_query_clusters(rng.standard_normal((50, 6)), n_clusters=2)
    with pytest.raises(ConfigError, match=r"^expected embeddings with 6 dims, got 5$"):
        model.assign(np.ones((2, 5)))
    bad = np.ones((2, 6))
    bad[1, 2] = np.nan
    with pytest.raises(ConfigError, match=r"^embeddings contain NaN or infinite values$"):
        model.assign(bad)
    with pytest.raises(ConfigError, match=r"^expected cluster ids in 0\.\.1$"):
        model.segment_names([2])


# ---- comparing windows -----------------------------------------------------------------


def _labels(**counts: int) -> list[str]:
    return [name for name, n in counts.items() for _ in range(n)]


def _smoothed_kl(reference: list[int], current: list[int], smoothing: float = 0.5) -> float:
    r = [(c + smoothing) / (sum(reference) + smoothing * len(reference)) for c in reference]
    q = [(c + smoothing) / (sum(current) + smoothing * len(current)) for c in current]
    return sum(qi * math.log(qi / ri) for qi, ri in zip(q, r, strict=True))


def test_technical_share_doubling_is_moderate_drift() -> None:
    reference = _labels(technical=200, billing=400, account=400)
    current = _labels(technical=400, billing=300, account=300)
    report = compare_distributions(reference, current)

    # segments sorted alphabetically inside: account, billing, technical
    assert report.kl == pytest.approx(_smoothed_kl([400, 400, 200], [300, 300, 400]))
    assert report.kl == pytest.approx(0.1046, abs=1e-3)
    assert report.severity == "moderate"
    assert not report.inconclusive
    assert report.reference_size == 1000 and report.current_size == 1000
    top = report.segments[0]
    assert (top.segment, top.reference_share, top.current_share) == ("technical", 0.2, 0.4)
    assert top.change == pytest.approx(0.2)
    assert [s.segment for s in report.grown_segments] == ["technical"]
    assert [s.segment for s in report.segments] == ["technical", "account", "billing"]
    assert report.psi is not None and report.kl is not None and report.psi > report.kl
    assert report.js is not None and 0 < report.js < 1


def test_same_distribution_is_no_drift_and_disjoint_is_severe() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 8, size=5000)
    current = rng.integers(0, 8, size=5000)
    calm = compare_distributions(reference, current)
    assert calm.severity == "none"
    assert calm.kl is not None and calm.kl < 0.01
    assert calm.grown_segments == ()

    shifted = compare_distributions(reference, current + 8)
    assert shifted.severity == "severe"
    assert sorted(s.segment for s in shifted.grown_segments) == list(range(8, 16))
    assert sorted(s.segment for s in shifted.segments[-8:]) == list(range(8))


@pytest.mark.parametrize(("n_current", "inconclusive"), [(199, True), (200, False)])
def test_small_windows_are_inconclusive(n_current: int, inconclusive: bool) -> None:
    reference = _labels(a=500, b=500)
    current = _labels(a=n_current)
    report = compare_distributions(reference, current, min_samples=200)
    assert report.inconclusive is inconclusive
    if inconclusive:
        assert report.severity == "inconclusive"
        assert report.reason == "too few queries: reference 1000, current 199, need 200 each"
        assert report.kl is not None  # still computed, just not trusted
    else:
        assert report.severity == "severe"


def test_an_empty_window_has_no_divergence() -> None:
    report = compare_distributions([1, 2, 3], [])
    assert (report.kl, report.psi, report.js) == (None, None, None)
    assert report.severity == "inconclusive"
    assert report.current_size == 0


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        ([1, 2], ["a"], "expected both windows labelled the same way (both ids or both strings)"),
        (
            [0.5, 1.5],
            [1, 2],
            (
                "expected reference_labels to be cluster ids (int) or categories (str), "
                "got dtype float64"
            ),
        ),
        ([[1, 2]], [1, 2], "expected reference_labels as a 1-d sequence, got shape (1, 2)"),
    ],
)
def test_bad_labels_are_rejected(
    reference: list[object], current: list[object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        compare_distributions(reference, current)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_compare_rejects_bad_thresholds() -> None:
    with pytest.raises(ConfigError, match=r"^expected min_samples >= 1, got 0$"):
        compare_distributions([1], [1], min_samples=0)
    with pytest.raises(ConfigError, match=r"kl_thresholds"):
        compare_distributions([1], [1], kl_thresholds=(0.5, 0.5))


# ---- coverage --------------------------------------------------------------------------


def test_coverage_gap_counts_queries_below_cutoff() -> None:
    reference = [0.9, 0.8, 0.25, 0.7, 0.6, 0.5, 0.4, 0.35, 0.31, 0.95]  # 1 of 10 below
    current = [0.9, 0.1, 0.2, 0.29, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]  # 3 of 10 below; 0.3 is not
    report = coverage_gap(reference, current, cutoff=0.3)
    assert report.reference_share_below == pytest.approx(0.1)
    assert report.current_share_below == pytest.approx(0.3)
    assert report.change == pytest.approx(0.2)
    assert (report.reference_size, report.current_size) == (10, 10)


def test_coverage_gap_with_an_empty_window_has_no_change() -> None:
    report = coverage_gap([], [0.1, 0.9])
    assert report.reference_share_below is None
    assert report.current_share_below == pytest.approx(0.5)
    assert report.change is None


def test_coverage_gap_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"^expected a cosine cutoff in \[-1, 1\], got 1\.5$"):
        coverage_gap([0.1], [0.2], cutoff=1.5)
    with pytest.raises(ConfigError, match=r"^current_best_sims contains NaN or infinite"):
        coverage_gap([0.1], [math.nan])


def test_segments_with_equal_change_keep_natural_order() -> None:
    report = compare_distributions([2, 10, 1, 2, 10, 1], [5, 5, 5, 5, 5, 5], min_samples=1)
    assert [s.segment for s in report.segments] == [5, 1, 2, 10]
