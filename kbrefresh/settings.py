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
    keep_versions: int = Field(default=2, ge=1, le=100)

    # Notifications (publish, rollback, skipped runs, rollout, proven): a plain webhook that
    # receives JSON, and Prefect notification blocks by name ("slack-oncall,email-ml").
    notify_webhook_url: SecretStr | None = None
    notify_blocks: str = ""
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value not in {"offline", "openai"}:
            raise ValueError(f"unknown embedder {value!r}; expected 'offline' or 'openai'")
        return value

    def resolved_openai_key(self) -> str | None:
        if self.openai_api_key is not None:
            return self.openai_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY")
