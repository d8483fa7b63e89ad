"""A real OpenAI-compatible embeddings server on 127.0.0.1 for tests.

``FakeOpenAIServer`` speaks just enough of the API for ``openai.OpenAI`` to talk
to it over real HTTP: ``POST /v1/embeddings`` with ``encoding_format`` "base64"
(the client's default) or "float", OpenAI-shaped success and error bodies, and
a script of misbehaviours consumed one request at a time::

    with FakeOpenAIServer() as server:
        server.fail_next(status=429, retry_after_ms="1")
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        ...
        assert len(server.requests) == 2

The Batch API is there too: ``POST /v1/files`` (multipart upload), ``GET
/v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}`` and ``POST
/v1/batches/{id}/cancel``. A batch moves validating → in_progress → ``batch_outcome``
("completed", "failed", "expired") over ``batch_polls`` retrievals; a completed one
has an output file of embeddings responses, one line per input line.

Vectors come from ``OfflineEmbedder`` at the requested ``dimensions`` (or
``default_dims``), so they are deterministic and similar texts stay similar.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import itertools
import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import numpy as np

from kbrefresh.embedders.offline import OfflineEmbedder

__all__ = ["FakeOpenAIServer", "RecordedRequest"]

_HANG_LIMIT_SECONDS = 30.0
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, before any scripted behaviour applied."""

    method: str
    path: str
    model: str | None
    inputs: tuple[str, ...]
    dimensions: int | None
    encoding_format: str | None
    authorization: str | None
    retry_count: int
    received_at: float = 0.0  # time.monotonic() on arrival

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)

    @property
    def total_chars(self) -> int:
        return sum(len(text) for text in self.inputs)


@dataclass(frozen=True)
class _Step:
    # "pass" | "error" | "wrong_dims" | "nan" | "hang" | "drop" | "reset" | "short" | "shuffle"
    kind: str
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    dims: int = 0
    index: int = 0


class FakeOpenAIServer:
    """Serve OpenAI-style embeddings on an ephemeral 127.0.0.1 port.

    Args:
        default_dims: vector size when a request has no ``dimensions``.
        api_key: if set, requests without ``Authorization: Bearer <api_key>`` get
            OpenAI's 401 (with the key masked, as OpenAI does).
        always_float: answer plain float lists even when base64 was asked for,
            as some OpenAI-compatible servers do.
        latency_seconds: how long each embeddings request takes to answer (a
            provider's fixed per-request latency, for benchmarks).
    """

    def __init__(
        self, default_dims: int = 1536, api_key: str | None = None, always_float: bool = False,
        latency_seconds: float = 0.0,
    ) -> None:
        self.default_dims = default_dims
        self.api_key = api_key
        self.always_float = always_float
        self.latency_seconds = latency_seconds
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_outcome = "completed"
        self.batch_polls = 2
        self.batch_api = True  # False: /v1/batches answers 404, as servers without it do
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self._script: deque[_Step] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._embedders: dict[int, OfflineEmbedder] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            # a short poll keeps shutdown() quick
            target=self._httpd.serve_forever,
            args=(0.01,),
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server is not running; call start() or use it as a context")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def most_in_window(self, seconds: float, path: str = "/v1/embeddings") -> int:
        """Return the most requests to ``path`` that arrived within any ``seconds`` window."""
        times = sorted(r.received_at for r in self.requests if r.path.rstrip("/") == path)
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] > seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    # -- script --------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with an OpenAI-shaped error."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if retry_after_ms is not None:
            headers["retry-after-ms"] = retry_after_ms
        text = message or f"scripted failure with status {status}"
        self._push(times, _Step("error", status=status, message=text, headers=headers))

    def pass_next(self, times: int = 1) -> None:
        """Answer the next ``times`` requests normally (a fault scripted after them hits mid-build)."""
        self._push(times, _Step("pass"))

    def wrong_dims_next(self, dims: int, times: int = 1) -> None:
        """Return vectors of ``dims`` entries whatever was asked."""
        self._push(times, _Step("wrong_dims", dims=dims))

    def nan_next(self, index: int = 0, times: int = 1) -> None:
        """Put a NaN into the vector of input ``index``."""
        self._push(times, _Step("nan", index=index))

    def hang_next(self, times: int = 1) -> None:
        """Send nothing until the client gives up or the server stops."""
        self._push(times, _Step("hang"))

    def drop_next(self, times: int = 1) -> None:
        """Close the connection without answering."""
        self._push(times, _Step("drop"))

    def reset_next(self, times: int = 1) -> None:
        """Reset the connection (TCP RST) after reading the request, without answering."""
        self._push(times, _Step("reset"))

    def short_next(self, times: int = 1) -> None:
        """Answer with one embedding fewer than the inputs."""
        self._push(times, _Step("short"))

    def shuffle_next(self, times: int = 1) -> None:
        """Answer with the embeddings in reverse order (``index`` stays right)."""
        self._push(times, _Step("shuffle"))

    def _push(self, times: int, step: _Step) -> None:
        with self._lock:
            self._script.extend([step] * times)

    # -- request handling (server threads) -----------------------------------

    def _record(self, request: RecordedRequest) -> _Step | None:
        with self._lock:
            self.requests.append(request)
            return self._script.popleft() if self._script else None

    def _vectors(self, inputs: tuple[str, ...], dims: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        size = max(dims, 8)
        with self._lock:
            embedder = self._embedders.setdefault(size, OfflineEmbedder(size))
            vectors = embedder.embed(list(inputs))
        return np.ascontiguousarray(vectors[:, :dims])

    def _public(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if k != "polls"}

    def _poll_batch(self, batch_id: str) -> dict[str, Any]:
        """Move a batch one step towards ``batch_outcome``; write its output when completed."""
        batch = self.batches[batch_id]
        if batch["status"] in {"validating", "in_progress"}:
            batch["polls"] += 1
            batch["status"] = "in_progress"
            if batch["polls"] >= self.batch_polls:
                batch["status"] = self.batch_outcome
                if self.batch_outcome == "completed":
                    batch["output_file_id"] = self._batch_output(batch["input_file_id"])
        return self._public(batch_id)

    def _batch_output(self, input_file_id: str) -> str:
        lines = []
        for raw in self.files[input_file_id].splitlines():
            line = json.loads(raw)
            body = line["body"]
            inputs = tuple(body["input"])
            vectors = self._vectors(inputs, body.get("dimensions") or self.default_dims)
            as_base64 = body.get("encoding_format") == "base64"
            data = [_embedding_item(i, vectors[i], as_base64) for i in range(len(inputs))]
            lines.append(json.dumps({
                "id": f"req-{line['custom_id']}", "custom_id": line["custom_id"], "error": None,
                "response": {"status_code": 200, "request_id": line["custom_id"], "body": {
                    "object": "list", "data": data, "model": body["model"]}}}))
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = ("\n".join(lines) + "\n").encode()
        return file_id

    def _wait_for_stop(self) -> None:
        self._stopping.wait(_HANG_LIMIT_SECONDS)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: test output is for test results."""

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass  # the socket was reset on purpose

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        self._record_call("GET")
        if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            content = self.fake.files.get(parts[2])
            if content is not None:
                self._send_bytes(content)
                return
        if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in self.fake.batches:
            self._send_json(200, self.fake._poll_batch(parts[2]))
            return
        self._send_error(404, f"Invalid URL (GET {self.path})", "invalid_request_error", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.startswith(("/v1/files", "/v1/batches")):
            self._batch_api(raw)
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_error(400, "We could not parse the JSON body of your request.")
            return
        if self.path.rstrip("/") != "/v1/embeddings" or not isinstance(body, dict):
            self._send_error(404, f"Invalid URL (POST {self.path})", "invalid_request_error", None)
            return
        self._embeddings(body)

    def _record_call(self, method: str) -> None:
        self.fake._record(RecordedRequest(
            method=method, path=self.path, model=None, inputs=(), dimensions=None,
            encoding_format=None, authorization=self.headers.get("Authorization"), retry_count=0,
            received_at=time.monotonic()))

    def _batch_api(self, raw: bytes) -> None:
        self._record_call("POST")
        fake, parts = self.fake, self.path.strip("/").split("/")
        if parts == ["v1", "files"]:
            message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw)
            fields = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                      for p in message.iter_parts()}
            file_id = f"file-{next(fake._ids)}"
            fake.files[file_id] = fields["file"]
            self._send_json(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]),
                                  "created_at": 0, "filename": "input.jsonl",
                                  "purpose": fields["purpose"].decode(), "status": "processed"})
        elif not fake.batch_api:
            self._send_error(404, f"Invalid URL (POST {self.path})", "invalid_request_error", None)
        elif parts == ["v1", "batches"]:
            body = json.loads(raw)
            batch_id = f"batch_{next(fake._ids)}"
            fake.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"], "completion_window": "24h",
                "created_at": 0, "status": "validating", "output_file_id": None, "polls": 0}
            self._send_json(200, fake._public(batch_id))
        elif len(parts) == 4 and parts[3] == "cancel" and parts[2] in fake.batches:
            fake.batches[parts[2]]["status"] = "cancelled"
            self._send_json(200, fake._public(parts[2]))
        else:
            self._send_error(404, f"Invalid URL (POST {self.path})", "invalid_request_error", None)

    def _send_bytes(self, content: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _embeddings(self, body: dict[str, Any]) -> None:
        raw_input = body.get("input")
        inputs = (raw_input,) if isinstance(raw_input, str) else tuple(raw_input or ())
        request = RecordedRequest(
            method="POST",
            path=self.path,
            model=body.get("model"),
            inputs=tuple(str(text) for text in inputs),
            dimensions=body.get("dimensions"),
            encoding_format=body.get("encoding_format"),
            authorization=self.headers.get("Authorization"),
            retry_count=int(self.headers.get("x-stainless-retry-count") or 0),
            received_at=time.monotonic(),
        )
        step = self.fake._record(request)
        if self.fake.latency_seconds:
            time.sleep(self.fake.latency_seconds)  # the simulated provider's work
        if self._refused(request, inputs, step):
            return
        dims = request.dimensions or self.fake.default_dims
        if step is not None and step.kind == "wrong_dims":
            dims = step.dims
        vectors = self.fake._vectors(request.inputs, dims).astype(np.float32)
        if step is not None and step.kind == "nan":
            vectors[step.index, 0] = np.nan
        order = list(range(len(inputs)))
        if step is not None and step.kind == "short":
            order = order[:-1]
        if step is not None and step.kind == "shuffle":
            order.reverse()
        as_base64 = request.encoding_format == "base64" and not self.fake.always_float
        data = [_embedding_item(i, vectors[i], as_base64) for i in order]
        tokens = sum(max(1, len(text) // 4) for text in request.inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": request.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _refused(
        self, request: RecordedRequest, inputs: tuple[Any, ...], step: _Step | None
    ) -> bool:
        """Send the error or non-answer this request gets, if any."""
        expected = self.fake.api_key
        if expected is not None and request.authorization != f"Bearer {expected}":
            given = (request.authorization or "").removeprefix("Bearer ")
            self._send_error(
                401,
                f"Incorrect API key provided: {_mask(given)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            )
            return True
        if step is not None and step.kind == "error":
            self._send_error(step.status, step.message, headers=step.headers)
            return True
        if step is not None and step.kind == "hang":
            self.fake._wait_for_stop()
            self.close_connection = True
            return True
        if step is not None and step.kind == "drop":
            self.close_connection = True
            return True
        if step is not None and step.kind == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, as a crashed proxy does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return True
        if not inputs or not all(isinstance(text, str) and text for text in inputs):
            self._send_error(400, "'$.input' is invalid. Please check the API reference.")
            return True
        return False

    def _send_error(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_kind, default_code = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        error = {
            "message": message,
            "type": kind or default_kind,
            "param": None,
            "code": code if code is not None else default_code,
        }
        self._send_json(status, {"error": error}, headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        encoded = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(encoded)
        except (BrokenPipeError, ConnectionResetError):
            # the client gave up (e.g. timed out) before the answer was written
            self.close_connection = True


def _embedding_item(index: int, vector: np.ndarray[Any, Any], as_base64: bool) -> dict[str, Any]:
    if as_base64:
        encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    else:
        encoded = [float(value) for value in vector]
    return {"object": "embedding", "index": index, "embedding": encoded}


def _mask(key: str) -> str:
    """Mask a key the way OpenAI's 401 message does: a few characters each end."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"
