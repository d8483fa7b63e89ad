"""A reader process for the kill harness: search the live version until SIGTERM.

``python -m tests.support.kill_reader KB OUT.json`` (database and embedder from the
``KBREFRESH_*`` environment) prints ``ready`` after its first answered search, then
searches in a loop; on SIGTERM it writes ``{"ok": n, "failed": n, "errors": [...],
"ok_since_failure": n, "versions": [...]}`` to OUT.json and exits 0. A search that raises or returns no hit
counts as failed.
"""

from __future__ import annotations

import json
import random
import signal
import sys
from pathlib import Path
from types import FrameType

from kbrefresh import Retriever
from tests.support.corpus import WORDS

_stop = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def main(kb: str, out: Path) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    rng = random.Random(out.name)
    ok = failed = ok_since_failure = 0
    errors: list[str] = []
    versions: set[int] = set()
    ready = False
    # A short routing cache so readers follow every swap the harness makes.
    with Retriever(kb, routing_ttl_seconds=0.05, log_flush_seconds=0.2) as retriever:
        while not _stop:
            query = " ".join(rng.choice(WORDS) for _ in range(3))
            try:
                result = retriever.search(query, k=3, session_id=f"s{rng.randrange(1000)}")
            except Exception as exc:  # noqa: BLE001  (every failure is counted and named)
                failed, ok_since_failure = failed + 1, 0
                if len(errors) < 20:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if not result.hits:
                failed, ok_since_failure = failed + 1, 0
                errors.append(f"no hits from v{result.version} for {query!r}")
                continue
            ok, ok_since_failure = ok + 1, ok_since_failure + 1
            versions.add(result.version)
            if not ready:
                print("ready", flush=True)
                ready = True
    out.write_text(json.dumps({"ok": ok, "failed": failed, "errors": errors,
                               "ok_since_failure": ok_since_failure,
                               "versions": sorted(versions)}), "utf-8")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
