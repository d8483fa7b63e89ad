"""Embedding API faults in the middle of a build, against a real local OpenAI-compatible server.

Each test builds v1, adds documents (six new batches of four texts), scripts a fault
after the first two batches of the next refresh and checks: a fault the client's
retries absorb costs only the retried requests; one they cannot absorb ends the run
with a one-line error, nothing published (v1 still live, the version failed), and the
next run sends only the batches that never finished (counted at the server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbrefresh import store
from kbrefresh._text import tokens_for_chars
from kbrefresh.db import connect
from kbrefresh.errors import BudgetExceeded, EmbeddingError
from kbrefresh.settings import Settings
from tests.support.build import refresh
from tests.support.cli import invoke
from tests.support.corpus import write_corpus
from tests.support.faults import (
    BATCH,
    EMBED_DIMS,
    FAILED,
    PASSED,
    RECOVERED,
    SMOKE_ONLY,
    SMOKE_ONLY_YAML,
    Fault,
    add_documents,
    chunk_requests,
    chunk_texts,
    fault_env,
)
from tests.support.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(default_dims=EMBED_DIMS) as running:
        yield running


@pytest.fixture
def built(database_url: str, tmp_path: Path, server: FakeOpenAIServer,
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Build v1 of "kb" from 12 documents, then add 12 (24 new chunks, 6 batches)."""
    source = tmp_path / "src"
    write_corpus(source, 12)

    def make(retries: int = 1, timeout: float = 10.0) -> Settings:
        env = fault_env(database_url, tmp_path / "data", server, retries=retries, timeout=timeout)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert refresh(settings, "kb", str(source), policy=SMOKE_ONLY).version == 1
        add_documents(source)
        server.requests.clear()
        return settings

    return make


def source_of(tmp_path: Path) -> str:
    return str(tmp_path / "src")


def routing(settings: Settings) -> tuple[int | None, dict[int, str]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        live = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s",
                            (kb_id,)).fetchone()
        rows = conn.execute("SELECT version, status FROM kb_versions WHERE kb_id = %s",
                            (kb_id,)).fetchall()
    return live["live_version"] if live else None, {r["version"]: str(r["status"]) for r in rows}


# One absorbed fault stays in the default run; the others run with -m reliability and in
# benchmarks/reliability_faults.py (the same table).
@pytest.mark.parametrize("fault", [
    pytest.param(f, id=f.name, marks=() if f.name == "5xx burst" else pytest.mark.reliability)
    for f in RECOVERED])
def test_a_fault_within_the_retries_costs_only_the_retried_requests(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path, fault: Fault,
) -> None:
    settings = built(retries=2, timeout=1.0)
    server.pass_next(PASSED)
    fault.inject(server)
    extra = fault.requests
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    assert (report.version, report.texts_embedded) == (2, 24)
    retried = [r for r in server.requests if r.retry_count > 0]
    assert len(retried) == extra
    assert len(chunk_texts(server)) == 24 + extra * BATCH
    assert routing(settings)[0] == 2


def test_retry_after_in_seconds_is_waited_for(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = built(retries=1)
    server.pass_next(PASSED)
    server.fail_next(429, retry_after="1")
    refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    refused, retried = server.requests[PASSED], server.requests[PASSED + 1]
    assert retried.retry_count == 1 and retried.inputs == refused.inputs
    assert retried.received_at - refused.received_at >= 0.95  # the server's wish, not backoff


@pytest.mark.parametrize("fault", FAILED, ids=[f.name for f in FAILED])
def test_a_fault_beyond_the_retries_fails_cleanly_and_the_next_run_resumes(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path, database_url: str,
    fault: Fault,
) -> None:
    settings = built(retries=1, timeout=0.5)
    server.pass_next(PASSED)
    fault.inject(server)
    message, sent = fault.message, fault.requests
    env = fault_env(database_url, tmp_path / "data", server, retries=1, timeout=0.5)
    policy = tmp_path / "policy.yaml"
    policy.write_text(SMOKE_ONLY_YAML, "utf-8")
    result = invoke(["refresh", "--kb", "kb", "--source", source_of(tmp_path),
                     "--policy", str(policy)], env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output and "unused" not in result.output
    # PASSED batches answered, then the failing batch's attempts; nothing after the failure.
    assert len(server.requests) == PASSED + sent
    finished = chunk_texts(server)[: PASSED * BATCH]
    live, statuses = routing(settings)
    assert live == 1 and statuses == {1: "live", 2: "failed"}

    server.requests.clear()
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    resent = set(chunk_texts(server))
    assert report.version == 3 and routing(settings)[0] == 3
    assert report.texts_embedded == 24 - PASSED * BATCH
    assert not resent & set(finished), "a finished batch was embedded again"
    assert len(resent) == 24 - PASSED * BATCH


def test_the_embedder_error_is_one_line_and_names_no_key(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = built(retries=0)
    server.fail_next(500, message="upstream exploded\nwith a second line")
    with pytest.raises(EmbeddingError) as caught:
        refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    assert "\n" not in str(caught.value).replace("\\n", "")
    assert routing(settings)[1][2] == "failed"


def tokens_of(inputs: tuple[str, ...]) -> int:
    return tokens_for_chars(sum(len(text) for text in inputs))


def test_a_token_budget_stops_before_the_batch_that_would_pass_it_and_the_next_run_resumes(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path, database_url: str,
) -> None:
    settings = built()
    env = fault_env(database_url, tmp_path / "data", server, retries=1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(SMOKE_ONLY_YAML, "utf-8")
    result = invoke(["refresh", "--kb", "kb", "--source", source_of(tmp_path), "--policy",
                     str(policy), "--max-tokens", "1500"], env)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    sent = chunk_requests(server)
    spent = sum(tokens_of(inputs) for inputs in sent)
    assert 0 < len(sent) < 6 and spent <= 1500
    assert routing(settings) == (1, {1: "live", 2: "failed"})

    server.requests.clear()
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    rest = chunk_requests(server)
    assert len(sent) + len(rest) == 6 and report.texts_embedded == 24 - len(sent) * BATCH
    assert not {t for r in rest for t in r} & {t for r in sent for t in r}
    following = tokens_of(rest[0])
    assert spent + following > 1500
    assert line.startswith(
        f"error: refresh of 'kb' stopped before embedding batch {len(sent) + 1} of 6: token "
        f"budget max_tokens=1500 would be exceeded: the next batch (~{following} tokens) would "
        f"bring this run to ~{spent + following} tokens (plan: ~")
    assert line.endswith(
        f"); nothing was published, the {len(sent)} batches sent are kept and the next run "
        "reuses them; raise --max-tokens / KBREFRESH_BUILD_MAX_TOKENS, or rerun to continue")


def test_the_budget_settings_apply_when_the_request_sets_none(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = built().model_copy(update={"build_max_tokens": 10})
    with pytest.raises(BudgetExceeded, match=r"stopped before embedding batch 1 of 6: token "
                       r"budget max_tokens=10 would be exceeded"):
        refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    assert chunk_requests(server) == []
    # The request's own limit wins over the setting.
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY, max_tokens=10**6)
    assert report.version == 3 and report.texts_embedded == 24


def test_a_time_budget_stops_before_the_first_batch_once_spent(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = built()
    with pytest.raises(BudgetExceeded) as caught:
        refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY, max_seconds=0.001)
    message = str(caught.value)
    assert message.startswith("refresh of 'kb' stopped before embedding batch 1 of 6: time "
                              "budget max_seconds=0.001 would be exceeded: ")
    assert "raise --max-seconds / KBREFRESH_BUILD_MAX_SECONDS, or rerun to continue" in message
    assert chunk_requests(server) == [] and routing(settings)[0] == 1
