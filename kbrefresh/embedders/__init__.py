"""Embedders: the protocol, the offline lexical baseline and the OpenAI client."""

from __future__ import annotations

from kbrefresh.embedders.base import Embedder
from kbrefresh.embedders.offline import OfflineEmbedder
from kbrefresh.settings import Settings

__all__ = ["Embedder", "OfflineEmbedder", "OpenAIEmbedder", "make_embedder"]


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


def __getattr__(name: str) -> object:
    # Importing openai costs ~0.5 s: only when the OpenAI embedder is asked for.
    if name == "OpenAIEmbedder":
        from kbrefresh.embedders import openai as _openai

        return getattr(_openai, name)
    raise AttributeError(f"module 'kbrefresh.embedders' has no attribute {name!r}")
