"""``kbrefresh rebrand`` and ``kbrefresh demo --scenario rebrand``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbrefresh import store
from kbrefresh.cli import app
from kbrefresh.db import connect
from kbrefresh.retraining.rebrand_run import pending_rename_map
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.integration.test_urgent_rebrand import live_kb
from tests.support.webhook_server import webhook_receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    assert settings.database_url is not None
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("KBREFRESH_EMBEDDING_DIMS", "64")
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return settings


@pytest.mark.parametrize(("name", "content", "message"), [
    ("map.txt", "{}", "unsupported rename file 'map.txt'; expected one of: .json, .yaml, .yml"),
    ("map.json", "{nope", "map.json: invalid JSON"),
    ("map.json", '{"Zephyr": "Zephyr"}', "Zephyr"),
    ("missing.json", None, "cannot read rename file"),
])
def test_a_bad_rename_map_is_one_line_and_touches_nothing(
    cli_env: Settings, tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    rebranded = live_kb(cli_env, tmp_path)
    path = tmp_path / name
    if content is not None:
        path.write_text(content, "utf-8")
    result = CliRunner().invoke(app, ["rebrand", "--kb", "prod", "--source", str(rebranded),
                                      "--renames", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    with connect(cli_env) as conn:
        kb_id = store.get_kb_id(conn, "prod")
        assert routing.live_version(conn, kb_id) == 1
        assert pending_rename_map(conn, kb_id) is None


def test_rebrand_command_records_or_swaps(cli_env: Settings, tmp_path: Path) -> None:
    rebranded = live_kb(cli_env, tmp_path)
    renames = tmp_path / "renames.yaml"
    renames.write_text("Zephyr: Boreas\nQuasar: Pulsar\nHalcyon: Serene\n", "utf-8")
    args = ["rebrand", "--kb", "prod", "--source", str(rebranded), "--renames", str(renames)]
    recorded = CliRunner().invoke(app, [*args, "--record-only"])
    assert recorded.exit_code == 0, recorded.output
    assert "rename map of 3 names on record for 'prod'" in recorded.output
    with webhook_receiver() as hook:
        result = CliRunner().invoke(app, args, env={"KBREFRESH_NOTIFY_WEBHOOK_URL": hook.url})
    assert result.exit_code == 0, result.output
    assert "3 of" in result.output and "documents mention an old name" in result.output
    assert "rebrand queries" in result.output and "Zephyr → Boreas" in result.output
    [body] = hook.received
    assert body["kind"] == "published" and body["versions"] == {"live": 2, "previous": 1}
    with connect(cli_env) as conn:
        kb_id = store.get_kb_id(conn, "prod")
        assert routing.live_version(conn, kb_id) == 2
        assert pending_rename_map(conn, kb_id) is None


def test_rebrand_demo_runs_end_to_end(cli_env: Settings) -> None:
    with webhook_receiver() as hook:
        result = CliRunner().invoke(app, ["demo", "--scenario", "rebrand"],
                                    env={"KBREFRESH_NOTIFY_WEBHOOK_URL": hook.url})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "decision: run_now" in out, out
    assert "rebrand due: True" in out and "kbrefresh.rebrand.requested" in out
    assert "kbrefresh.retrain.requested" not in out
    assert "documents mention an old name" in out and "rebrand took" in out
    [body] = hook.received
    assert body["kind"] == "published" and "rebrand queries" in body["text"]
    tail = out.strip().splitlines()[-1]
    assert tail.startswith("simulated satisfaction (1-5): 5.00 before the rename"), tail
    assert tail.split("→ ")[2].startswith("5.00 after the rebrand"), tail


def test_check_run_applies_the_rename_map_on_record_when_satisfaction_drops(
    cli_env: Settings, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from tests.integration.test_signals import LESS_SATISFIED, SATISFIED, seed_feedback

    rebranded = live_kb(cli_env, tmp_path)
    renames = tmp_path / "renames.yaml"
    renames.write_text("Zephyr: Boreas\nQuasar: Pulsar\nHalcyon: Serene\n", "utf-8")
    recorded = CliRunner().invoke(app, ["rebrand", "--kb", "prod", "--source", str(rebranded),
                                        "--renames", str(renames), "--record-only"])
    assert recorded.exit_code == 0, recorded.output
    seed_feedback(cli_env, "prod", datetime.now(UTC), baseline=SATISFIED, current=LESS_SATISFIED)

    hint = CliRunner().invoke(app, ["check", "--kb", "prod"])
    assert hint.exit_code == 0, hint.output
    assert "a rename map is on record: rerun with --run" in hint.output
    with webhook_receiver() as hook:
        result = CliRunner().invoke(app, ["check", "--kb", "prod", "--run"],
                                    env={"KBREFRESH_NOTIFY_WEBHOOK_URL": hook.url})
    assert result.exit_code == 0, result.output
    assert "Zephyr → Boreas" in result.output
    [body] = hook.received
    assert body["kind"] == "published" and body["versions"] == {"live": 2, "previous": 1}
    with connect(cli_env) as conn:
        kb_id = store.get_kb_id(conn, "prod")
        assert routing.live_version(conn, kb_id) == 2
        assert pending_rename_map(conn, kb_id) is None
        dispatched = conn.execute("SELECT dispatched FROM retrain_decisions WHERE kb_id = %s "
                                  "ORDER BY id DESC LIMIT 1", (kb_id,)).fetchone()
    assert dispatched is not None and dispatched["dispatched"]["rebrand"] == "in-process"
