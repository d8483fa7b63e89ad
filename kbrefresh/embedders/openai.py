"""Embeddings from OpenAI or any OpenAI-compatible server, through the ``openai`` client.

Retries are the client's: with ``max_retries`` it retries connection errors,
timeouts, 408/409/429 and 5xx with exponential backoff and honours the server's
``Retry-After`` / ``retry-after-ms``. This module batches, checks what came back
(count, order, dimensions, finiteness) and turns failures into ``EmbeddingError``
messages that never contain the API key.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import openai

from kbrefresh.errors import ConfigError, EmbeddingError

__all__ = ["CLIENT_MAX_RETRY_AFTER", "KNOWN_MODELS", "OpenAIEmbedder", "retry_after"]

logger = logging.getLogger(__name__)

#: native output dimensions and whether the model accepts ``dimensions``
KNOWN_MODELS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
MAX_BATCH_SIZE = 2048  # the API's limit on inputs per request
MAX_DIMS = 16000  # pgvector's limit for the vector type
#: The openai client (2.x/3.x) honours Retry-After / retry-after-ms up to two minutes and
#: does not retry at all when the server asks for longer.
CLIENT_MAX_RETRY_AFTER = 120.0

_MIN_SECRET_LEN = 8
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_*\-]{4,}")

_STATUS_HINTS: dict[int, str] = {
    400: "the server rejected the request; check input lengths and the dimensions setting",
    401: "check KBREFRESH_OPENAI_API_KEY or OPENAI_API_KEY",
    403: "check that the key's organisation and project may use this model",
    404: "check the model name and KBREFRESH_OPENAI_BASE_URL",
    422: "the server rejected the request; check input lengths and the dimensions setting",
    429: "rate limited even after retries; lower embed_batch_size, "
    "raise KBREFRESH_OPENAI_MAX_RETRIES or check the account's quota",
}



class OpenAIEmbedder:
    """Embed texts with an OpenAI embeddings model or an OpenAI-compatible server.

    Args:
        model: model name; known OpenAI models know their native dims.
        dims: output dims. For text-embedding-3-* models ``dimensions`` is sent only
            when it differs from the native size; ada-002 only supports 1536.
            Required for any other model (e.g. one served locally), which must
            return that many dims itself (``dimensions`` is not sent).
        base_url: an OpenAI-compatible endpoint such as ``http://localhost:8000/v1``.
        api_key: falls back to ``OPENAI_API_KEY``; a local server may take any
            placeholder such as ``"unused"``.
        timeout: seconds per HTTP request.
        max_retries: retries per request, done by the openai client.
        batch_size: most texts per request (at most 2048).
        batch_max_chars: most characters per request, summed over its texts.

    ``calls`` and ``texts_embedded`` count ``embed`` calls and texts as the
    protocol says; ``requests`` counts batches sent (client retries not included).

    Raises:
        ConfigError: unknown model without dims, unsupported dims, no API key,
            or batch limits out of range.
    """

    provider = "openai"

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        dims: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        batch_size: int = 256,
        batch_max_chars: int = 400_000,
    ) -> None:
        self.model = model
        self.dims, self._send_dimensions = _resolve_dims(model, dims)
        _check_limits(timeout, max_retries, batch_size, batch_max_chars)
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ConfigError(
                "no OpenAI API key: set KBREFRESH_OPENAI_API_KEY or OPENAI_API_KEY "
                "(a local OpenAI-compatible server may take any placeholder, e.g. 'unused')"
            )
        self._key = key
        self.timeout = timeout
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.batch_max_chars = batch_max_chars
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        self.host = _host_of(str(self._client.base_url))
        self.calls = 0
        self.texts_embedded = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, dims={self.dims}, host={self.host!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The HTTP client holds sockets and locks; a copy (a Dask worker) opens its own.
        state = self.__dict__.copy()
        del state["_client"]
        state["_base_url"] = str(self._client.base_url)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        base_url = state.pop("_base_url")
        self.__dict__.update(state)
        self._client = openai.OpenAI(api_key=self._key, base_url=base_url, timeout=self.timeout,
                                     max_retries=self.max_retries)

    @property
    def client(self) -> openai.OpenAI:
        """The ``openai`` client (the Batch API path uploads files and creates batches with it)."""
        return self._client

    def request_body(self, texts: Sequence[str]) -> dict[str, Any]:
        """Return the body of one embeddings request for ``texts`` (a Batch API line)."""
        self._check_texts(texts)
        extra: dict[str, Any] = {"dimensions": self.dims} if self._send_dimensions else {}
        return {"model": self.model, "input": list(texts), "encoding_format": "base64"} | extra

    def vectors_from_body(self, body: dict[str, Any], count: int) -> npt.NDArray[np.float32]:
        """Check and normalise the vectors of one embeddings response body (a Batch API result).

        Raises:
            EmbeddingError: missing, misordered, wrongly sized or non-finite vectors.
        """
        data = sorted(body.get("data") or [], key=lambda item: int(item["index"]))
        if [int(item["index"]) for item in data] != list(range(count)):
            raise EmbeddingError(
                f"expected {count} embeddings from model {self.model!r} in a batch result, "
                f"got {len(data)}")
        rows = [np.frombuffer(base64.b64decode(e), dtype="<f4").tolist() if isinstance(e, str)
                else e for e in (item["embedding"] for item in data)]
        return self._checked_vectors(rows, 0)

    def close(self) -> None:
        """Close the HTTP connections of the underlying client."""
        self._client.close()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return one L2-normalised float32 row per text, shape ``(len(texts), dims)``.

        Texts go out in batches of at most ``batch_size`` texts and
        ``batch_max_chars`` characters. Everything is checked before the first
        request, so a bad text costs nothing. An empty ``texts`` sends nothing,
        returns a ``(0, dims)`` array and is not counted.

        Raises:
            EmbeddingError: an empty or over-long text, a failed request, or a
                response with missing, misordered, wrongly sized or non-finite vectors.
        """
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        self._check_texts(texts)
        batches = list(_batches(texts, self.batch_size, self.batch_max_chars))
        logger.debug(
            "embedding %d texts in %d requests to model %r at %s",
            len(texts),
            len(batches),
            self.model,
            self.host,
        )
        for start, stop in batches:
            out[start:stop] = self._embed_batch(texts[start:stop], start)
        self.calls += 1
        self.texts_embedded += len(texts)
        return out

    def _check_texts(self, texts: Sequence[str]) -> None:
        for index, text in enumerate(texts):
            if not text:
                raise EmbeddingError(
                    f"text {index} is empty; the OpenAI embeddings API rejects empty input"
                )
            if len(text) > self.batch_max_chars:
                raise EmbeddingError(
                    f"text {index} has {len(text)} characters, more than batch_max_chars="
                    f"{self.batch_max_chars}; chunk it smaller or raise embed_batch_max_chars"
                )

    def _embed_batch(self, batch: Sequence[str], offset: int) -> npt.NDArray[np.float32]:
        extra: dict[str, Any] = {"dimensions": self.dims} if self._send_dimensions else {}
        self.requests += 1
        try:
            response = self._client.embeddings.create(input=list(batch), model=self.model, **extra)
        except openai.APIError as exc:
            # a server that echoes the key would leak it through the chained traceback
            raise self._request_error(exc) from (None if self._leaks_key(str(exc)) else exc)
        except ValueError as exc:  # raised by the client's base64 decoding of a bad body
            raise EmbeddingError(
                f"model {self.model!r} at {self.host} returned an unreadable response "
                f"for {len(batch)} inputs: {exc}"
            ) from exc
        data = sorted(response.data, key=lambda item: item.index)
        indexes = [item.index for item in data]
        if indexes != list(range(len(batch))):
            raise EmbeddingError(
                f"expected {len(batch)} embeddings indexed 0..{len(batch) - 1} from model "
                f"{self.model!r}, got {len(data)} with indexes {_preview(indexes)}"
            )
        return self._checked_vectors([item.embedding for item in data], offset)

    def _checked_vectors(self, rows: list[list[float]], offset: int) -> npt.NDArray[np.float32]:
        for position, row in enumerate(rows):
            if len(row) != self.dims:
                raise EmbeddingError(
                    f"expected {self.dims} dimensions from model {self.model!r}, got {len(row)} "
                    f"(input {offset + position})"
                )
        vectors = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise EmbeddingError(
                f"model {self.model!r} returned a non-finite value (NaN or inf) "
                f"for input {offset + bad}"
            )
        norms = np.linalg.norm(vectors, axis=1)
        if not (norms > 0).all():
            bad = int(np.flatnonzero(norms <= 0)[0])
            raise EmbeddingError(
                f"model {self.model!r} returned an all-zero vector for input {offset + bad}"
            )
        unit: npt.NDArray[np.float64] = vectors / norms[:, None]
        return unit.astype(np.float32)

    def _request_error(self, exc: openai.APIError) -> EmbeddingError:
        where = f"model {self.model!r} at {self.host}"
        if isinstance(exc, openai.APITimeoutError):
            message = (
                f"embedding request to {where} timed out after {self.timeout:g}s "
                f"(retries allowed: {self.max_retries}); raise KBREFRESH_OPENAI_TIMEOUT_SECONDS "
                "or lower embed_batch_size"
            )
        elif isinstance(exc, openai.APIConnectionError):
            message = (
                f"could not connect to {self.host} for model {self.model!r} "
                f"(retries allowed: {self.max_retries}); check KBREFRESH_OPENAI_BASE_URL "
                "and the network"
            )
        elif isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            hint = _STATUS_HINTS.get(
                status, "the server kept failing; try again later" if status >= 500 else ""
            )
            detail = self._redact(_server_message(exc))
            wait = retry_after(exc)
            if wait is not None and wait > CLIENT_MAX_RETRY_AFTER:
                # The client does not retry then (it would sleep longer than it allows).
                hint = (f"the server asked to wait {wait:g}s (Retry-After), longer than the "
                        f"{CLIENT_MAX_RETRY_AFTER:g}s the openai client waits, so it was not "
                        "retried; run the refresh again later (finished batches are kept)")
            message = (
                f"embedding request to {where} failed with HTTP {status} "
                f"(retries allowed: {self.max_retries})"
                + (f": {detail!r}" if detail else "")
                + (f"; {hint}" if hint else "")
            )
        else:
            message = f"embedding request to {where} failed: {self._redact(str(exc))}"
        return EmbeddingError(message)

    def _leaks_key(self, text: str) -> bool:
        # placeholder keys for local servers ("unused") are no secret and too common to redact
        return len(self._key) >= _MIN_SECRET_LEN and self._key in text

    def _redact(self, text: str) -> str:
        if self._leaks_key(text):
            text = text.replace(self._key, "***")
        return _KEY_LIKE.sub("sk-***", text)


def _resolve_dims(model: str, dims: int | None) -> tuple[int, bool]:
    """Return the output dims and whether to send ``dimensions``."""
    if dims is not None and (
        isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_DIMS
    ):
        raise ConfigError(f"dims must be an integer from 1 to {MAX_DIMS}, got {dims!r}")
    known = KNOWN_MODELS.get(model)
    if known is None:
        if dims is None:
            raise ConfigError(
                f"unknown embedding model {model!r}: set dims (KBREFRESH_EMBEDDING_DIMS) "
                f"to the size it returns; known models: {', '.join(sorted(KNOWN_MODELS))}"
            )
        return dims, False
    native, shortenable = known
    if dims is None or dims == native:
        return native, False
    if not shortenable:
        raise ConfigError(f"model {model!r} always returns {native} dimensions, got dims={dims!r}")
    if dims > native:
        raise ConfigError(f"model {model!r} returns at most {native} dimensions, got dims={dims!r}")
    return dims, True


def _check_limits(timeout: float, max_retries: int, batch_size: int, batch_max_chars: int) -> None:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if not (isinstance(batch_size, int) and 1 <= batch_size <= MAX_BATCH_SIZE):
        raise ConfigError(f"batch_size must be from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    if not (isinstance(batch_max_chars, int) and batch_max_chars >= 1):
        raise ConfigError(f"batch_max_chars must be an integer >= 1, got {batch_max_chars!r}")


def _batches(texts: Sequence[str], max_count: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` slices within both limits; each text fits alone."""
    start, chars = 0, 0
    for index, text in enumerate(texts):
        if index > start and (index - start == max_count or chars + len(text) > max_chars):
            yield start, index
            start, chars = index, 0
        chars += len(text)
    yield start, len(texts)


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str):
        return body[:300]
    return ""


def retry_after(exc: openai.APIStatusError) -> float | None:
    """Return the seconds the server asked to wait (``retry-after-ms`` or ``Retry-After``)."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = exc.response.headers.get(header)
        if value is not None:
            try:
                seconds = float(value) / divisor
            except ValueError:
                continue
            return seconds if math.isfinite(seconds) else None
    return None


def _preview(values: list[int]) -> str:
    return repr(values) if len(values) <= 10 else repr(values[:10])[:-1] + ", ...]"
