"""A deterministic local embedder: a lexical baseline, not a semantic model.

``OfflineEmbedder`` turns text into vectors by feature hashing (the "hashing
trick"), so it needs no model files, no network and no GPU, and gives the same
vector for the same text on every machine and in every process. It only knows
which words and word fragments two texts share: synonyms, paraphrases and other
languages are invisible to it. Use it for tests, demos and as the baseline a
real embedding model must beat; do not read its scores as a real model's.

Features of the lowercased text (words are runs of ``\\w`` characters):

- word unigrams (weight 1.0),
- word bigrams (weight 1.0),
- character 3-, 4- and 5-grams of each word padded as ``<word>`` (weight 0.5),
  so "webhook" and "webhooks" still overlap.

Each distinct feature gets ``weight * (1 + ln(tf))`` (sublinear term frequency)
and is added with a sign of +1 or -1 into one of ``dims`` buckets; the sign keeps
collisions from biasing similarities upwards. Feature ids are 64-bit polynomial
hashes of Unicode code points finished with murmur3's fmix64, computed with
unsigned integer numpy arrays: fixed constants, no salt (never Python's
``hash()``), identical on every platform. Rows are L2-normalised float32. A text
with no word characters (``""``, ``"!!!"``) maps to one fixed unit vector rather
than zeros, so it never yields NaN similarities.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kbrefresh.errors import ConfigError

__all__ = ["OfflineEmbedder"]

MIN_DIMS = 8
MAX_DIMS = 16000  # pgvector's limit for the vector type

U64 = npt.NDArray[np.uint64]

_WORD_RE = re.compile(r"\w+")
_OPEN = ord("<")
_CHAR_NGRAM_SIZES = (3, 4, 5)

# The feature kind lives in the two low bits of each id, so one np.unique over
# all features of a text still knows each feature's weight.
_KIND_UNIGRAM = np.uint64(0)
_KIND_BIGRAM = np.uint64(1)
_KIND_CHARGRAM = np.uint64(2)
_KIND_EMPTY = np.uint64(3)
_KIND_WEIGHTS = np.array([1.0, 1.0, 0.5, 1.0], dtype=np.float64)
_KIND_MASK = np.uint64(3)
_ID_MASK = np.uint64(0xFFFF_FFFF_FFFF_FFFC)
_BUCKET_MASK = np.uint64((1 << 40) - 1)  # bits 2..41 choose the bucket, bit 63 the sign
_TWO = np.uint64(2)
_SIGN_SHIFT = np.uint64(63)

_PRIME_INT = 0x0000_0100_0000_01B3  # the 64-bit FNV prime: odd, so powers never vanish
_PRIME = np.uint64(_PRIME_INT)
_PRIME_SQUARED = np.uint64(_PRIME_INT * _PRIME_INT % (1 << 64))
_PAIR_MULT = np.uint64(0x9E37_79B9_7F4A_7C15)
_UNIGRAM_SALT = np.uint64(0x5157_0A1E_0000_0001)
_NGRAM_SALTS = {n: np.uint64(0x6E67_7261_6D00_0000 * n % (1 << 64)) for n in _CHAR_NGRAM_SIZES}
_FMIX_1 = np.uint64(0xFF51_AFD7_ED55_8CCD)
_FMIX_2 = np.uint64(0xC4CE_B9FE_1A85_EC53)
_SHIFT_33 = np.uint64(33)

_powers: U64 = np.ones(1, dtype=np.uint64)


def _prime_powers(length: int) -> U64:
    """Return PRIME**k for k in range(length) (mod 2**64), growing a shared table."""
    global _powers
    table = _powers
    if len(table) < length:
        size = max(length, 2 * len(table), 256)
        table = np.ones(size, dtype=np.uint64)
        table[1:] = np.cumprod(np.full(size - 1, _PRIME, dtype=np.uint64))
        _powers = table
    return table[:length]


def _fmix64(values: U64) -> U64:
    values ^= values >> _SHIFT_33
    values *= _FMIX_1
    values ^= values >> _SHIFT_33
    values *= _FMIX_2
    values ^= values >> _SHIFT_33
    return values


def _tag(values: U64, kind: np.uint64) -> U64:
    return (values & _ID_MASK) | kind


def _char_ngram_ids(codes: U64, word_of: npt.NDArray[np.intp]) -> list[U64]:
    """Return ids of the n-grams that lie inside one padded word, per n.

    ``codes`` holds at least one padded word, so at least 3 code points.
    """
    size = len(codes)
    rolling = codes[: size - 2] * _PRIME_SQUARED + codes[1 : size - 1] * _PRIME + codes[2:]
    found = []
    for n in _CHAR_NGRAM_SIZES:
        if n > size:
            break
        if n > _CHAR_NGRAM_SIZES[0]:
            rolling = rolling[:-1] * _PRIME + codes[n - 1 :]
        inside = word_of[: size - n + 1] == word_of[n - 1 :]
        hashed = _fmix64(rolling[inside] + _NGRAM_SALTS[n])
        found.append(_tag(hashed, _KIND_CHARGRAM))
    return found


def _feature_ids(text: str) -> U64:
    """Return every feature occurrence of ``text`` as a tagged 64-bit id."""
    words = _WORD_RE.findall(text.lower())
    if not words:
        return _EMPTY_IDS
    padded = "<" + "><".join(words) + ">"
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.flatnonzero(codes == _OPEN)
    word_of = np.cumsum(codes == _OPEN) - 1
    offsets = np.arange(len(codes)) - starts[word_of]
    powered = codes * _prime_powers(int(offsets.max()) + 1)[offsets]
    unigrams = _fmix64(np.add.reduceat(powered, starts) ^ _UNIGRAM_SALT)
    pairs = _fmix64(unigrams[:-1] * _PAIR_MULT + unigrams[1:])
    parts = [_tag(unigrams, _KIND_UNIGRAM), _tag(pairs, _KIND_BIGRAM)]
    parts.extend(_char_ngram_ids(codes, word_of))
    return np.concatenate(parts)


_EMPTY_IDS: U64 = _tag(_fmix64(np.array([0x6E6F_2D77_6F72_6473], dtype=np.uint64)), _KIND_EMPTY)


class OfflineEmbedder:
    """Embed texts locally with signed feature hashing (a lexical baseline).

    Args:
        dims: output dimension, from 8 to 16000.
    """

    provider = "offline"
    model = "lexical-hash-v1"

    def __init__(self, dims: int = 1536) -> None:
        if isinstance(dims, bool) or not isinstance(dims, int) or not MIN_DIMS <= dims <= MAX_DIMS:
            raise ConfigError(
                f"offline embedder dims must be an integer from {MIN_DIMS} to {MAX_DIMS}, "
                f"got {dims!r}"
            )
        self.dims = dims
        self.calls = 0
        self.texts_embedded = 0

    def __repr__(self) -> str:
        return f"OfflineEmbedder(dims={self.dims})"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return one L2-normalised float32 row per text, shape ``(len(texts), dims)``.

        An empty ``texts`` returns a ``(0, dims)`` array and is not counted.
        """
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        for row, text in enumerate(texts):
            vector = self._hashed_vector(_feature_ids(text))
            norm = float(np.sqrt(vector @ vector))
            if norm == 0.0:
                # every feature cancelled another in its bucket: use the fixed vector
                vector = self._hashed_vector(_EMPTY_IDS)
                norm = 1.0
            out[row] = vector / norm
        self.calls += 1
        self.texts_embedded += len(texts)
        return out

    def _hashed_vector(self, ids: U64) -> npt.NDArray[np.float64]:
        unique, counts = np.unique(ids, return_counts=True)
        weights = _KIND_WEIGHTS[(unique & _KIND_MASK).astype(np.intp)]
        weights *= 1.0 + np.log(counts)
        weights[(unique >> _SIGN_SHIFT).astype(bool)] *= -1.0
        buckets = ((unique >> _TWO) & _BUCKET_MASK) % np.uint64(self.dims)
        vector = np.bincount(buckets.astype(np.intp), weights=weights, minlength=self.dims)
        return vector.astype(np.float64, copy=False)
