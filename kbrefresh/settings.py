"""Settings from the environment (``KBREFRESH_*``) with offline defaults."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(user_data_dir("kbrefresh", appauthor=False))


class Settings(BaseSettings):
    """Runtime settings; every field can be set as ``KBREFRESH_<FIELD>``.

    ``database_url`` unset means: start (or reuse) the embedded PostgreSQL + pgvector
    whose data directory lives under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="KBREFRESH_", extra="ignore")

    database_url: SecretStr | None = None
    data_dir: Path = Field(default_factory=default_data_dir)

    embedder: str = "offline"  # "offline" | "openai"
    embedding_model: str = "text-embedding-3-small"
    embedding_dims: int | None = Field(default=None, ge=8, le=16000)
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    openai_max_retries: int = Field(default=5, ge=0, le=20)
    embed_batch_size: int = Field(default=256, ge=1, le=2048)
    embed_batch_max_chars: int = Field(default=400_000, ge=1000)

    mlflow_tracking_uri: str | None = None
    tracking: bool = True  # every build an MLflow run, versions registered with aliases

    maintenance_work_mem: str = "1GB"
    # "vector" (float32) or "halfvec" (float16: half the index memory); part of the fingerprint.
    embedding_storage: str = "vector"
    # Parallel workers for an HNSW build; None: sized to the server (see store.segments).
    index_build_workers: int | None = Field(default=None, ge=0, le=64)
    # Rows past the main HNSW index are scanned exactly up to this many (≈ +5 ms a search
    # per 1,000 rows of 1536 dims here); beyond it a build gives them a small HNSW index.
    delta_exact_rows: int = Field(default=1000, ge=0, le=100_000)
    # After publish, merge everything into one main index once the rows past it exceed
    # this share of the rows in it (a rebuild, off the critical path; 0: after every build).
    compact_share: float = Field(default=0.2, ge=0, le=10)
    keep_versions: int = Field(default=2, ge=1, le=100)

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value not in {"offline", "openai"}:
            raise ValueError(f"unknown embedder {value!r}; expected 'offline' or 'openai'")
        return value

    @field_validator("embedding_storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if value not in {"vector", "halfvec"}:
            raise ValueError(f"unknown embedding storage {value!r}; expected 'vector' or 'halfvec'")
        return value

    def resolved_openai_key(self) -> str | None:
        if self.openai_api_key is not None:
            return self.openai_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY")
