"""Rebrand benchmark: old and new names before / after, what was re-embedded, trigger → swap.

Two corpora:

- ``helpcenter``: the bundled Nimbus Desk help center, its ``rename_map.json`` and its
  ``rebrand.jsonl`` (new-name queries); old-name queries are the same queries
  rewritten back through the inverse map.
- ``pydoc``: the Python manual of ``benchmarks/corpus_pydoc.py`` (v1), rebranded with
  ``PYDOC_RENAMES``; old-name queries are the golden index queries that name an
  old name, new-name queries their rewrite.

For each corpus two knowledge bases start from the same live v1 and take the
rebranded docs as v2: ``plain`` (an ordinary refresh) and ``alias`` (chunks that
mention a new name get a "New, formerly Old" header line). Each v2 is measured with
and without query-time expansion (old names in a query rewritten to new ones through
the rename map stored with the version). Run:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_rebrand.py [--corpus helpcenter|pydoc|both]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELPCENTER = ROOT / "kbrefresh" / "samples" / "helpcenter"
PYDOC = Path("/tmp/kbrefresh-pydoc")
PYDOC_RENAMES = {
    "Python": "Serpent", "asyncio": "aioflow", "pickle": "brine", "json": "jsonkit",
    "sqlite3": "sqlkit", "unittest": "testkit", "logging": "logbook", "pathlib": "pathkit",
    "subprocess": "proctools", "tkinter": "tkui",
}
DIMS = 512
K = 5


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def queries_for(corpus: str, renames: Any) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (base source, old-name queries, new-name queries) with equal order."""
    from kbrefresh.retraining.rebrand import parse_rename_map

    if corpus == "helpcenter":
        new = load_jsonl(HELPCENTER / "golden" / "rebrand.jsonl")
        inverse = parse_rename_map({v: k for k, v in renames.as_dict().items()})
        old = [q | {"query": inverse.rewrite(q["query"])} for q in new]
        return HELPCENTER / "base", old, new
    golden = [q for q in load_jsonl(PYDOC / "golden.jsonl")]
    v1 = {p.relative_to(PYDOC / "v1").with_suffix("").as_posix() for p in (PYDOC / "v1").rglob("*.html")}
    old = [q for q in golden if renames.mentions(q["query"]) and set(q["relevant"]) <= v1]
    new = [q | {"query": renames.rewrite(q["query"])} for q in old]
    return PYDOC / "v1", old, new


def hit_rate(settings: Any, kb: str, version: int, queries: Sequence[dict[str, Any]],
             expand: Any = None) -> float:
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.metrics import hit_at_k
    from kbrefresh.serving.search import search_version

    texts = [expand(q["query"]) if expand else q["query"] for q in queries]
    vectors = OfflineEmbedder(dims=DIMS).embed(texts)
    hits = 0.0
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        table = store.fingerprint_for_version(conn, kb_id, version).table
        for q, vector in zip(queries, vectors, strict=True):
            found = [h.doc_id for h in search_version(conn, table, version, vector, k=K * 3)]
            hits += hit_at_k(found, q["relevant"], K)
    return hits / len(queries)


def _alias_request_type() -> Any:
    from dataclasses import replace

    from kbrefresh.models import ChunkerConfig
    from kbrefresh.refresh.request import RefreshRequest

    class AliasRequest(RefreshRequest):
        """A refresh request whose chunker adds "New, formerly Old" header lines."""

        aliases: tuple[tuple[str, str], ...] = ()

        def chunker(self) -> ChunkerConfig:
            return replace(super().chunker(), aliases=self.aliases)

    return AliasRequest


def run_corpus(settings: Any, corpus: str, work: Path) -> dict[str, Any]:
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.policy import AcceptancePolicy
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh
    from kbrefresh.retraining.rebrand import (
        find_impact,
        load_rename_map,
        parse_rename_map,
        write_rebranded_copy,
    )

    renames = (load_rename_map(HELPCENTER / "golden" / "rename_map.json") if corpus == "helpcenter"
               else parse_rename_map(PYDOC_RENAMES))
    _AliasRequest = _alias_request_type()
    base, old_q, new_q = queries_for(corpus, renames)
    rebranded = work / f"{corpus}-rebranded"
    changed = write_rebranded_copy(base, rebranded, renames)
    anything = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
    out: dict[str, Any] = {"corpus": corpus, "renames": renames.as_dict(),
                           "old_queries": len(old_q), "files_rewritten": len(changed)}
    for variant in ("plain", "alias"):
        kb = f"{corpus}-{variant}"
        embedder = OfflineEmbedder(dims=DIMS)
        first = run_refresh(settings, RefreshRequest(kb=kb, source=str(base), max_age_days=None),
                            embedder=embedder, policy=anything)
        started = time.perf_counter()
        with connect(settings) as conn:
            impact = find_impact(conn, kb, renames)
        impact_s = time.perf_counter() - started
        aliases = renames.pairs if variant == "alias" else ()
        request = _AliasRequest(kb=kb, source=str(rebranded), max_age_days=None, aliases=aliases)
        second = run_refresh(settings, request, embedder=embedder, policy=anything)
        out[variant] = {
            "full_build_chunks": first.chunks_embedded,
            "impact": impact.to_dict() | {"documents": len(impact.documents)},
            "impact_seconds": round(impact_s, 3),
            "chunks_embedded": second.chunks_embedded, "chunks_reused": second.chunks_reused,
            "trigger_to_swap_seconds": round(impact_s + sum(second.seconds.values()), 2),
            "new_before": hit_rate(settings, kb, 1, new_q),
            "old_before": hit_rate(settings, kb, 1, old_q),
            "new_after": hit_rate(settings, kb, 2, new_q),
            "old_after": hit_rate(settings, kb, 2, old_q),
            "old_after_expanded": hit_rate(settings, kb, 2, old_q, renames.expand_query),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("helpcenter", "pydoc", "both"), default="both")
    args = parser.parse_args()
    from kbrefresh.settings import Settings

    with tempfile.TemporaryDirectory(prefix="kbrefresh-rebrand-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", embedding_dims=DIMS, tracking=False,
                            maintenance_work_mem="256MB")
        corpora = ("helpcenter", "pydoc") if args.corpus == "both" else (args.corpus,)
        for corpus in corpora:
            result = run_corpus(settings, corpus, Path(tmp))
            for variant in ("plain", "alias"):
                result[variant]["impact"] = {k: v for k, v in result[variant]["impact"].items()
                                             if k in ("total", "live_total", "by_segment", "by_name")}
            print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
