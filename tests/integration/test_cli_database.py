"""The CLI at its edge on a real database: bad config creates nothing; --json parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from kbrefresh.cli import app
from kbrefresh.settings import Settings
from tests.support.cli import BAD_SETTINGS, assert_one_error_line
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "docs", n_docs=8)
    return tmp_path / "docs"


def created_rows(database_url: str) -> tuple[int, int]:
    """Return (knowledge bases, versions); (0, 0) when the schema does not even exist."""
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('kb_versions')").fetchone() == (None,):
            return 0, 0
        kbs = conn.execute("SELECT count(*) FROM kb").fetchone()
        versions = conn.execute("SELECT count(*) FROM kb_versions").fetchone()
    assert kbs is not None and versions is not None
    return kbs[0], versions[0]


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **env})


@pytest.mark.parametrize(("name", "value", "expected"), BAD_SETTINGS)
def test_a_bad_setting_refuses_a_refresh_before_anything_exists(
    env: Settings, database_url: str, corpus: Path, name: str, value: str, expected: str
) -> None:
    result = run("refresh", "--kb", "edge", "--source", str(corpus), **{f"KBREFRESH_{name}": value})
    assert_one_error_line(result, f"KBREFRESH_{name}={value!r} is invalid: {expected}")
    assert created_rows(database_url) == (0, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--header-template", "{title}"], "header_template '{title}' must contain {text}"),
        (["--header-template", "{nope}{text}"], "unknown placeholder 'nope'"),
        (["--max-chars", "200", "--overlap-chars", "300"],
         "overlap_chars must be between 0 and max_chars - 1 (199), got 300"),
    ],
)
def test_a_bad_chunker_option_creates_nothing(
    env: Settings, database_url: str, corpus: Path, options: list[str], message: str
) -> None:
    assert_one_error_line(run("refresh", "--kb", "edge", "--source", str(corpus), *options), message)
    assert created_rows(database_url) == (0, 0)


def test_a_bad_policy_file_creates_nothing(
    env: Settings, database_url: str, corpus: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - metric: hit@5\n    bogus: 1\n", "utf-8")
    result = run("refresh", "--kb", "edge", "--source", str(corpus), "--policy", str(policy))
    assert_one_error_line(result, "policy.yaml: invalid acceptance policy: rules[0].bogus: unknown key")
    assert created_rows(database_url) == (0, 0)


def test_listings_as_json_and_in_80_columns(env: Settings, corpus: Path) -> None:
    built = run("refresh", "--kb", "edge", "--source", str(corpus), KBREFRESH_TRACKING="false")
    assert built.exit_code == 0, built.output
    status = json.loads(run("status", "--json").stdout)
    assert [(r["kb"], r["live_version"], r["versions"]) for r in status] == [("edge", 1, 1)]
    assert set(status[0]) == {"kb", "live_version", "dataset_tag", "chunks", "documents",
                              "live_at", "canary_version", "canary_percent", "versions"}
    versions = json.loads(run("versions", "--kb", "edge", "--json").stdout)
    assert [(v["version"], v["status"], v["error"]) for v in versions] == [(1, "live", None)]
    assert versions[0]["embedder"].startswith("offline:") and versions[0]["embedder"].endswith(":64")
    history = json.loads(run("history", "--kb", "edge", "--json").stdout)
    assert [(h["action"], h["to_version"]) for h in history] == [("swap", 1)]
    verdict = run("eval", "--kb", "edge", "--against", "none", "--json")
    assert verdict.exit_code == 0, verdict.output
    data = json.loads(verdict.stdout)
    assert data["passed"] is True and data["rules"] and set(data["rules"][0]) == {
        "rule", "metric", "slice", "value", "live", "delta", "ci_low", "ci_high", "ci", "n",
        "threshold", "passed", "reason"}
    check = json.loads(run("check", "--kb", "edge", "--json").stdout)
    assert check["kb"] == "edge" and {s["signal"] for s in check["signals"]}
    hits = json.loads(run("query", "api key", "--kb", "edge", "--json").stdout)
    assert hits and hits[0]["rank"] == 1
    for args in (["status"], ["versions", "--kb", "edge"], ["history", "--kb", "edge"],
                 ["eval", "--kb", "edge", "--against", "none"], ["check", "--kb", "edge"]):
        shown = run(*args)
        assert shown.exit_code == 0, shown.output
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
