"""One refresh request: its bounds, as the CLI reports them, before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbrefresh.cli import app
from kbrefresh.errors import ConfigError
from kbrefresh.refresh.request import RefreshRequest, parse_request


def test_defaults_match_the_core_chunker_and_quality_policy() -> None:
    request = RefreshRequest(kb="kb", source="docs")
    assert request.chunker().as_dict() == {"max_chars": 1200, "overlap_chars": 150,
                                           "min_chars": 40,
                                           "header_template": "{title} › {section}\n\n{text}"}
    assert (request.quality_policy().max_shrink, request.quality_policy().max_age_days) == (0.2, 365.0)
    assert request.acceptance_policy() is None and request.keep_versions is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_chars": 20001}, "max_chars=20001 is invalid: input should be less than or equal to 20000"),
        ({"overlap_chars": 5001, "max_chars": 20000},
         "overlap_chars=5001 is invalid: input should be less than or equal to 5000"),
        ({"max_chars": 1000, "overlap_chars": 1000},
         "overlap_chars must be between 0 and max_chars - 1 (999), got 1000"),
        ({"kb": " padded"}, ("kb=' padded' is invalid: knowledge base name ' padded' has leading "
                            "or trailing spaces")),
        ({"nope": 1}, "unknown refresh option 'nope'"),
    ],
)
def test_bad_values_are_one_line(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_request(**({"kb": "kb", "source": "docs"} | values))
    assert str(info.value) == message


def test_the_cli_refuses_bad_options_before_touching_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable database: a refresh that got past validation would fail differently.
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    policy = tmp_path / "p.yaml"
    policy.write_text("k: 0\n", encoding="utf-8")
    runner = CliRunner()
    for args, message in [
        (["--max-chars", "50"], ("max_chars=50 is invalid: input should be greater than or equal "
                                "to 100")),
        (["--policy", str(policy)], "policy_file="),
    ]:
        result = runner.invoke(app, ["refresh", "--kb", "kb", "--source", str(tmp_path), *args])
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())  # rich wraps at the terminal width
        assert text.startswith("error: " + message) and "Traceback" not in text, text
