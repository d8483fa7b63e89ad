"""``kbrefresh rollout ...`` against a real database: every command, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbrefresh.cli import app
from kbrefresh.settings import Settings
from tests.support.rollout import inject, live_and_candidate

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


def test_rollout_commands(cli_env: Settings, tmp_path: Path) -> None:
    staged = live_and_candidate(cli_env, tmp_path)
    policy = tmp_path / "rollout.yaml"
    policy.write_text("min_step_seconds: 0s\nmin_samples: 20\nmin_feedback: 0\n"
                      "require_approval: true\nmin_golden_accuracy: null\n", "utf-8")
    runner = CliRunner()

    def kb(*args: str) -> str:
        result = runner.invoke(app, ["rollout", *args, "--kb", "kb"])
        assert result.exit_code == 0, result.output
        return result.output

    assert "rollout #1 of 'kb' v2: start -> awaiting_approval, candidate at 0%" in kb(
        "start", "--steps", "10,100", "--policy", str(policy))
    assert "approve -> running, candidate at 10%" in kb("approve", "--comment", "ok", "--by", "ann")
    assert "pause -> paused" in kb("pause")
    refused = runner.invoke(app, ["rollout", "pause", "--kb", "kb"])
    assert refused.exit_code == 1
    assert "error: cannot pause rollout #1 of 'kb': it is 'paused'; expected 'running'" in (
        " ".join(refused.output.split()))
    assert "resume -> running" in kb("resume")
    inject(cli_env, staged.kb_id, 2, 25)
    assert "advance -> running, candidate at 100%" in kb("advance", "--reason", "looks good")
    status = kb("status")
    assert "rollout #1 of 'kb': canary of v2 against v1; state running; steps 10%, 100%" in status
    assert "approved by ann: ok" in status and "manual: looks good" in status
    assert "promote -> promoted, candidate at 0%" in kb("promote")
    bad = runner.invoke(app, ["rollout", "start", "--kb", "kb", "--steps", "5,x"])
    assert bad.exit_code == 1 and "error: --steps '5,x' is invalid; expected percents" in bad.output


def test_demo_rejects_an_unknown_scenario(cli_env: Settings) -> None:
    result = CliRunner().invoke(app, ["demo", "--scenario", "shadow"])
    assert result.exit_code == 1
    assert "error: unknown scenario 'shadow'; expected one of refresh, canary, ab, monitor" in result.output


def test_canary_demo_promotes_one_candidate_and_aborts_the_damaged_one(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KBREFRESH_EMBEDDING_DIMS")  # the demo's own embedder, as users run it
    result = CliRunner().invoke(app, ["demo", "--scenario", "canary"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "rollout #1: canary of v2 against live v1: steps 5%, 50%, 100%" in out
    assert "-> advance: step 1/3 at 5%: every check passed" in out, result.output
    assert "v2: promoted" in out, result.output
    assert "rollout #2: canary of v3 against live v2" in out
    assert "-> abort: error_rate: 100.0% of" in out and "v3: aborted" in out
