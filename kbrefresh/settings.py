"""Settings from the environment (``KBREFRESH_*``) with offline defaults.

Every field is validated when the settings are read; :func:`load_settings` turns a
bad value into one :class:`~kbrefresh.errors.ConfigError` naming the variable, the
value (never a secret's) and what is expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kbrefresh.errors import ConfigError

ENV_PREFIX = "KBREFRESH_"
_MEMORY = re.compile(r"^\s*(\d+)\s*(kB|MB|GB|TB)\s*$")
_MEMORY_UNITS = {"kB": 1, "MB": 2**10, "GB": 2**20, "TB": 2**30}  # in kB, as PostgreSQL counts
MIN_WORK_MEM_KB, MAX_WORK_MEM_KB = 2**10, 64 * 2**20  # 1MB .. 64GB

# What each setting expects, in the words of the one-line error.
EXPECTED: dict[str, str] = {
    "database_url": "a postgresql:// URL",
    "data_dir": "a directory path",
    "embedder": "'offline' or 'openai'",
    "embedding_model": "a model name",
    "embedding_dims": "an integer from 8 to 16000",
    "openai_base_url": "an http:// or https:// URL",
    "openai_api_key": "an API key",
    "openai_timeout_seconds": "a number of seconds > 0 and <= 3600",
    "openai_max_retries": "an integer from 0 to 20",
    "embed_batch_size": "an integer from 1 to 2048",
    "embed_batch_max_chars": "an integer from 1000 to 100000000",
    "mlflow_tracking_uri": "an MLflow tracking URI (http(s)://, file:, sqlite:///, ... or a path)",
    "tracking": "true or false",
    "maintenance_work_mem": "a PostgreSQL memory size from 1MB to 64GB, such as 64MB or 1GB",
    "keep_versions": "an integer from 1 to 100",
    "build_max_tokens": "an integer of at least 1, or unset",
    "build_max_seconds": "a number of seconds > 0, or unset",
    "embed_parallelism": "an integer from 1 to 64",
    "embed_requests_per_minute": "an integer of at least 2, or unset",
    "embed_tokens_per_minute": "an integer of at least 2, or unset",
    "task_runner": "'thread' or 'dask'",
    "dask_address": "a Dask scheduler address such as tcp://host:8786",
    "dask_workers": "an integer from 1 to 256",
    "chunk_batch_docs": "an integer from 1 to 100000",
    "chunk_parallelism": "an integer from 1 to 256",
    "embed_batch_api": "true or false",
    "embed_batch_api_min_texts": "an integer of at least 1",
    "embed_batch_api_poll_seconds": "a number of seconds > 0",
    "embed_batch_api_max_hours": "a number of hours > 0",
    "embedding_storage": "'vector' or 'halfvec'",
    "index_build_workers": "an integer from 0 to 64, or unset (sized to the server)",
    "delta_exact_rows": "an integer from 0 to 100000",
    "compact_share": "a number from 0 to 10",
    "source_batch_size": "an integer from 1 to 100000",
    "reparse_sources": "true or false",
    "read_every_file": "true or false",
    "notify_webhook_url": "an http:// or https:// URL",
    "notify_blocks": "comma-separated Prefect block names such as slack-webhook/oncall",
    "notify_timeout_seconds": "a number of seconds > 0 and <= 120",
}
SECRETS = frozenset({"database_url", "openai_api_key", "notify_webhook_url"})


def default_data_dir() -> Path:
    return Path(user_data_dir("kbrefresh", appauthor=False))


def memory_kb(value: str) -> int:
    """Return a PostgreSQL memory size such as ``64MB`` in kB.

    Raises:
        ConfigError: not ``<integer><kB|MB|GB|TB>`` or outside 1MB..64GB.
    """
    match = _MEMORY.match(value)
    if match is None:
        raise ConfigError(f"memory size {value!r} is not <integer><kB|MB|GB|TB>")
    size = int(match.group(1)) * _MEMORY_UNITS[match.group(2)]
    if not MIN_WORK_MEM_KB <= size <= MAX_WORK_MEM_KB:
        raise ConfigError(f"memory size {value!r} is outside 1MB..64GB")
    return size


class Settings(BaseSettings):
    """Runtime settings; every field can be set as ``KBREFRESH_<FIELD>``.

    ``database_url`` unset means: start (or reuse) the embedded PostgreSQL + pgvector
    whose data directory lives under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: SecretStr | None = None
    data_dir: Path = Field(default_factory=default_data_dir)

    embedder: str = "offline"  # "offline" | "openai"
    embedding_model: str = Field(default="text-embedding-3-small", min_length=1)
    embedding_dims: int | None = Field(default=None, ge=8, le=16000)
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    openai_max_retries: int = Field(default=5, ge=0, le=20)
    embed_batch_size: int = Field(default=256, ge=1, le=2048)
    embed_batch_max_chars: int = Field(default=400_000, ge=1000, le=100_000_000)
    # Fan-out: batches in flight per refresh; limits shared by every flow run that
    # embeds with the same provider (Prefect global rate limits embed-<provider>-*).
    embed_parallelism: int = Field(default=1, ge=1, le=64)
    embed_requests_per_minute: int | None = Field(default=None, ge=2)
    embed_tokens_per_minute: int | None = Field(default=None, ge=2)
    # Where the fan-out runs: threads of the flow's process, or a Dask cluster
    # (pip install 'kbrefresh[dask]'); no dask_address means a temporary local cluster.
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = Field(default=None, min_length=1)
    dask_workers: int = Field(default=2, ge=1, le=256)
    # With task_runner "dask", chunking runs there too: batches of this many documents,
    # at most chunk_parallelism in flight (the flow's memory holds that many batches).
    chunk_batch_docs: int = Field(default=200, ge=1, le=100_000)
    chunk_parallelism: int = Field(default=4, ge=1, le=256)
    # OpenAI Batch API for full re-embeds of at least embed_batch_api_min_texts texts.
    embed_batch_api: bool = False
    embed_batch_api_min_texts: int = Field(default=10_000, ge=1)
    embed_batch_api_poll_seconds: float = Field(default=60.0, gt=0)
    embed_batch_api_max_hours: float = Field(default=24.0, gt=0)

    mlflow_tracking_uri: str | None = Field(default=None, min_length=1)
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
    # A build's budget (RefreshRequest.max_tokens / max_seconds override): checked before
    # each embedding batch against the plan's token estimate; None means no limit.
    build_max_tokens: int | None = Field(default=None, ge=1)
    build_max_seconds: float | None = Field(default=None, gt=0)
    # A refresh reads the source in batches of this many documents (memory is bounded by
    # it), opens only files whose stat signature changed unless read_every_file is set
    # (for file systems whose ctime cannot be trusted), and parses only files whose bytes
    # changed unless reparse_sources is set.
    source_batch_size: int = Field(default=1000, ge=1, le=100_000)
    read_every_file: bool = False
    reparse_sources: bool = False

    # Notifications (publish, rollback, skipped runs, rollout, proven): a plain webhook that
    # receives JSON, and Prefect notification blocks by name ("slack-oncall,email-ml").
    notify_webhook_url: SecretStr | None = None
    notify_blocks: str = ""
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value not in {"offline", "openai"}:
            raise ValueError(f"unknown embedder {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in {
            "postgresql", "postgres"
        }:
            raise ValueError("not a postgresql:// URL")
        return value

    @field_validator("data_dir")
    @classmethod
    def _directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("not an http(s) URL")
        return value

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("not an http(s) URL")
        return value

    @field_validator("notify_blocks")
    @classmethod
    def _block_names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if any("/" not in n or n.startswith("/") or n.endswith("/") for n in names):
            raise ValueError("not block-type/name pairs")
        return value

    @field_validator("maintenance_work_mem")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        try:
            memory_kb(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value.strip()

    @model_validator(mode="after")
    def _batches_fit_the_token_limit(self) -> Self:
        from kbrefresh.build.ratelimit import check_limits

        check_limits(self)
        return self

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


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (and ``overrides``).

    Raises:
        ConfigError: one line per bad setting, joined by "; ": the variable, its value
            (hidden for secrets) and what is expected.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Return one line naming every bad setting of ``exc``."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = f"{ENV_PREFIX}{field.upper()}"
        shown = "(value hidden)" if field in SECRETS else f"{_raw(error.get('input'))!r}"
        problems.append(f"{name}={shown} is invalid: expected {EXPECTED.get(field, 'a valid value')}")
    return "; ".join(problems)


def _raw(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value
