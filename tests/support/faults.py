"""Embedding API faults for a build in progress: the corpus change, the fault tables, the rig.

Used by ``tests/integration/test_embedding_faults.py`` and ``benchmarks/reliability_faults.py``.
v1 of "kb" is built from 12 documents; ``add_documents`` adds 12 more in other words
(24 new chunks, six batches of ``BATCH``); a fault is scripted after ``PASSED`` batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kbrefresh.gate.policy import AcceptancePolicy
from tests.support.openai_server import FakeOpenAIServer

BATCH = 4
PASSED = 2  # batches of the second build that finish before the fault
NEW_TEXTS = 24
EMBED_DIMS = 64
# Smoke checks only: the gate's p95 latency rule flakes on a loaded machine, and the
# faults under test are the embedder's.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
SMOKE_ONLY_YAML = "rules: []\nmax_slice_disparity: []\nmax_size_ratio: null\n"

OTHER_WORDS = ["orchard", "glacier", "violin", "harbour", "meadow", "lantern", "saffron",
               "quartz", "falcon", "tundra", "mosaic", "canyon", "pebble", "walnut"]

Inject = Callable[[FakeOpenAIServer], None]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Inject
    requests: int  # requests the fault's batch costs (attempts of one batch)
    message: str = ""  # in the one-line error, for faults the retries cannot absorb


# Absorbed by the openai client's retries (OPENAI_MAX_RETRIES=2, timeout 1 s).
RECOVERED = [
    Fault("429 storm with retry-after-ms",
          lambda s: s.fail_next(429, times=2, retry_after_ms="20"), 2),
    Fault("5xx burst", lambda s: s.fail_next(503, times=2), 2),
    Fault("timeout", lambda s: s.hang_next(), 1),
    Fault("connection reset", lambda s: s.reset_next(times=2), 2),
    Fault("connection dropped", lambda s: s.drop_next(times=2), 2),
]

# Beyond the retries (OPENAI_MAX_RETRIES=1, timeout 0.5 s), or not retryable.
FAILED = [
    Fault("429 storm", lambda s: s.fail_next(429, times=2, retry_after_ms="20"), 2,
          "failed with HTTP 429 (retries allowed: 1)"),
    Fault("429 asking for 10 minutes", lambda s: s.fail_next(429, retry_after="600"), 1,
          "the server asked to wait 600s (Retry-After), longer than the 120s"),
    Fault("5xx burst", lambda s: s.fail_next(502, times=2), 2,
          "failed with HTTP 502 (retries allowed: 1)"),
    Fault("timeouts", lambda s: s.hang_next(times=2), 2,
          "timed out after 0.5s (retries allowed: 1)"),
    Fault("connection resets", lambda s: s.reset_next(times=2), 2,
          "could not connect to 127.0.0.1"),
    Fault("wrong dimensions", lambda s: s.wrong_dims_next(32), 1,
          "expected 64 dimensions from model 'fake-embed', got 32 (input 0)"),
    Fault("NaN in a vector", lambda s: s.nan_next(index=2), 1,
          "returned a non-finite value (NaN or inf) for input 2"),
    Fault("fewer vectors than inputs", lambda s: s.short_next(), 1,
          "expected 4 embeddings indexed 0..3 from model 'fake-embed', got 3"),
]


def fault_env(database_url: str, data_dir: Path, server: FakeOpenAIServer, *, retries: int,
              timeout: float = 10.0) -> dict[str, str]:
    """The ``KBREFRESH_*`` variables of a build embedding through ``server``."""
    return {f"KBREFRESH_{k}": v for k, v in {
        "DATABASE_URL": database_url, "DATA_DIR": str(data_dir), "EMBEDDER": "openai",
        "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "unused",
        "EMBEDDING_MODEL": "fake-embed", "EMBEDDING_DIMS": str(EMBED_DIMS),
        "EMBED_BATCH_SIZE": str(BATCH), "OPENAI_MAX_RETRIES": str(retries),
        "OPENAI_TIMEOUT_SECONDS": str(timeout), "TRACKING": "false",
        "MAINTENANCE_WORK_MEM": "64MB",
    }.items()}


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


def chunk_requests(server: FakeOpenAIServer) -> list[tuple[str, ...]]:
    """Requests carrying chunk texts (the smoke check's and the gate's queries are short titles)."""
    return [r.inputs for r in server.requests if r.inputs and len(r.inputs[0]) > 100]


def chunk_texts(server: FakeOpenAIServer) -> list[str]:
    return [text for inputs in chunk_requests(server) for text in inputs]
