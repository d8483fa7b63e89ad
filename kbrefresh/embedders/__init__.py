"""Embedders: the protocol, the offline lexical baseline and the OpenAI client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbrefresh.embedders.base import Embedder
from kbrefresh.embedders.offline import OfflineEmbedder
from kbrefresh.settings import Settings

__all__ = ["Embedder", "OfflineEmbedder", "OpenAIEmbedder", "embedder_for_spec", "make_embedder"]


def make_embedder(settings: Settings) -> Embedder:
    """Build the embedder ``settings.embedder`` names ("offline" or "openai").

    Raises:
        ConfigError: the OpenAI settings are incomplete or inconsistent.
    """
    if settings.embedder == "offline":
        return OfflineEmbedder(dims=settings.embedding_dims or 1536)
    from kbrefresh.embedders.openai import OpenAIEmbedder

    return OpenAIEmbedder(
        model=settings.embedding_model,
        dims=settings.embedding_dims,
        base_url=settings.openai_base_url,
        api_key=settings.resolved_openai_key(),
        timeout=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
        batch_size=settings.embed_batch_size,
        batch_max_chars=settings.embed_batch_max_chars,
    )


def embedder_for_spec(settings: Settings, spec: Mapping[str, Any]) -> Embedder:
    """Return an embedder that reproduces the vectors of fingerprint ``spec``."""
    if spec["provider"] == "offline":
        return OfflineEmbedder(dims=int(spec["dims"]))
    configured = make_embedder(settings)
    if (configured.provider, configured.model, configured.dims) != (
        spec["provider"], spec["model"], spec["dims"]
    ):
        configured = make_embedder(settings.model_copy(
            update={"embedder": spec["provider"], "embedding_model": spec["model"],
                    "embedding_dims": spec["dims"]}))
    return configured


def __getattr__(name: str) -> object:
    # Importing openai costs ~0.5 s: only when the OpenAI embedder is asked for.
    if name == "OpenAIEmbedder":
        from kbrefresh.embedders import openai as _openai

        return getattr(_openai, name)
    raise AttributeError(f"module 'kbrefresh.embedders' has no attribute {name!r}")
