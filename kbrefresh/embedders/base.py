"""The embedder protocol every provider implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Embedder(Protocol):
    """Turn texts into unit-length float32 vectors of a fixed dimension.

    ``embed`` returns an array of shape ``(len(texts), dims)`` and raises
    ``EmbeddingError`` rather than return anything non-finite or of other dims.
    ``texts_embedded`` / ``calls`` count what was actually sent (tests use them).
    """

    provider: str
    model: str
    dims: int
    texts_embedded: int
    calls: int

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...
