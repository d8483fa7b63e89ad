"""Embedding API faults in the middle of a build, against a real local OpenAI-compatible server.

Each test builds v1, adds documents (six new batches of four texts), scripts a fault
after the first two batches of the next refresh and checks: a fault the client's
retries absorb costs only the retried requests; one they cannot absorb ends the run
with a one-line error, nothing published (v1 still live, the version failed), and the
next run sends only the batches that never finished (counted at the server).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbrefresh import store
from kbrefresh._text import tokens_for_chars
from kbrefresh.db import connect
from kbrefresh.errors import BudgetExceeded, EmbeddingError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.settings import Settings
from tests.support.build import refresh
from tests.support.cli import invoke
from tests.support.corpus import write_corpus
from tests.support.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

BATCH = 4
PASSED = 2  # batches of the second build that finish before the fault
EMBED_DIMS = 64
# Smoke checks only: the gate's p95 latency rule flakes on a loaded machine, and the
# faults under test are the embedder's.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
SMOKE_ONLY_YAML = "rules: []\nmax_slice_disparity: []\nmax_size_ratio: null\n"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(default_dims=EMBED_DIMS) as running:
        yield running


def fault_env(database_url: str, data_dir: Path, server: FakeOpenAIServer, *, retries: int,
              timeout: float = 10.0) -> dict[str, str]:
    return {f"KBREFRESH_{k}": v for k, v in {
        "DATABASE_URL": database_url, "DATA_DIR": str(data_dir), "EMBEDDER": "openai",
        "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "unused",
        "EMBEDDING_MODEL": "fake-embed", "EMBEDDING_DIMS": str(EMBED_DIMS),
        "EMBED_BATCH_SIZE": str(BATCH), "OPENAI_MAX_RETRIES": str(retries),
        "OPENAI_TIMEOUT_SECONDS": str(timeout), "TRACKING": "false",
        "MAINTENANCE_WORK_MEM": "64MB",
    }.items()}


OTHER_WORDS = ["orchard", "glacier", "violin", "harbour", "meadow", "lantern", "saffron",
               "quartz", "falcon", "tundra", "mosaic", "canyon", "pebble", "walnut"]


def add_documents(root: Path, n: int = 12, seed: int = 99) -> None:
    """Write ``n`` documents in other words than the corpus (the gate's title queries stay apart)."""
    rng = random.Random(seed)
    for i in range(n):
        words = [rng.choice(OTHER_WORDS) for _ in range(120)]
        title = f"{OTHER_WORDS[i % len(OTHER_WORDS)].title()} {rng.choice(OTHER_WORDS)} {i}"
        body = " ".join(words[:60]).capitalize() + ".\n\n" + " ".join(words[60:]).capitalize()
        path = root / "added" / f"doc-{i:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"---\ntitle: {title}\ncategory: general\nupdated: 2026-11-01\n---\n"
                        f"# {title}\n\n## Part 1\n\n{body}.\n\n## Part 2\n\n{body}.\n", "utf-8")


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


def embedded_inputs(server: FakeOpenAIServer) -> list[str]:
    """Chunk texts sent (the smoke check's and the gate's queries are short titles)."""
    return [t for r in server.requests for t in r.inputs if len(t) > 100]


def routing(settings: Settings) -> tuple[int | None, dict[int, str]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        live = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s",
                            (kb_id,)).fetchone()
        rows = conn.execute("SELECT version, status FROM kb_versions WHERE kb_id = %s",
                            (kb_id,)).fetchall()
    return live["live_version"] if live else None, {r["version"]: str(r["status"]) for r in rows}


RECOVERED = [
    ("429 storm with retry-after-ms",
     lambda s: s.fail_next(429, times=2, retry_after_ms="20"), 2),
    ("5xx burst", lambda s: s.fail_next(503, times=2), 2),
    ("timeout", lambda s: s.hang_next(), 1),
    ("connection reset", lambda s: s.reset_next(times=2), 2),
    ("connection dropped", lambda s: s.drop_next(times=2), 2),
]


@pytest.mark.parametrize(("fault", "inject", "extra"), RECOVERED, ids=[r[0] for r in RECOVERED])
def test_a_fault_within_the_retries_costs_only_the_retried_requests(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path, fault: str,
    inject: Callable[[FakeOpenAIServer], None], extra: int,
) -> None:
    settings = built(retries=2, timeout=1.0)
    server.pass_next(PASSED)
    inject(server)
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    assert (report.version, report.texts_embedded) == (2, 24)
    retried = [r for r in server.requests if r.retry_count > 0]
    assert len(retried) == extra
    assert len(embedded_inputs(server)) == 24 + extra * BATCH
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


FAILED = [
    ("429 storm", lambda s: s.fail_next(429, times=2, retry_after_ms="20"),
     "failed with HTTP 429 (retries allowed: 1)", 2),
    ("429 asking for 10 minutes", lambda s: s.fail_next(429, retry_after="600"),
     "the server asked to wait 600s (Retry-After), longer than the 120s", 1),
    ("5xx burst", lambda s: s.fail_next(502, times=2),
     "failed with HTTP 502 (retries allowed: 1)", 2),
    ("timeouts", lambda s: s.hang_next(times=2), "timed out after 0.5s (retries allowed: 1)", 2),
    ("connection resets", lambda s: s.reset_next(times=2), "could not connect to 127.0.0.1", 2),
    ("wrong dimensions", lambda s: s.wrong_dims_next(32),
     "expected 64 dimensions from model 'fake-embed', got 32 (input 0)", 1),
    ("NaN in a vector", lambda s: s.nan_next(index=2),
     "returned a non-finite value (NaN or inf) for input 2", 1),
    ("fewer vectors than inputs", lambda s: s.short_next(),
     "expected 4 embeddings indexed 0..3 from model 'fake-embed', got 3", 1),
]


@pytest.mark.parametrize(("fault", "inject", "message", "sent"), FAILED,
                         ids=[f[0] for f in FAILED])
def test_a_fault_beyond_the_retries_fails_cleanly_and_the_next_run_resumes(
    built: Callable[..., Settings], server: FakeOpenAIServer, tmp_path: Path, database_url: str,
    fault: str, inject: Callable[[FakeOpenAIServer], None], message: str, sent: int,
) -> None:
    settings = built(retries=1, timeout=0.5)
    server.pass_next(PASSED)
    inject(server)
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
    finished = embedded_inputs(server)[: PASSED * BATCH]
    live, statuses = routing(settings)
    assert live == 1 and statuses == {1: "live", 2: "failed"}

    server.requests.clear()
    report = refresh(settings, "kb", source_of(tmp_path), policy=SMOKE_ONLY)
    resent = set(embedded_inputs(server))
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


def chunk_requests(server: FakeOpenAIServer) -> list[tuple[str, ...]]:
    return [r.inputs for r in server.requests if r.inputs and len(r.inputs[0]) > 100]


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
