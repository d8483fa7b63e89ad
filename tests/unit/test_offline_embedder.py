from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kbrefresh.embedders import Embedder, OfflineEmbedder, make_embedder
from kbrefresh.embedders.offline import _feature_ids
from kbrefresh.errors import ConfigError
from kbrefresh.settings import Settings

QUERY = "How do I rotate the signing secret of a webhook?"
RELATED = "Rotate your webhook signing secret from the webhooks settings page."
UNRELATED = "Download last month's invoice as a PDF from the billing page."


def cosine(embedder: OfflineEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed([a, b])
    return float(va @ vb)


def test_identity_and_protocol() -> None:
    embedder = OfflineEmbedder()
    assert isinstance(embedder, Embedder)
    assert (embedder.provider, embedder.model, embedder.dims) == (
        "offline",
        "lexical-hash-v1",
        1536,
    )
    assert repr(embedder) == "OfflineEmbedder(dims=1536)"


def test_feature_ids_are_pinned() -> None:
    # Changing these changes every stored vector: bump the model name if you must.
    ids = _feature_ids("Reset your password")
    assert len(ids) == 3 + 2 + (5 + 4 + 3) + (4 + 3 + 2) + (8 + 7 + 6)
    assert [hex(int(x)) for x in ids[:3]] == [
        "0xb1d50eea79b8f134",
        "0xac8b19383905c84c",
        "0xc44cd6451fbf1de8",
    ]


def test_vector_values_are_pinned() -> None:
    vector = OfflineEmbedder(64).embed(["Reset your password"])[0]
    assert vector[13] == pytest.approx(-0.408248305, abs=1e-7)
    assert vector[27] == pytest.approx(0.272165537, abs=1e-7)
    assert int(np.count_nonzero(vector)) == 26


def test_same_vectors_in_other_processes_whatever_the_hash_seed() -> None:
    texts = [QUERY, RELATED, "Ünïcødé 日本語 😀", ""]
    expected = OfflineEmbedder(256).embed(texts).tobytes().hex()
    script = (
        "import sys; from kbrefresh.embedders import OfflineEmbedder; "
        f"sys.stdout.write(OfflineEmbedder(256).embed({texts!r}).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout == expected


@pytest.mark.parametrize("dims", [8, 384, 1536, 3072])
def test_shape_dtype_and_unit_norm(dims: int) -> None:
    texts = [QUERY, RELATED, UNRELATED, "a", "x" * 5000, "", "!!!"]
    vectors = OfflineEmbedder(dims).embed(texts)
    assert vectors.shape == (len(texts), dims)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dims", [7, 16001, 0, -5, 1536.0, True, "1536", None])
def test_invalid_dims_are_refused(dims: object) -> None:
    with pytest.raises(ConfigError) as info:
        OfflineEmbedder(dims)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"offline embedder dims must be an integer from 8 to 16000, got {dims!r}"
    )


def test_same_text_same_vector_and_rows_are_independent() -> None:
    embedder = OfflineEmbedder()
    together = embedder.embed([QUERY, UNRELATED, QUERY])
    alone = embedder.embed([UNRELATED])
    np.testing.assert_array_equal(together[0], together[2])
    np.testing.assert_array_equal(together[1], alone[0])


def test_case_is_ignored_but_words_are_not() -> None:
    embedder = OfflineEmbedder()
    upper, lower, other = embedder.embed(["Reset Your PASSWORD", "reset your password", "reset"])
    np.testing.assert_array_equal(upper, lower)
    assert float(lower @ other) < 0.9


def test_related_text_scores_higher_than_unrelated() -> None:
    embedder = OfflineEmbedder()
    related = cosine(embedder, QUERY, RELATED)
    unrelated = cosine(embedder, QUERY, UNRELATED)
    assert related > 0.3
    assert abs(unrelated) < 0.15
    assert related > unrelated + 0.2


def test_character_ngrams_link_word_forms() -> None:
    embedder = OfflineEmbedder()
    assert cosine(embedder, "webhooks", "webhook") > 0.5
    assert abs(cosine(embedder, "webhooks", "invoice")) < 0.2


def test_word_order_matters_through_bigrams() -> None:
    embedder = OfflineEmbedder()
    swapped = cosine(embedder, "dog bites man", "man bites dog")
    assert 0.5 < swapped < 0.99


def test_text_without_words_gets_one_fixed_unit_vector() -> None:
    embedder = OfflineEmbedder(32)
    empty, blank, punct, word = embedder.embed(["", "   \n", "!!! ...", "hello"])
    np.testing.assert_array_equal(empty, blank)
    np.testing.assert_array_equal(empty, punct)
    assert float(np.linalg.norm(empty)) == pytest.approx(1.0)
    assert int(np.count_nonzero(empty)) == 1
    assert float(empty @ word) == pytest.approx(0.0, abs=1e-6)


def test_counters_count_calls_and_texts_but_not_empty_calls() -> None:
    embedder = OfflineEmbedder(16)
    embedder.embed(["a", "b", "c"])
    embedder.embed(["d"])
    empty = embedder.embed([])
    assert empty.shape == (0, 16)
    assert empty.dtype == np.float32
    assert (embedder.calls, embedder.texts_embedded) == (2, 4)


@pytest.mark.parametrize(("dims", "expected"), [(None, 1536), (384, 384)])
def test_make_embedder_builds_the_offline_default(dims: int | None, expected: int) -> None:
    embedder = make_embedder(Settings(embedder="offline", embedding_dims=dims))
    assert isinstance(embedder, OfflineEmbedder)
    assert embedder.dims == expected
