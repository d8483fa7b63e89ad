"""No secret anywhere: a sentinel API key, database password and webhook token go through
a full refresh, a check and a rollback (the CLI, then the Prefect flows with the secrets
in Prefect Secret blocks), including failures that involve them; then everything written
is scanned: stdout/stderr, error lines, log records, the Prefect database (logs,
artifacts, events, flow-run parameters), the MLflow store and artifacts, the webhook
payloads and every row of every kbrefresh table (the query log included).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from kbrefresh import Retriever
from kbrefresh.cli import app
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.openai_server import FakeOpenAIServer
from tests.support.roles import apply_roles, role_url
from tests.support.webhook_server import webhook_receiver

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "sk-sentinel-KEY-7Qx9f"
PASSWORD = "pw-sentinel-8Zr2k"
HOOK_TOKEN = "secret-token"  # the last path segment of webhook_receiver()'s URL
SENTINELS = (KEY, PASSWORD, HOOK_TOKEN)
BLOCKS = ("kbrefresh-openai-api-key", "kbrefresh-database-url")


def leaks(where: str, data: str | bytes) -> list[str]:
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    return [f"{s!r} in {where}" for s in SENTINELS if s.encode() in raw]


def scan_tree(root: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        found += leaks(str(path.relative_to(root)), path.read_bytes())
    return found


def scan_tables(url: str) -> list[str]:
    found: list[str] = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        for table in tables:
            for sentinel in SENTINELS:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s")
                                   .format(sql.Identifier(table)), (f"%{sentinel}%",)).fetchone()
                if row and row[0]:
                    found.append(f"{sentinel!r} in table {table}")
    return found


@pytest.fixture
def owner_url(pg_uri: str) -> str:
    db = f"secrets_{os.getpid()}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    apply_roles(pg_uri, db, {"owner": PASSWORD, "chatbot": "c", "chatlog": "l"})
    return role_url(pg_uri, "kbrefresh_owner", PASSWORD).replace("/postgres?", f"/{db}?", 1)


@pytest.fixture
def secret_blocks(owner_url: str) -> Iterator[None]:
    from prefect.blocks.system import Secret

    Secret(value=KEY).save(BLOCKS[0], overwrite=True)
    Secret(value=owner_url).save(BLOCKS[1], overwrite=True)
    try:
        yield
    finally:  # the harness is shared by the session: leave no block for other tests
        for name in BLOCKS:
            Secret.delete(name)  # type: ignore[attr-defined]


def run_cli(env: dict[str, str], outputs: list[str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})
    outputs.append(f"$ kbrefresh {' '.join(args)}\n{result.output}")
    assert result.exit_code == code, result.output
    return str(result.output)


def edit(corpus: Path, n: int) -> None:
    (corpus / "general" / f"added-{n}.md").write_text(
        f"# Added page {n}\n\nHow to rotate an API key without downtime, take {n}.\n", "utf-8")


def test_no_secret_in_anything_written(
    owner_url: str, secret_blocks: None, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    write_corpus(corpus, n_docs=8)
    outputs: list[str] = []
    with FakeOpenAIServer(default_dims=64, api_key=KEY) as server, webhook_receiver() as hook:
        env = {"KBREFRESH_DATABASE_URL": owner_url, "KBREFRESH_EMBEDDER": "openai",
               "KBREFRESH_OPENAI_BASE_URL": server.base_url, "KBREFRESH_OPENAI_API_KEY": KEY,
               "KBREFRESH_EMBEDDING_DIMS": "64", "KBREFRESH_DATA_DIR": str(data),
               "KBREFRESH_MAINTENANCE_WORK_MEM": "64MB", "KBREFRESH_NOTIFY_WEBHOOK_URL": hook.url,
               "KBREFRESH_OPENAI_MAX_RETRIES": "0"}
        # The CLI: refresh, refresh again, check, rollback; then failures that carry secrets.
        run_cli(env, outputs, "refresh", "--kb", "kb", "--source", str(corpus))
        edit(corpus, 1)
        run_cli(env, outputs, "refresh", "--kb", "kb", "--source", str(corpus))
        run_cli(env, outputs, "check", "--kb", "kb", "--source", str(corpus))
        run_cli(env, outputs, "rollback", "--kb", "kb")
        edit(corpus, 2)
        run_cli({**env, "KBREFRESH_OPENAI_API_KEY": KEY + "-revoked"}, outputs,
                "refresh", "--kb", "kb", "--source", str(corpus), code=1)
        bad_port = owner_url.replace("?", "?port=1&", 1)
        run_cli({**env, "KBREFRESH_DATABASE_URL": bad_port}, outputs, "status", code=1)
        run_cli({**env, "KBREFRESH_DATABASE_URL": "mysql://u:" + PASSWORD + "@h/db"}, outputs,
                "status", code=1)
        reader = Settings(embedder="openai", openai_base_url=server.base_url, openai_api_key=KEY,
                          embedding_dims=64, data_dir=data, tracking=False)
        with Retriever("kb", database_url=owner_url, log_database_url=owner_url,
                       settings=reader) as kb:
            kb.feedback(kb.search("rotate api key", session_id="s").query_id, rating=4)

        # The flows: the key and the database URL come only from the Secret blocks.
        from flows import RollbackParameters, rollback_kb, scheduled_refresh
        from flows.retraining_check import CheckParameters, retraining_check

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("KBREFRESH_OPENAI_API_KEY")
        monkeypatch.delenv("KBREFRESH_DATABASE_URL")
        before = len(server.requests)
        states = [scheduled_refresh(RefreshRequest(kb="kb", source=str(corpus)),
                                    return_state=True),
                  retraining_check(CheckParameters(kb="kb", source=str(corpus), dispatch=False),
                                   return_state=True),
                  rollback_kb(RollbackParameters(kb="kb"), return_state=True)]
        assert [s.is_completed() for s in states] == [True] * 3, [s.message for s in states]
        assert len(server.requests) > before  # the key from the block reached the server
        edit(corpus, 3)
        monkeypatch.setenv("KBREFRESH_OPENAI_API_KEY", KEY + "-revoked")
        failed = scheduled_refresh(RefreshRequest(kb="kb", source=str(corpus)), return_state=True)
        assert failed.is_failed()
        outputs.append(repr(failed.result(raise_on_failure=False)))
        payloads = json.dumps(hook.received)

    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    prefect_db = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])
    found = (leaks("CLI output", "\n".join(outputs)) + [leak for rec in caplog.records
                  for leak in leaks(f"a log record of {rec.name} ({rec.getMessage()[:200]!r})",
                                    rec.getMessage())]
             + leaks("webhook payloads", payloads) + scan_tree(data)
             + scan_tree(prefect_db.parent) + scan_tables(owner_url))
    assert found == []
    # The scan saw what it claims to have seen.
    assert hook.received and any(p.suffix == ".db" for p in data.rglob("*"))
    assert prefect_db.exists() and "kb" in payloads


def test_the_environment_wins_over_a_secret_block_and_a_bad_block_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.blocks.system import Secret

    from kbrefresh.errors import ConfigError
    from tasks._settings import flow_settings

    monkeypatch.delenv("KBREFRESH_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("KBREFRESH_NOTIFY_WEBHOOK_URL", raising=False)
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", "postgresql://from-env@127.0.0.1/kb")
    Secret(value=KEY).save(BLOCKS[0], overwrite=True)
    Secret(value="postgresql://from-block@127.0.0.1/kb").save(BLOCKS[1], overwrite=True)
    try:
        settings = flow_settings()
        assert settings.resolved_openai_key() == KEY
        assert settings.database_url is not None
        assert settings.database_url.get_secret_value() == "postgresql://from-env@127.0.0.1/kb"
        Secret(value={"key": KEY}).save(BLOCKS[0], overwrite=True)
        with pytest.raises(ConfigError) as info:
            flow_settings()
        assert str(info.value) == ("Prefect Secret block 'kbrefresh-openai-api-key' must hold a "
                                   "non-empty string, got a dict")
    finally:
        for name in BLOCKS:
            Secret.delete(name)  # type: ignore[attr-defined]
