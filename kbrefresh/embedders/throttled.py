"""An embedder that waits for a rate limit before every request it lets through."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kbrefresh._text import tokens_for_chars
from kbrefresh.build.embedding import ThrottleFn
from kbrefresh.embedders.base import Embedder


class ThrottledEmbedder:
    """Wrap ``inner``: cut texts into request-sized slices, ``throttle`` each, then embed.

    Slices follow the same limits as the OpenAI client's batching (``batch_size``
    texts, ``max_chars`` characters), so one slice is one HTTP request and the
    throttle counts requests and tokens as the provider does (client retries aside).
    """

    def __init__(
        self, inner: Embedder, throttle: ThrottleFn, *, batch_size: int, max_chars: int
    ) -> None:
        self.inner, self.throttle = inner, throttle
        self.batch_size, self.max_chars = batch_size, max_chars
        self.provider, self.model, self.dims = inner.provider, inner.model, inner.dims
        self.calls = self.texts_embedded = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts_embedded += len(texts)
        parts = []
        start = chars = 0
        for index, text in enumerate([*texts, None]):
            full = index - start == self.batch_size or (
                text is not None and chars + len(text) > self.max_chars)
            if index > start and (text is None or full):
                parts.append(self._send(texts[start:index], chars))
                start, chars = index, 0
            chars += len(text) if text is not None else 0
        if not parts:
            return self.inner.embed(texts)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _send(self, texts: Sequence[str], chars: int) -> npt.NDArray[np.float32]:
        self.throttle(1, tokens_for_chars(chars))
        return self.inner.embed(texts)
