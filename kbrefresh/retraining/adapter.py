"""The query adapter: a linear transform of one segment's query embeddings.

Learned from (query, relevant document) pairs by closed-form ridge regression toward the
relevant documents' vectors, regularised toward the identity (``W = (QᵀQ + λI)⁻¹(QᵀD + λI)``),
so a small λ-free adapter is the embedder unchanged. It works on top of any embedder
(OpenAI's too): only query vectors move, chunk vectors stay as embedded. A nearest-centroid
classifier over query embeddings decides which queries are the segment's; only those
are transformed. The adapter is stored with the KB version it was trained for
(``kb_query_adapters``); deleting or rolling back the version removes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg

from kbrefresh.errors import ConfigError
from kbrefresh.store import Conn

F32 = npt.NDArray[np.float32]
DEFAULT_LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0)


def normalize(vectors: npt.ArrayLike) -> F32:
    arr = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class QueryAdapter:
    """``matrix`` maps the segment's query vectors; ``centroids`` classify queries by segment."""

    segment: str
    matrix: F32
    centroids: Mapping[str, F32]
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[0])

    def in_segment(self, vectors: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True for each query vector whose nearest centroid is this adapter's segment."""
        names = sorted(self.centroids)
        sims = normalize(vectors) @ np.stack([self.centroids[n] for n in names]).T
        return np.array([names[i] == self.segment for i in np.argmax(sims, axis=1)])

    def apply(self, vectors: npt.ArrayLike) -> F32:
        """Return the vectors with the segment's queries transformed (others unchanged)."""
        out = normalize(vectors)
        mask = self.in_segment(out)
        if mask.any():
            out[mask] = normalize(out[mask] @ self.matrix)
        return out


def apply_adapters(vectors: npt.ArrayLike, adapters: Sequence[QueryAdapter]) -> F32:
    """Return the query vectors a version searches with: each adapter moves its segment's
    queries, the others stay as embedded (unchanged, not even normalised, without adapters).

    The one path from embedded query to searched vector: the Retriever, the validation gate
    (and through its stored verdict the rollout analysis) and the segment gate all call it.
    """
    if not adapters:
        return np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    out = normalize(vectors)
    for adapter in adapters:
        out = adapter.apply(out)
    return out


def adapters_digest(adapters: Sequence[QueryAdapter]) -> str:
    """A short hash of ``adapters`` (segment and matrix): results searched with them depend on it."""
    digest = hashlib.sha256()
    for adapter in adapters:
        digest.update(adapter.segment.encode("utf-8"))
        digest.update(np.ascontiguousarray(adapter.matrix, dtype="<f4").tobytes())
    return digest.hexdigest()[:16]


def fit_ridge(queries: npt.ArrayLike, targets: npt.ArrayLike, lam: float) -> F32:
    """Closed-form ridge toward the identity: minimise ‖QW − D‖² + λ‖W − I‖²."""
    q = np.asarray(queries, dtype=np.float64)
    d = np.asarray(targets, dtype=np.float64)
    if q.shape != d.shape or q.ndim != 2 or len(q) == 0:
        raise ConfigError(f"expected matching non-empty (n, dims) queries and targets, got "
                          f"{q.shape!r} and {d.shape!r}")
    if lam <= 0:
        raise ConfigError(f"ridge lambda must be > 0, got {lam!r}")
    eye = np.eye(q.shape[1])
    w = scipy.linalg.solve(q.T @ q + lam * eye, q.T @ d + lam * eye, assume_a="pos")
    return np.asarray(w, dtype=np.float32)


def cosine_loss(queries: npt.ArrayLike, targets: npt.ArrayLike, matrix: F32 | None) -> float:
    """Mean ``1 − cos(adapted query, relevant document)``."""
    q = normalize(queries)
    adapted = normalize(q @ matrix) if matrix is not None else q
    return float(np.mean(1.0 - np.sum(adapted * normalize(targets), axis=1)))


def centroids_of(vectors: npt.ArrayLike, labels: Sequence[str]) -> dict[str, F32]:
    arr = normalize(vectors)
    return {name: normalize(arr[[i for i, lab in enumerate(labels) if lab == name]].mean(axis=0))[0]
            for name in sorted(set(labels))}


def split_indices(n: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """A seeded 80/10/10 split of ``range(n)`` (at least one validation and one test item
    when n >= 3)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = max(1, round(n * 0.1)) if n >= 3 else 0
    n_test = max(1, round(n * 0.1)) if n >= 3 else 0
    return (sorted(order[n_val + n_test:]), sorted(order[:n_val]),
            sorted(order[n_val:n_val + n_test]))


@dataclass(frozen=True)
class RidgeFit:
    matrix: F32
    lam: float
    val_losses: tuple[tuple[float, float], ...]  # (λ, validation loss), the loss curve
    train_loss: float
    identity_val_loss: float


def choose_ridge(
    train_q: npt.ArrayLike, train_d: npt.ArrayLike, val_q: npt.ArrayLike, val_d: npt.ArrayLike,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
) -> RidgeFit:
    """Fit one adapter per λ and keep the one with the lowest validation loss."""
    fits = [(lam, fit_ridge(train_q, train_d, lam)) for lam in lambdas]
    curve = tuple((lam, cosine_loss(val_q, val_d, w)) for lam, w in fits)
    best = min(range(len(fits)), key=lambda i: curve[i][1])
    lam, w = fits[best]
    return RidgeFit(w, lam, curve, cosine_loss(train_q, train_d, w),
                    cosine_loss(val_q, val_d, None))


def data_version(pairs: Sequence[tuple[str, tuple[str, ...]]]) -> str:
    """A short hash of the training pairs (the run's data version)."""
    blob = json.dumps(sorted([q, list(r)] for q, r in pairs))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


# -- storage -------------------------------------------------------------------------


def save_adapter(
    conn: Conn, kb_id: int, version: int, adapter: QueryAdapter, *,
    mlflow_run_id: str | None = None, model_version: str | None = None,
) -> None:
    """Attach ``adapter`` to ``version`` (replacing an earlier one for the same segment)."""
    conn.execute(
        "INSERT INTO kb_query_adapters (kb_id, version, segment, dims, matrix, centroids, "
        "metrics, mlflow_run_id, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (kb_id, version, segment) DO UPDATE SET dims = EXCLUDED.dims, "
        "matrix = EXCLUDED.matrix, centroids = EXCLUDED.centroids, metrics = EXCLUDED.metrics, "
        "mlflow_run_id = EXCLUDED.mlflow_run_id, model_version = EXCLUDED.model_version, "
        "created_at = now()",
        (kb_id, version, adapter.segment, adapter.dims,
         np.ascontiguousarray(adapter.matrix, dtype="<f4").tobytes(),
         json.dumps({k: v.tolist() for k, v in adapter.centroids.items()}),
         json.dumps(dict(adapter.metrics), default=float), mlflow_run_id, model_version),
    )


def load_adapters(conn: Conn, kb_id: int, version: int) -> tuple[QueryAdapter, ...]:
    """The adapters that travel with ``version`` (none for most versions)."""
    rows = conn.execute(
        "SELECT segment, dims, matrix, centroids, metrics FROM kb_query_adapters "
        "WHERE kb_id = %s AND version = %s ORDER BY segment", (kb_id, version),
    ).fetchall()
    return tuple(
        QueryAdapter(
            r["segment"],
            np.frombuffer(bytes(r["matrix"]), dtype="<f4").reshape(r["dims"], r["dims"]).copy(),
            {k: np.asarray(v, dtype=np.float32) for k, v in r["centroids"].items()},
            r["metrics"],
        )
        for r in rows
    )


def remove_adapters(conn: Conn, kb_id: int, version: int) -> int:
    """Delete the adapters of ``version`` (a rollback); return how many."""
    cur = conn.execute("DELETE FROM kb_query_adapters WHERE kb_id = %s AND version = %s",
                       (kb_id, version))
    return cur.rowcount
