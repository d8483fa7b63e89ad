"""Bad settings and the one-line error check shared by the CLI tests."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from kbrefresh.cli import app

# One bad value per setting (two for the memory size): variable, value, expected words.
BAD_SETTINGS = [
    ("EMBEDDER", "foo", "expected 'offline' or 'openai'"),
    ("EMBEDDING_MODEL", "", "expected a model name"),
    ("EMBEDDING_DIMS", "3", "expected an integer from 8 to 16000"),
    ("EMBEDDING_DIMS", "many", "expected an integer from 8 to 16000"),
    ("OPENAI_BASE_URL", "ftp://example.org", "expected an http:// or https:// URL"),
    ("OPENAI_TIMEOUT_SECONDS", "0", "expected a number of seconds > 0 and <= 3600"),
    ("OPENAI_MAX_RETRIES", "-1", "expected an integer from 0 to 20"),
    ("EMBED_BATCH_SIZE", "0", "expected an integer from 1 to 2048"),
    ("EMBED_BATCH_MAX_CHARS", "10", "expected an integer from 1000 to 100000000"),
    ("MLFLOW_TRACKING_URI", "", "expected an MLflow tracking URI"),
    ("TRACKING", "maybe", "expected true or false"),
    ("SOURCE_BATCH_SIZE", "0", "expected an integer from 1 to 100000"),
    ("REPARSE_SOURCES", "perhaps", "expected true or false"),
    ("READ_EVERY_FILE", "sometimes", "expected true or false"),
    ("MAINTENANCE_WORK_MEM", "lots", "expected a PostgreSQL memory size from 1MB to 64GB"),
    ("MAINTENANCE_WORK_MEM", "100GB", "expected a PostgreSQL memory size from 1MB to 64GB"),
    ("MAINTENANCE_WORK_MEM", "512kB", "expected a PostgreSQL memory size from 1MB to 64GB"),
    ("KEEP_VERSIONS", "0", "expected an integer from 1 to 100"),
    ("BUILD_MAX_TOKENS", "0", "expected an integer of at least 1, or unset"),
    ("BUILD_MAX_SECONDS", "-5", "expected a number of seconds > 0, or unset"),
    ("DATA_DIR", "/dev/null", "expected a directory path"),
    ("EMBED_PARALLELISM", "0", "expected an integer from 1 to 64"),
    ("EMBED_REQUESTS_PER_MINUTE", "1", "expected an integer of at least 2, or unset"),
    ("EMBED_TOKENS_PER_MINUTE", "x", "expected an integer of at least 2, or unset"),
    ("TASK_RUNNER", "ray", "expected 'thread' or 'dask'"),
    ("DASK_ADDRESS", "", "expected a Dask scheduler address"),
    ("DASK_WORKERS", "0", "expected an integer from 1 to 256"),
    ("CHUNK_BATCH_DOCS", "0", "expected an integer from 1 to 100000"),
    ("CHUNK_PARALLELISM", "many", "expected an integer from 1 to 256"),
    ("EMBED_BATCH_API", "sometimes", "expected true or false"),
    ("EMBED_BATCH_API_MIN_TEXTS", "0", "expected an integer of at least 1"),
    ("EMBED_BATCH_API_POLL_SECONDS", "0", "expected a number of seconds > 0"),
    ("EMBED_BATCH_API_MAX_HOURS", "-1", "expected a number of hours > 0"),
    ("EMBEDDING_STORAGE", "float8", "expected 'vector' or 'halfvec'"),
    ("INDEX_BUILD_WORKERS", "65", "expected an integer from 0 to 64, or unset"),
    ("DELTA_EXACT_ROWS", "-1", "expected an integer from 0 to 100000"),
    ("COMPACT_SHARE", "11", "expected a number from 0 to 10"),
    ("NOTIFY_BLOCKS", "oncall", "expected comma-separated Prefect block names"),
    ("NOTIFY_TIMEOUT_SECONDS", "0", "expected a number of seconds > 0 and <= 120"),
]
SECRET = "s3cret-Pa55"


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(app, args, env={"COLUMNS": "80", **env})


def assert_one_error_line(result: Any, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return str(lines[0])
