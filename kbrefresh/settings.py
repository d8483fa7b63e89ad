"""Settings from the environment (``KBREFRESH_*``) with offline defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
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
    # Fan-out: batches in flight per refresh; limits shared by every flow run that
    # embeds with the same provider (Prefect global rate limits embed-<provider>-*).
    embed_parallelism: int = Field(default=1, ge=1, le=64)
    embed_requests_per_minute: int | None = Field(default=None, ge=2)
    embed_tokens_per_minute: int | None = Field(default=None, ge=2)
    # Where the fan-out runs: threads of the flow's process, or a Dask cluster
    # (pip install 'kbrefresh[dask]'); no dask_address means a temporary local cluster.
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = Field(default=2, ge=1, le=256)
    # OpenAI Batch API for full re-embeds of at least embed_batch_api_min_texts texts.
    embed_batch_api: bool = False
    embed_batch_api_min_texts: int = Field(default=10_000, ge=1)
    embed_batch_api_poll_seconds: float = Field(default=60.0, gt=0)
    embed_batch_api_max_hours: float = Field(default=24.0, gt=0)

    mlflow_tracking_uri: str | None = None
    tracking: bool = True  # every build an MLflow run, versions registered with aliases

    maintenance_work_mem: str = "1GB"
    keep_versions: int = Field(default=2, ge=1, le=100)

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value not in {"offline", "openai"}:
            raise ValueError(f"unknown embedder {value!r}; expected 'offline' or 'openai'")
        return value

    @model_validator(mode="after")
    def _batches_fit_the_token_limit(self) -> Self:
        from kbrefresh.build.ratelimit import check_limits

        check_limits(self)
        return self

    def resolved_openai_key(self) -> str | None:
        if self.openai_api_key is not None:
            return self.openai_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY")
