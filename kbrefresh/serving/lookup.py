"""Search the live version of a knowledge base with a matching embedder."""

from __future__ import annotations

from typing import Any

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.serving import routing
from kbrefresh.serving.search import Hit, search_version
from kbrefresh.settings import Settings


def check_embedder_matches(embedder: Embedder, spec: dict[str, Any], *, kb: str, version: int) -> None:
    """Refuse to query a version with vectors from another embedder."""
    mine = (embedder.provider, embedder.model, embedder.dims)
    theirs = (spec.get("provider"), spec.get("model"), spec.get("dims"))
    if mine != theirs:
        raise ConfigError(
            f"version {version} of {kb!r} was embedded with {theirs[0]}/{theirs[1]} "
            f"({theirs[2]} dims) but the configured embedder is {mine[0]}/{mine[1]} "
            f"({mine[2]} dims); set KBREFRESH_EMBEDDER / KBREFRESH_EMBEDDING_MODEL / "
            "KBREFRESH_EMBEDDING_DIMS to match"
        )


def search_live(
    settings: Settings,
    kb: str,
    text: str,
    *,
    k: int = 5,
    version: int | None = None,
    embedder: Embedder | None = None,
) -> list[Hit]:
    """Embed ``text`` and return the ``k`` best chunks of the live (or given) version."""
    if not text.strip():
        raise ConfigError("query text is empty; expected some words to search for")
    embedder = embedder or make_embedder(settings)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        target = version if version is not None else routing.live_version(conn, kb_id)
        if target is None:
            raise VersionError(f"knowledge base {kb!r} has no live version yet; run a refresh first")
        routing.require_rows(conn, kb_id, kb, target)
        fp = store.fingerprint_for_version(conn, kb_id, target)
        check_embedder_matches(embedder, fp.spec, kb=kb, version=target)
        vector = embedder.embed([text])[0]
        return search_version(conn, fp.table, target, vector, k=k)


def kb_overview(settings: Settings) -> list[store.KbOverview]:
    """Return one row per knowledge base: live version, tag, counts, last change."""
    with connect(settings) as conn:
        return store.kb_overview(conn)
