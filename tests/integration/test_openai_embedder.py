"""OpenAIEmbedder through the real ``openai`` client against a local HTTP server."""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable, Iterator

import numpy as np
import openai
import pytest
from pydantic import SecretStr

from kbrefresh.embedders import (
    Embedder,
    OfflineEmbedder,
    OpenAIEmbedder,
    make_embedder,
)
from kbrefresh.errors import ConfigError, EmbeddingError
from kbrefresh.settings import Settings
from tests.support.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

KEY = "sk-test-kbrefresh-5f3a9c0d2e7b41a8"
TEXTS = [
    "How do I rotate the signing secret of a webhook?",
    "Download last month's invoice as a PDF.",
    "Invite agents to your workspace.",
    "Set up single sign-on with Okta.",
    "Export tickets to CSV.",
]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def embedder_for(server: FakeOpenAIServer, **kwargs: object) -> OpenAIEmbedder:
    options: dict[str, object] = {"base_url": server.base_url, "api_key": KEY, "max_retries": 0}
    options.update(kwargs)
    return OpenAIEmbedder(**options)  # type: ignore[arg-type]


def host_of(server: FakeOpenAIServer) -> str:
    return server.base_url.removeprefix("http://").removesuffix("/v1")


def expected_vectors(texts: list[str], dims: int = 1536) -> np.ndarray:
    return OfflineEmbedder(dims).embed(texts)


# -- happy paths ---------------------------------------------------------------


def test_base64_default_round_trip(server: FakeOpenAIServer) -> None:
    embedder = embedder_for(server)
    vectors = embedder.embed(TEXTS)

    assert isinstance(embedder, Embedder)
    assert vectors.shape == (5, 1536)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected_vectors(TEXTS), atol=1e-6)
    [request] = server.requests
    assert request.encoding_format == "base64"
    assert request.authorization == f"Bearer {KEY}"
    assert (request.model, request.dimensions, request.inputs) == (
        "text-embedding-3-small",
        None,
        tuple(TEXTS),
    )
    assert (embedder.calls, embedder.texts_embedded, embedder.requests) == (1, 5, 1)


def test_servers_answering_floats_work_too() -> None:
    with FakeOpenAIServer(always_float=True) as server:
        vectors = embedder_for(server).embed(TEXTS)
    np.testing.assert_allclose(vectors, expected_vectors(TEXTS), atol=1e-6)


def test_fake_server_answers_explicit_float_requests(server: FakeOpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    response = client.embeddings.create(
        input=TEXTS[:2], model="text-embedding-3-small", dimensions=64, encoding_format="float"
    )
    client.close()
    assert server.requests[0].encoding_format == "float"
    assert [item.index for item in response.data] == [0, 1]
    np.testing.assert_allclose(
        [item.embedding for item in response.data], expected_vectors(TEXTS[:2], 64), atol=1e-7
    )


@pytest.mark.parametrize(
    ("model", "dims", "sent", "size"),
    [
        ("text-embedding-3-small", None, None, 1536),
        ("text-embedding-3-small", 1536, None, 1536),
        ("text-embedding-3-small", 256, 256, 256),
        ("text-embedding-3-large", None, None, 3072),
        ("text-embedding-3-large", 1024, 1024, 1024),
        ("text-embedding-ada-002", None, None, 1536),
    ],
)
def test_dimensions_are_sent_only_to_shorten_a_3_model(
    model: str, dims: int | None, sent: int | None, size: int
) -> None:
    with FakeOpenAIServer(default_dims=size if sent is None else 1) as server:
        embedder = embedder_for(server, model=model, dims=dims)
        vectors = embedder.embed(TEXTS[:2])
    assert embedder.dims == size
    assert vectors.shape == (2, size)
    assert [(r.model, r.dimensions) for r in server.requests] == [(model, sent)]


def test_unknown_model_with_dims_talks_to_a_local_server() -> None:
    with FakeOpenAIServer(default_dims=768) as server:
        embedder = embedder_for(server, model="nomic-embed-text", dims=768, api_key="unused")
        vectors = embedder.embed(TEXTS)
    assert vectors.shape == (5, 768)
    assert server.requests[0].dimensions is None
    assert server.requests[0].authorization == "Bearer unused"


def test_key_comes_from_openai_api_key_when_not_given(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0000")
    embedder_for(server, api_key=None).embed(TEXTS[:1])
    assert server.requests[0].authorization == "Bearer sk-from-env-0000"


def test_make_embedder_builds_an_openai_embedder(server: FakeOpenAIServer) -> None:
    settings = Settings(
        embedder="openai",
        embedding_dims=256,
        openai_base_url=server.base_url,
        openai_api_key=SecretStr(KEY),
        openai_max_retries=0,
        embed_batch_size=2,
    )
    embedder = make_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.embed(TEXTS[:3]).shape == (3, 256)
    assert [(r.n_inputs, r.dimensions) for r in server.requests] == [(2, 256), (1, 256)]


def test_repr_names_model_and_host_only(server: FakeOpenAIServer) -> None:
    embedder = embedder_for(server)
    assert repr(embedder) == (
        f"OpenAIEmbedder(model='text-embedding-3-small', dims=1536, host='{host_of(server)}')"
    )


def test_empty_input_sends_nothing(server: FakeOpenAIServer) -> None:
    embedder = embedder_for(server)
    vectors = embedder.embed([])
    assert vectors.shape == (0, 1536)
    assert server.requests == []
    assert (embedder.calls, embedder.texts_embedded, embedder.requests) == (0, 0, 0)


# -- batching --------------------------------------------------------------------


def test_batches_by_count_and_keeps_order(server: FakeOpenAIServer) -> None:
    texts = [f"text number {i}" for i in range(8)]
    embedder = embedder_for(server, batch_size=3)
    vectors = embedder.embed(texts)
    assert [r.n_inputs for r in server.requests] == [3, 3, 2]
    assert [t for r in server.requests for t in r.inputs] == texts
    np.testing.assert_allclose(vectors, expected_vectors(texts), atol=1e-6)
    assert (embedder.calls, embedder.texts_embedded, embedder.requests) == (1, 8, 3)


def test_batches_by_characters_never_over_the_limit(server: FakeOpenAIServer) -> None:
    texts = [c * n for c, n in zip("abcdef", [40, 40, 40, 90, 10, 100], strict=True)]
    embedder_for(server, batch_max_chars=100).embed(texts)
    assert [r.total_chars for r in server.requests] == [80, 40, 100, 100]
    assert [r.n_inputs for r in server.requests] == [2, 1, 2, 1]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (
            ["short", "fine", "x" * 101],
            (
                "text 2 has 101 characters, more than batch_max_chars=100; "
                "chunk it smaller or raise embed_batch_max_chars"
            ),
        ),
        (["fine", ""], "text 1 is empty; the OpenAI embeddings API rejects empty input"),
    ],
)
def test_bad_texts_fail_before_any_request(
    server: FakeOpenAIServer, texts: list[str], message: str
) -> None:
    embedder = embedder_for(server, batch_max_chars=100)
    with pytest.raises(EmbeddingError) as info:
        embedder.embed(texts)
    assert str(info.value) == message
    assert server.requests == []
    assert (embedder.calls, embedder.texts_embedded) == (0, 0)


def test_misordered_answers_are_put_back_in_order(server: FakeOpenAIServer) -> None:
    server.shuffle_next()
    vectors = embedder_for(server).embed(TEXTS)
    np.testing.assert_allclose(vectors, expected_vectors(TEXTS), atol=1e-6)


# -- retries (done by the openai client) -------------------------------------------


@pytest.mark.parametrize(("retry_after", "retry_after_ms"), [("0.01", None), (None, "10")])
def test_rate_limit_with_retry_after_is_retried(
    server: FakeOpenAIServer, retry_after: str | None, retry_after_ms: str | None
) -> None:
    server.fail_next(status=429, retry_after=retry_after, retry_after_ms=retry_after_ms)
    vectors = embedder_for(server, max_retries=2).embed(TEXTS)
    np.testing.assert_allclose(vectors, expected_vectors(TEXTS), atol=1e-6)
    assert [r.retry_count for r in server.requests] == [0, 1]


def test_dropped_connection_is_retried(server: FakeOpenAIServer) -> None:
    server.drop_next()
    vectors = embedder_for(server, max_retries=1).embed(TEXTS[:2])
    assert vectors.shape == (2, 1536)
    assert len(server.requests) == 2


def test_server_errors_exhaust_retries_with_a_clear_message(server: FakeOpenAIServer) -> None:
    server.fail_next(status=500, times=10)
    embedder = embedder_for(server, max_retries=2)
    with pytest.raises(EmbeddingError) as info:
        embedder.embed(TEXTS)
    assert str(info.value) == (
        f"embedding request to model 'text-embedding-3-small' at {host_of(server)} failed with "
        "HTTP 500 (retries allowed: 2): 'scripted failure with status 500'; "
        "the server kept failing; try again later"
    )
    assert isinstance(info.value.__cause__, openai.InternalServerError)
    assert len(server.requests) == 3
    assert (embedder.calls, embedder.texts_embedded) == (0, 0)


def test_rate_limit_exhausted_says_what_to_do(server: FakeOpenAIServer) -> None:
    server.fail_next(status=429, times=5, retry_after_ms="1", message="Rate limit reached")
    with pytest.raises(EmbeddingError) as info:
        embedder_for(server, max_retries=1).embed(TEXTS)
    assert str(info.value) == (
        f"embedding request to model 'text-embedding-3-small' at {host_of(server)} failed with "
        "HTTP 429 (retries allowed: 1): 'Rate limit reached'; rate limited even after retries; "
        "lower embed_batch_size, raise KBREFRESH_OPENAI_MAX_RETRIES or check the account's quota"
    )
    assert len(server.requests) == 2


def test_timeout_is_reported(server: FakeOpenAIServer) -> None:
    server.hang_next()
    with pytest.raises(EmbeddingError) as info:
        embedder_for(server, timeout=0.2).embed(TEXTS)
    assert str(info.value) == (
        f"embedding request to model 'text-embedding-3-small' at {host_of(server)} timed out "
        "after 0.2s (retries allowed: 0); raise KBREFRESH_OPENAI_TIMEOUT_SECONDS "
        "or lower embed_batch_size"
    )
    assert isinstance(info.value.__cause__, openai.APITimeoutError)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_reported() -> None:
    port = free_port()
    embedder = OpenAIEmbedder(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(EmbeddingError) as info:
        embedder.embed(TEXTS)
    assert str(info.value) == (
        f"could not connect to 127.0.0.1:{port} for model 'text-embedding-3-small' "
        "(retries allowed: 0); check KBREFRESH_OPENAI_BASE_URL and the network"
    )


# -- response checks ---------------------------------------------------------------


def test_wrong_dimensions_are_refused(server: FakeOpenAIServer) -> None:
    server.wrong_dims_next(3)
    with pytest.raises(EmbeddingError) as info:
        embedder_for(server).embed(TEXTS)
    assert str(info.value) == (
        "expected 1536 dimensions from model 'text-embedding-3-small', got 3 (input 0)"
    )


@pytest.mark.parametrize("always_float", [False, True])
def test_nan_is_refused_naming_the_input(always_float: bool) -> None:
    with FakeOpenAIServer(always_float=always_float) as server:
        server.shuffle_next()  # first batch fine, second batch carries the NaN
        server.nan_next(index=1)
        embedder = embedder_for(server, batch_size=2)
        with pytest.raises(EmbeddingError) as info:
            embedder.embed(TEXTS)
    assert str(info.value) == (
        "model 'text-embedding-3-small' returned a non-finite value (NaN or inf) for input 3"
    )
    assert (embedder.calls, embedder.texts_embedded) == (0, 0)


def test_missing_embeddings_are_refused(server: FakeOpenAIServer) -> None:
    server.short_next()
    with pytest.raises(EmbeddingError) as info:
        embedder_for(server).embed(TEXTS[:3])
    assert str(info.value) == (
        "expected 3 embeddings indexed 0..2 from model 'text-embedding-3-small', "
        "got 2 with indexes [0, 1]"
    )


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"model": "nomic-embed-text"},
            (
                "unknown embedding model 'nomic-embed-text': set dims (KBREFRESH_EMBEDDING_DIMS) "
                "to the size it returns; known models: text-embedding-3-large, "
                "text-embedding-3-small, text-embedding-ada-002"
            ),
        ),
        (
            {"model": "text-embedding-ada-002", "dims": 256},
            "model 'text-embedding-ada-002' always returns 1536 dimensions, got dims=256",
        ),
        (
            {"dims": 2000},
            "model 'text-embedding-3-small' returns at most 1536 dimensions, got dims=2000",
        ),
        ({"dims": 0}, "dims must be an integer from 1 to 16000, got 0"),
        ({"batch_size": 0}, "batch_size must be from 1 to 2048, got 0"),
        ({"batch_size": 4096}, "batch_size must be from 1 to 2048, got 4096"),
        ({"batch_max_chars": 0}, "batch_max_chars must be an integer >= 1, got 0"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ],
)
def test_bad_configuration_fails_fast(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        OpenAIEmbedder(api_key=KEY, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_missing_key_says_which_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        OpenAIEmbedder()
    assert str(info.value) == (
        "no OpenAI API key: set KBREFRESH_OPENAI_API_KEY or OPENAI_API_KEY "
        "(a local OpenAI-compatible server may take any placeholder, e.g. 'unused')"
    )


# -- the key never leaks --------------------------------------------------------------


def provoke_auth(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.api_key = "sk-the-right-key-0000"
    return embedder_for(server)


def provoke_echo(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.fail_next(status=400, message=f"bad request from key {KEY} (Bearer {KEY})")
    return embedder_for(server)


def provoke_rate_limit(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.fail_next(status=429, times=3, retry_after_ms="1")
    return embedder_for(server, max_retries=1)


def provoke_server_error(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.fail_next(status=503)
    return embedder_for(server)


def provoke_timeout(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.hang_next()
    return embedder_for(server, timeout=0.2)


def provoke_connection(server: FakeOpenAIServer) -> OpenAIEmbedder:
    return OpenAIEmbedder(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key=KEY, max_retries=0)


def provoke_wrong_dims(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.wrong_dims_next(3)
    return embedder_for(server)


def provoke_nan(server: FakeOpenAIServer) -> OpenAIEmbedder:
    server.nan_next()
    return embedder_for(server)


@pytest.mark.parametrize(
    ("provoke", "status"),
    [
        (provoke_auth, 401),
        (provoke_echo, 400),
        (provoke_rate_limit, 429),
        (provoke_server_error, 503),
        (provoke_timeout, None),
        (provoke_connection, None),
        (provoke_wrong_dims, None),
        (provoke_nan, None),
    ],
)
def test_the_api_key_never_appears_in_errors_or_logs(
    server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    provoke: Callable[[FakeOpenAIServer], OpenAIEmbedder],
    status: int | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    embedder = provoke(server)
    with pytest.raises(EmbeddingError) as info:
        embedder.embed(TEXTS)
    if status is not None:
        assert f"HTTP {status}" in str(info.value)
    shown = [
        str(info.value),
        repr(info.value),
        "".join(traceback.format_exception(info.value)),
        repr(embedder),
        caplog.text,
    ]
    for text in shown:
        assert KEY not in text
        assert KEY[:12] not in text
    assert caplog.text  # the openai client and kbrefresh did log something


def test_auth_failure_message_masks_the_servers_echo(server: FakeOpenAIServer) -> None:
    with pytest.raises(EmbeddingError) as info:
        provoke_auth(server).embed(TEXTS)
    assert str(info.value) == (
        f"embedding request to model 'text-embedding-3-small' at {host_of(server)} failed with "
        "HTTP 401 (retries allowed: 0): 'Incorrect API key provided: sk-***. You can find your "
        "API key at https://platform.openai.com/account/api-keys.'; "
        "check KBREFRESH_OPENAI_API_KEY or OPENAI_API_KEY"
    )
