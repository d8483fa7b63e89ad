"""Least privilege, proven with real permission errors (docs/roles.sql on the embedded server).

The build owner is not a superuser and still runs a refresh, a check, a second refresh and a
rollback; the chatbot's reader role searches (Retriever and the live view) but cannot write
or read the query log; the logger role inserts log rows but cannot read them or the KB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from kbrefresh import Retriever
from kbrefresh.cli import app
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.roles import apply_roles, role_url

pytestmark = pytest.mark.integration

PASSWORDS = {"owner": "owner-pw-1", "chatbot": "chatbot-pw-2", "chatlog": "chatlog-pw-3"}
Denied = psycopg.errors.InsufficientPrivilege


@dataclass(frozen=True)
class Roles:
    owner: str
    chatbot: str
    chatlog: str
    env: dict[str, str]
    corpus: Path
    table: str


def cli(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **env})
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def roles(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roles]:
    """A database owned by the non-superuser kbrefresh_owner with KB 'kb' v1 built by it."""
    db = f"roles_{os.getpid()}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    apply_roles(pg_uri, db, PASSWORDS)
    urls = {name: role_url(pg_uri, f"kbrefresh_{name}", pw).replace("/postgres?", f"/{db}?", 1)
            for name, pw in PASSWORDS.items()}
    tmp = tmp_path_factory.mktemp("roles")
    write_corpus(tmp / "corpus", n_docs=8)
    env = {"KBREFRESH_DATABASE_URL": urls["owner"], "KBREFRESH_EMBEDDING_DIMS": "64",
           "KBREFRESH_DATA_DIR": str(tmp / "data"), "KBREFRESH_MAINTENANCE_WORK_MEM": "64MB",
           "KBREFRESH_TRACKING": "false"}
    cli(env, "refresh", "--kb", "kb", "--source", str(tmp / "corpus"))
    with psycopg.connect(urls["owner"]) as conn:
        row = conn.execute("SELECT table_name FROM kb_fingerprints").fetchone()
    assert row is not None
    yield Roles(urls["owner"], urls["chatbot"], urls["chatlog"], env, tmp / "corpus", row[0])


def test_the_owner_is_no_superuser_and_refreshes_checks_and_rolls_back(roles: Roles) -> None:
    with psycopg.connect(roles.owner) as conn:
        flags = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
                             " WHERE rolname = current_user").fetchone()
    assert flags == (False, False, False)
    (roles.corpus / "general" / "added.md").write_text(
        "# Added page\n\nHow to rotate an API key without downtime, step by step.\n", "utf-8")
    assert "live version of 'kb': v2 (was v1)" in cli(
        roles.env, "refresh", "--kb", "kb", "--source", str(roles.corpus)).stdout
    cli(roles.env, "check", "--kb", "kb", "--source", str(roles.corpus))
    assert cli(roles.env, "rollback", "--kb", "kb").stdout == "'kb': live version 2 → 1\n"
    with psycopg.connect(roles.owner) as conn:
        assert conn.execute("SELECT live_version FROM kb_routing").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM retrain_decisions").fetchone() == (1,)


def test_the_chatbot_searches_and_logs_with_its_two_roles(roles: Roles) -> None:
    settings = Settings(embedding_dims=64, tracking=False)
    with Retriever("kb", database_url=roles.chatbot, log_database_url=roles.chatlog,
                   settings=settings) as kb:
        result = kb.search("rotate api key", k=3, session_id="s-1")
        kb.feedback(result.query_id, rating=5)
        kb.flush()
        assert result.hits and (kb.logged, kb.log_errors) == (2, 0)
    with psycopg.connect(roles.chatbot) as conn:
        assert conn.execute('SELECT count(*) > 0 FROM "kb_kb_live"').fetchone() == (True,)


READER_DENIED = [
    "INSERT INTO {table} (doc_id) VALUES ('x')",
    "UPDATE {table} SET content = 'defaced'",
    "DELETE FROM {table}",
    "TRUNCATE {table}",
    "UPDATE kb_routing SET live_version = 1",
    "DELETE FROM kb_versions",
    "INSERT INTO kb (name) VALUES ('mine')",
    "SELECT * FROM query_log",
    "SELECT * FROM feedback",
    "SELECT * FROM retrain_decisions",
    "INSERT INTO query_log (query_id) VALUES (gen_random_uuid())",
    "CREATE TABLE mine (x int)",
    "DROP VIEW kb_kb_live",
]
LOGGER_DENIED = [
    "SELECT * FROM query_log",
    "SELECT * FROM feedback",
    "UPDATE query_log SET query = 'x'",
    "DELETE FROM query_log",
    "SELECT * FROM kb",
    "SELECT * FROM kb_routing",
    "SELECT * FROM kb_documents",
    "SELECT * FROM {table}",
    "SELECT * FROM kb_kb_live",
    "UPDATE kb_routing SET live_version = 1",
    "CREATE TABLE mine (x int)",
]


@pytest.mark.parametrize(("who", "statement"),
                         [("chatbot", s) for s in READER_DENIED]
                         + [("chatlog", s) for s in LOGGER_DENIED])
def test_each_role_is_denied_what_it_does_not_need(roles: Roles, who: str, statement: str) -> None:
    url = roles.chatbot if who == "chatbot" else roles.chatlog
    query = sql.SQL(statement.replace("{table}", "{t}")).format(t=sql.Identifier(roles.table))
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(Denied):
        conn.execute(query)


def test_the_chat_roles_cannot_connect_elsewhere_or_become_the_owner(
    roles: Roles, pg_uri: str
) -> None:
    for url in (roles.chatbot, roles.chatlog):
        with psycopg.connect(url, autocommit=True) as conn, pytest.raises(Denied):
            conn.execute("SET ROLE kbrefresh_owner")
