"""The REST port: an asyncio HTTP/1.1 server on httptools, answering through :class:`RestApi`.

No WSGI layer: each connection is an ``asyncio.Protocol`` feeding bytes to httptools' parser.
Requests on one connection are answered strictly in order by one task per connection, which is
what makes pipelining safe; reading pauses while too many requests wait. Bodies may be
Content-Length or chunked, are gunzipped when ``Content-Encoding`` says gzip, and are capped in
size (2 GiB by default, TF Serving's gRPC limit). Inference itself runs in the runtime pool.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from typing import Any

import httptools

from appliance.modelserver.handlers import RestApi, Response, error_body

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 ** 31 - 1
MAX_PIPELINED = 32
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests",
            499: "Client Closed Request",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}


class _Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive", "too_large", "http10")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.keep_alive = True
        self.too_large = False
        self.http10 = False


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, api: RestApi, max_body: int) -> None:
        self.api = api
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.current: _Request | None = None
        self.body_size = 0
        self.queue: collections.deque[_Request] = collections.deque()
        self.worker: asyncio.Task | None = None
        self.paused = False
        self.closing = False

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"Malformed HTTP request: {exc}")

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.current = _Request()
        self.url = b""
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.current.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        request = self.current
        request.method = self.parser.get_method().decode("ascii", "replace")
        request.path = httptools.parse_url(self.url).path.decode("latin-1") if self.url else ""
        request.http10 = self.parser.get_http_version() == "1.0"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            request.too_large = True
        elif request.headers.get("expect", "").lower() == "100-continue" and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request.too_large:
            return
        self.body_size += len(body)
        if self.body_size > self.max_body:
            request.too_large = True
            request.body.clear()
            return
        request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        request.keep_alive = self.parser.should_keep_alive()
        self.current = None
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            if len(self.queue) == 1 and self._answer_now(request):
                return
            self.worker = asyncio.get_running_loop().create_task(self._serve())

    # ---------------------------------------------------------------- answering

    async def _serve(self) -> None:
        while self.queue and not self.closing:
            request = self.queue.popleft()
            if self.paused and len(self.queue) < MAX_PIPELINED // 2:
                self.paused = False
                self.transport.resume_reading()
            try:
                response = await self._answer(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence for one request
                log.exception("unexpected error answering %s %s", request.method, request.path)
                response = Response(500, (("Content-Type", "application/json"),),
                                    error_body(f"Internal error: {type(exc).__name__}"))
            if self.closing or not self._send(response, request):
                return

    def _answer_now(self, request: _Request) -> bool:
        """Answer a lone plain request synchronously when the API can (``RestApi.handle_now``)."""
        if request.too_large or "content-encoding" in request.headers:
            return False
        try:
            response = self.api.handle_now(request.method, request.path, b"".join(request.body))
        except Exception:  # noqa: BLE001 - it never should; raising here would fail the HTTP parser
            log.exception("unexpected error answering %s %s inline", request.method, request.path)
            response = None
        if response is None:
            return False
        self.queue.popleft()
        self._send(response, request)
        return True

    def _send(self, response: Response, request: _Request) -> bool:
        """Write the answer to ``request``; False when that closed the connection."""
        self._write(response, request.keep_alive, request.http10)
        if not request.keep_alive:
            self.closing = True
            self.transport.close()
        return request.keep_alive

    async def _answer(self, request: _Request) -> Response:
        if request.too_large:
            request.keep_alive = False
            return Response(413, (("Content-Type", "application/json"),),
                            error_body(f"Request body larger than {self.max_body} bytes"))
        body = b"".join(request.body)
        if "gzip" in request.headers.get("content-encoding", "").lower():
            try:
                body = _gunzip(body, self.max_body)
            except ValueError as exc:
                return Response(400, (("Content-Type", "application/json"),), error_body(str(exc)))
        return await self.api.handle(request.method, request.path, request.headers, body)

    def _write(self, response: Response, keep_alive: bool, http10: bool) -> None:
        lines = [f"HTTP/{'1.0' if http10 else '1.1'} {response.status} {_REASONS.get(response.status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)

    def _fail(self, status: int, message: str) -> None:
        """A request the parser rejects: answer once, then close (its framing is unknown)."""
        self.closing = True
        response = Response(status, (("Content-Type", "application/json"),), error_body(message))
        if self.transport is not None and not self.transport.is_closing():
            self._write(response, keep_alive=False, http10=False)
            self.transport.close()


def _gunzip(body: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"Failed to decompress gzip request body: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"Request body larger than {limit} bytes after decompression")
    return out


async def start_rest_server(api: RestApi, host: str, port: int, max_body: int = MAX_BODY_BYTES) -> Any:
    """Listen on ``host:port``; returns the ``asyncio.Server``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(api, max_body), host, port, reuse_address=True,
                                    backlog=1024)
