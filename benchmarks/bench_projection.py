"""Measure HNSW index size, build time and recall at several sizes; project 1M and 10M chunks.

Run: python benchmarks/bench_projection.py [--sizes 10000 25000 50000 100000] [--queries 100]
     python benchmarks/bench_projection.py --fit points.jsonl   # refit saved points only

1536-dim vectors of the offline embedder (random-word pages, as bench_scale.py) are
loaded once with binary COPY; for each size n the first n rows are copied into a
``vector`` and a ``halfvec`` table and an HNSW index (pgvector defaults m=16,
ef_construction=64, cosine) is built serially (0 workers) and with the parallel
workers sized to the server (``store.build_workers``). Each point prints as a JSON line
(prefix ``POINT``) with the 1-minute load average before and after it, because the
machine is shared. recall@10 is against an exact scan of the same table
(``hnsw.ef_search = 40``, bench_scale's ``_top10``).

The memory one row of the graph takes while it is built (what ``maintenance_work_mem``
must hold for an in-memory build) is measured by building with a small
``maintenance_work_mem`` and reading pgvector's notice "hnsw graph no longer fits into
maintenance_work_mem after N tuples"; the build is cancelled right after it.

Fits (scipy), printed with r² or standard errors:
- index size and graph memory: linear in n (bytes per row; pages are filled the same
  way whatever the size);
- build time: b·n·ln n (each insertion searches a graph whose depth grows with log n),
  per storage and workers, by scipy.optimize.curve_fit with its standard error; also
  t = c·n^k on logs, to show the exponent;
- refresh at 1.5 % change: reading and parsing the source, linear in n through the two
  scale-run points given with ``--refresh``, plus the delta segment's HNSW build over
  the 1.5 % new rows (the build fit at 0.015·n), plus ~6 s of fixed costs; embedding
  the changed chunks is the provider's rate and is left out.
The projection assumes the build stays in memory (maintenance_work_mem ≥ the graph),
the same per-core speed, and the same parallel speed-up as measured here.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refresh import start_server, vocabulary
from bench_scale import DIMS, _top10

STORAGES = ("vector", "halfvec")
OVERFLOW = re.compile(r"hnsw graph no longer fits into maintenance_work_mem after ([\d,]+) tuples")
# "Reading and parsing the source" of a 1.5 % refresh, README storage-segments table
# (bench_scale.py, 2026-11-27), and the per-build fixed costs (gate, MLflow) from the README.
REFRESH_POINTS = "50000=29.8,200000=80.8"
FIXED_SECONDS = 6.0
CHANGED = 0.015
TARGETS = (1_000_000, 10_000_000)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def page_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words = vocabulary(rng)
    return [" ".join(rng.choice(words) for _ in range(120)) for _ in range(n)]


def load_vectors(conn: Any, texts: list[str]) -> None:
    """Embed ``texts`` offline and COPY them (binary) into bench_src(id, embedding)."""
    from kbrefresh.embedders import OfflineEmbedder

    embedder = OfflineEmbedder(dims=DIMS)
    conn.execute(f"DROP TABLE IF EXISTS bench_src; CREATE TABLE bench_src (id int PRIMARY KEY,"
                 f" embedding vector({DIMS}))")
    with conn.cursor().copy("COPY bench_src (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "vector"])
        for start in range(0, len(texts), 2000):
            for i, v in enumerate(embedder.embed(texts[start:start + 2000])):
                copy.write_row((start + i + 1, v))


def make_table(conn: Any, name: str, storage: str, n: int) -> dict[str, float]:
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} AS SELECT id, embedding::{storage}({DIMS}) AS embedding"
                 f" FROM bench_src WHERE id <= {n}")
    # As the chunk tables: vectors out of line, so the heap stays small for the planner.
    conn.execute(f"ALTER TABLE {name} ALTER COLUMN embedding SET STORAGE EXTERNAL")
    conn.execute(f"VACUUM FULL {name}")
    conn.execute(f"ANALYZE {name}")
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass) AS n", (name,)).fetchone()
    return {"table_bytes_per_row": row["n"] / n}


def build(conn: Any, table: str, storage: str, workers: int, mwm: str) -> tuple[float, bool]:
    """Build the HNSW index; return (seconds, whether the graph stayed in memory)."""
    overflowed: list[str] = []
    handler = lambda d: overflowed.append(d.message_primary or "")
    conn.add_notice_handler(handler)
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false),"
                 " set_config('max_parallel_maintenance_workers', %s, false)", (mwm, str(workers)))
    conn.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding {storage}_cosine_ops)")
    seconds = time.perf_counter() - started
    conn.remove_notice_handler(handler)
    return seconds, not any(OVERFLOW.search(m) for m in overflowed)


def graph_bytes_per_row(conn: Any, table: str, storage: str, mwm_mb: int = 16) -> float | None:
    """Build with a small maintenance_work_mem; bytes per row when the graph overflows it."""
    import psycopg

    tuples: list[int] = []

    def handler(diag: Any) -> None:
        found = OVERFLOW.search(diag.message_primary or "")
        if found and not tuples:
            tuples.append(int(found.group(1).replace(",", "")))
            threading.Thread(target=conn.cancel_safe).start()

    conn.add_notice_handler(handler)
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false),"
                 " set_config('max_parallel_maintenance_workers', '0', false)", (f"{mwm_mb}MB",))
    conn.execute(f"DROP INDEX IF EXISTS {table}_probe")
    try:
        conn.execute(f"CREATE INDEX {table}_probe ON {table} USING hnsw (embedding {storage}_cosine_ops)")
    except psycopg.errors.QueryCanceled:
        pass
    conn.remove_notice_handler(handler)
    conn.execute(f"DROP INDEX IF EXISTS {table}_probe")
    return mwm_mb * 2**20 / tuples[0] if tuples else None


def measure(url: str, sizes: list[int], queries: int, mwm: str, out: Path) -> list[dict[str, Any]]:
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg.rows import dict_row

    from kbrefresh import store
    from kbrefresh.embedders import OfflineEmbedder

    points: list[dict[str, Any]] = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        texts = page_texts(max(sizes))
        started = time.perf_counter()
        load_vectors(conn, texts)
        print(f"loaded {len(texts)} vectors in {time.perf_counter() - started:.1f}s; load {load()}",
              flush=True)
        rng = random.Random(7)
        vectors = OfflineEmbedder(dims=DIMS).embed(
            [" ".join(t.split()[:12]) for t in rng.sample(texts[:min(sizes)], queries)])
        auto = store.build_workers(conn, None)
        for storage in STORAGES:
            make_table(conn, "bench_probe", storage, min(sizes))
            per_row = graph_bytes_per_row(conn, "bench_probe", storage)
            conn.execute("DROP TABLE bench_probe")
            point = {"kind": "graph", "storage": storage, "graph_bytes_per_row": per_row,
                     "load": load()}
            print("POINT " + json.dumps(point), flush=True)
            points.append(point)
            with out.open("a") as f:
                f.write(json.dumps(point) + "\n")
        for n in sizes:
            for storage in STORAGES:
                table = f"bench_{storage}"
                sizes_row = make_table(conn, table, storage, n)
                exact = _top10(conn, table, storage, vectors, exact=True)
                for workers in sorted({0, auto}):
                    before = load()
                    seconds, in_memory = build(conn, table, storage, workers, mwm)
                    size = conn.execute("SELECT pg_relation_size(%s::regclass) AS n",
                                        (f"{table}_hnsw",)).fetchone()["n"]
                    approx = _top10(conn, table, storage, vectors, exact=False)
                    recall = sum(len(set(a) & set(e)) for a, e in zip(approx, exact, strict=True))
                    point = {"kind": "build", "n": n, "storage": storage, "workers": workers,
                             "seconds": round(seconds, 2), "index_bytes": size,
                             "recall@10": round(recall / (10 * len(exact)), 4),
                             "in_memory": in_memory, "mwm": mwm, "load_before": before,
                             "load_after": load(), **sizes_row}
                    print("POINT " + json.dumps(point), flush=True)
                    points.append(point)
                    with out.open("a") as f:
                        f.write(json.dumps(point) + "\n")
                conn.execute(f"DROP TABLE {table}")
    return points


def fit(points: list[dict[str, Any]], refresh_points: str) -> None:
    """Print the fits and the projection for 1M and 10M rows."""
    import numpy as np
    from scipy.stats import linregress

    builds = [p for p in points if p["kind"] == "build"]
    graph = {p["storage"]: p["graph_bytes_per_row"] for p in points if p["kind"] == "graph"}
    print("\nmeasured points (n, storage, workers: build s, index MB, bytes/row, recall@10, load)")
    for p in builds:
        print(f"  {p['n']:>7} {p['storage']:<7} w{p['workers']}: {p['seconds']:8.1f} s "
              f"{p['index_bytes'] / 2**20:8.1f} MB {p['index_bytes'] / p['n']:7.0f} B/row "
              f"recall {p['recall@10']:.3f} in-memory {p['in_memory']} "
              f"load {p['load_before']}->{p['load_after']}")
    print("\nfits")
    for storage in STORAGES:
        rows = [p for p in builds if p["storage"] == storage]
        if len({p["n"] for p in rows}) < 2:
            continue
        size = linregress([p["n"] for p in rows], [p["index_bytes"] for p in rows])
        table = linregress([p["n"] for p in rows], [p["table_bytes_per_row"] * p["n"] for p in rows])
        print(f"  {storage}: index bytes = {size.intercept:.0f} + {size.slope:.1f}·n "
              f"(r² {size.rvalue ** 2:.4f}); table bytes/row {table.slope:.0f}; graph in "
              f"memory {graph.get(storage) or float('nan'):.0f} B/row")
        for workers in sorted({p["workers"] for p in rows}):
            pts = [p for p in rows if p["workers"] == workers]
            if len(pts) < 2:
                continue
            b, se = nlogn_fit(pts)
            k = linregress(np.log([p["n"] for p in pts]), np.log([p["seconds"] for p in pts]))
            print(f"  {storage} w{workers}: build s = b·n·ln n, b = {b:.3e} ± {se:.1e} (1 s.e., "
                  f"{len(pts)} points); power law exponent k = {k.slope:.3f}")
            for n in TARGETS:
                seconds, spread = b * n * math.log(n), 2 * se * n * math.log(n)
                mem = (graph.get(storage) or size.slope) * n
                print(f"    PROJECTION n={n:>10,}: build {seconds / 3600:6.2f} h "
                      f"(± {spread / 3600:.2f} h), index "
                      f"{(size.intercept + size.slope * n) / 2**30:6.1f} GiB, maintenance_work_mem "
                      f"≥ {mem / 2**30:5.1f} GiB, table {table.slope * n / 2**30:6.1f} GiB")
    print_refresh(builds, refresh_points)


def nlogn_fit(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares b of seconds = b·n·ln n (scipy curve_fit); return (b, its standard error).

    One parameter through the origin: with few points measured on a shared machine, a
    free intercept swings with the load and extrapolates worse than the per-row rate.
    """
    import numpy as np
    from scipy.optimize import curve_fit

    n = np.array([p["n"] for p in points], dtype=float)
    seconds = np.array([p["seconds"] for p in points], dtype=float)
    popt, pcov = curve_fit(lambda x, b: b * x * np.log(x), n, seconds, p0=[1e-4])
    return float(popt[0]), float(np.sqrt(pcov[0][0]))


def print_refresh(builds: list[dict[str, Any]], read_points: str) -> None:
    """Project a 1.5 % refresh: source read (linear) + the delta segment's HNSW build + fixed.

    The delta index is built over the 1.5 % new rows (store.segments), so its time is the
    build fit at 0.015·n; embedding those chunks is left out (it is the provider's rate).
    """
    import math

    from scipy.stats import linregress

    pairs = [tuple(map(float, p.split("="))) for p in read_points.split(",") if p]
    if len(pairs) < 2:
        return
    read = linregress([n for n, _ in pairs], [s for _, s in pairs])
    print(f"  source read and parse (bench_scale runs {read_points}): s = {read.intercept:.1f} + "
          f"{read.slope * 1000:.3f}·n/1000")
    for storage in STORAGES:
        for workers in sorted({p["workers"] for p in builds if p["storage"] == storage}):
            pts = [p for p in builds if p["storage"] == storage and p["workers"] == workers]
            if len({p["n"] for p in pts}) < 2:
                continue
            b, _ = nlogn_fit(pts)
            for n in TARGETS:
                m = int(n * CHANGED)
                delta = b * m * math.log(m)
                total = read.intercept + read.slope * n + delta + FIXED_SECONDS
                print(f"    PROJECTION refresh {storage} w{workers} n={n:>10,}: {m:,} changed rows; "
                      f"delta index {delta / 60:.1f} min + read {(read.intercept + read.slope * n) / 60:.1f} "
                      f"min + fixed {FIXED_SECONDS:.0f} s = {total / 60:.1f} min (+ embedding {m:,} chunks)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--mwm", default="2GB", help="maintenance_work_mem for the builds")
    parser.add_argument("--fit", type=Path, default=None, help="refit POINT lines saved earlier")
    parser.add_argument("--refresh", default=REFRESH_POINTS, help="n=seconds,... of reading the source in a refresh")
    parser.add_argument("--out", type=Path, default=Path("projection_points.jsonl"))
    args = parser.parse_args()
    if args.fit:
        lines = args.fit.read_text().splitlines()
        points = [json.loads(line.removeprefix("POINT ")) for line in lines
                  if line.startswith(("POINT ", "{"))]
        fit(points, args.refresh)
        return
    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} cores; load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    url = os.environ.get("KBREFRESH_DATABASE_URL") or start_server(
        Path(tempfile.mkdtemp(prefix="kbrefresh-projection-")) / "pgdata")
    points = measure(url, sorted(args.sizes), args.queries, args.mwm, args.out)
    fit(points, args.refresh)
    print(f"end {time.strftime('%H:%M')}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
