"""The MLflow pyfunc model of one knowledge-base version, logged as code.

MLflow copies this file into the model and runs it when the model loads, so it
must stay self-contained: ``model_config`` ({kb, version, fingerprint}) says which
version to search, and the database comes from the environment
(``KBREFRESH_DATABASE_URL``, else the embedded server under the data dir).
``predict`` takes query strings (a list, a Series or a one-column DataFrame) and
returns one row per hit, every row from that exact version.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from kbrefresh.embedders import Embedder, embedder_for_spec
from kbrefresh.errors import ConfigError
from kbrefresh.serving.lookup import search_live
from kbrefresh.settings import Settings
from kbrefresh.tracking._client import DEFAULT_K

HIT_COLUMNS = (
    "query", "rank", "kb", "version", "chunk_id", "doc_id", "chunk_index", "similarity",
    "content", "metadata",
)


class KnowledgeBaseVersion(PythonModel):
    """Retrieve chunks from one pinned version of a knowledge base."""

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config or {}
        try:
            self.kb = str(config["kb"])
            self.version = int(config["version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"model_config {config!r} lacks a kb name and an integer version"
            ) from exc
        self.fingerprint: dict[str, Any] | None = config.get("fingerprint")
        self.settings = Settings()
        self.embedder: Embedder | None = None

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        k = int((params or {}).get("k", DEFAULT_K))
        if self.embedder is None and self.fingerprint:
            self.embedder = embedder_for_spec(self.settings, self.fingerprint)
        rows: list[dict[str, Any]] = []
        for query in _queries(model_input):
            hits = search_live(self.settings, self.kb, query, k=k, version=self.version,
                               embedder=self.embedder)
            rows += [
                {"query": query, "rank": rank, "kb": self.kb, "version": hit.version,
                 "chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "chunk_index": hit.chunk_index,
                 "similarity": hit.similarity, "content": hit.content,
                 "metadata": json.dumps(dict(hit.metadata), sort_keys=True, default=str)}
                for rank, hit in enumerate(hits, start=1)
            ]
        return pd.DataFrame(rows, columns=list(HIT_COLUMNS))


def _queries(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "query" if "query" in model_input.columns else model_input.columns[0]
        values = list(model_input[column])
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"queries must be strings, got {bad[:3]!r}")
    return [str(v) for v in values]


# Models-from-code contract: MLflow runs this file and takes the model it sets.
mlflow.models.set_model(KnowledgeBaseVersion())
