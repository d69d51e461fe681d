"""The REST port: an asyncio HTTP/1.1 server on httptools, answering through :class:`RestApi`.

No WSGI layer: each connection is an ``asyncio.Protocol`` feeding bytes to httptools' parser.
Requests on one connection are answered strictly in order by one task per connection, which is
what makes pipelining safe. Inference itself runs in the runtime pool.

The port must hold against hostile clients without Envoy in front (it is also a drop-in for
``tensorflow_model_server``), so what a client can make the server hold is bounded
(:class:`RestLimits`, README "Limits of the model server"):

* reading pauses while too many requests wait or while the connection's write buffer is over
  its high-water mark (a client that pipelines without reading holds at most that much);
* a body over the per-request cap gets 413 as soon as its Content-Length is seen (no
  ``100 Continue``), and bodies held across all connections share one budget: a request that
  would pass it gets 429 at once (waiting would hold the connection and let a few partial bodies
  starve each other; a 429 is what load balancers and clients already retry);
* gzip bodies are inflated while they arrive and stop at TF Serving's 100 MiB: past it (or when
  the stream is not valid gzip) the body is empty, exactly as in TF Serving, whose handler then
  answers its own 400;
* idle keep-alive connections and requests that stop arriving are closed after a timeout, by
  one sweep per server rather than a timer per connection (nothing is added per request).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import httptools

from modelserver import rollout
from modelserver.budget import BodyBudget
from modelserver.handlers import RestApi, Response, error_body
from modelserver.sweep import ConnectionSweep

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 ** 31 - 1
BODY_BUDGET_BYTES = 2 ** 30
MAX_PIPELINED = 32
GZIP_MAX_INFLATED = 100 * 1024 * 1024  # net_http ZLib::kMaxUncompressedBytes
WRITE_BUFFER_HIGH = 1024 * 1024         # reading pauses while this much output waits
MAX_HEAD_BYTES = 64 * 1024              # request line and headers (Envoy passes at most 60 KiB)
LINGER_SECONDS = 30.0                   # at most this long discarding a refused request's body
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            499: "Client Closed Request",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}


@dataclass(frozen=True)
class RestLimits:
    """What one client, and all of them together, can make the REST port hold (flags.py)."""

    max_body: int = MAX_BODY_BYTES      # per request, before gzip inflation
    body_budget: int = BODY_BUDGET_BYTES  # bytes of request bodies held across all connections
    idle_timeout: float = 50.0          # keep-alive connection with nothing to do, or not reading
    read_timeout: float = 50.0          # a started request: headers complete, body keeps arriving
    gzip_max_inflated: int = GZIP_MAX_INFLATED


class _Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive", "http10", "held", "counted", "dropped",
                 "inflater", "inflated", "error", "slot")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.keep_alive = True
        self.http10 = False
        self.held = 0            # bytes of the budget this request holds
        self.counted = False     # its whole Content-Length was held up front
        self.dropped = False     # its body is discarded (gzip that could not be inflated)
        self.inflater: Any = None
        self.inflated = 0
        self.error: Response | None = None  # answered with this instead of the API's answer
        self.slot: float | None = None      # its place in a canary split (modelserver.rollout)


def _enter_split(request: _Request) -> None:
    """One canary draw per request, whether it is answered inline or after a second try."""
    if request.slot is None:
        request.slot = rollout.request_slot(request.headers.get(rollout.SPLIT_HEADER))
    rollout.set_request_slot(request.slot)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, api: RestApi, server: "_ServerState") -> None:
        self.api = api
        self.server = server
        self.limits = server.limits
        self.max_body = server.max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.head_bytes = 0                      # request line and headers of the current request
        self.repeated: dict[str, list[str]] = {}  # headers seen more than once, joined at the end
        self.current: _Request | None = None
        self.body_size = 0
        self.queue: collections.deque[_Request] = collections.deque()
        self.worker: asyncio.Task | None = None
        self.paused = False          # reading paused
        self.write_paused = False    # the transport's write buffer is over its high-water mark
        self.drained: asyncio.Future | None = None
        self.rejected = False        # the last request was refused before its body: read no more
        self.closing = False
        self.seen = True             # bytes arrived (or were written) since the last sweep
        self.quiet = 0.0             # seconds without progress, counted by the sweep
        self.header_age = 0.0        # seconds spent on the current request's headers
        self.buffered = 0            # the write buffer's size at the last sweep
        self.lingering = -1.0        # seconds since a refusal was answered, while its body is discarded

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        for request in (*self.queue, self.current):
            if request is not None:
                self._release(request)
        self.queue.clear()
        self.current = None
        if self.drained is not None and not self.drained.done():
            self.drained.cancel()

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.closing or self.rejected:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            if not self.rejected:  # a refusal stops the parser by raising from its callback
                self._fail(400, f"Malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.seen = True
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self._update_reading()

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.current = _Request()
        self.url = b""
        self.head_bytes = 0
        self.body_size = 0
        self.header_age = 0.0

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.current.headers
        if key in headers:  # joined once all have arrived: joining each time is quadratic
            self.repeated.setdefault(key, [headers[key]]).append(text)
        else:
            headers[key] = text

    def _refuse_head(self) -> None:
        self._refuse(431, f"Request line and headers larger than {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        request = self.current
        if self.repeated:
            for key, values in self.repeated.items():
                request.headers[key] = ", ".join(values)
            self.repeated = {}
        request.method = self.parser.get_method().decode("ascii", "replace")
        request.path = httptools.parse_url(self.url).path.decode("latin-1") if self.url else ""
        request.http10 = self.parser.get_http_version() == "1.0"
        headers = request.headers
        length = headers.get("content-length", "")
        size = int(length) if length.isdigit() else 0
        if size > self.max_body:
            self._refuse(413, f"Request body larger than {self.max_body} bytes")
        if "gzip" in headers.get("content-encoding", "").lower():
            request.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif size:
            self._hold(request, size)
            request.counted = True
        if headers.get("expect", "").lower() == "100-continue" and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request.inflater is not None:
            body = self._inflate(request, body)
            if not body:
                return
        elif request.dropped:
            return
        elif not request.counted:  # chunked: no length to hold up front
            self.body_size += len(body)
            if self.body_size > self.max_body:
                self._refuse(413, f"Request body larger than {self.max_body} bytes")
            self._hold(request, len(body))
        request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        request.keep_alive = self.parser.should_keep_alive()
        if request.inflater is not None and not request.inflater.eof:
            self._gzip_failed(request, "the stream is not complete gzip")
        self.current = None
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            if len(self.queue) == 1 and not self.write_paused and self._answer_now(request):
                return
            self.worker = asyncio.get_running_loop().create_task(self._serve())

    # ---------------------------------------------------------------- limits

    def _hold(self, request: _Request, size: int) -> None:
        """Count ``size`` more body bytes of ``request`` in the server's budget, or refuse it."""
        if not self.server.budget.take(size):
            self._release(request)
            self._refuse(429, f"Request bodies in flight would exceed the server's budget of "
                              f"{self.limits.body_budget} bytes; retry later")
        request.held += size

    def _release(self, request: _Request) -> None:
        if request.held:
            self.server.budget.give(request.held)
            request.held = 0
        request.body.clear()

    def _refuse(self, status: int, message: str) -> None:
        """Answer the current request with ``status`` (after those before it) without reading its
        body, then close: stops the parser by raising from its callback."""
        request = self.current
        self._release(request)
        request.error = Response(status, (("Content-Type", "application/json"),), error_body(message))
        request.keep_alive = False
        request.inflater = None
        self.current = None
        self.rejected = True
        self.queue.append(request)
        self._update_reading()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        raise _Refused

    def _inflate(self, request: _Request, data: bytes) -> bytes:
        """Inflate one piece of a gzip body, never past the cap (what fits is returned)."""
        room = self.limits.gzip_max_inflated - request.inflated
        try:
            out = request.inflater.decompress(data, room + 1)
        except zlib.error as exc:
            self._gzip_failed(request, str(exc))
            return b""
        if len(out) > room or request.inflater.unused_data:
            self._gzip_failed(request, f"more than {self.limits.gzip_max_inflated} bytes inflated"
                              if len(out) > room else "data after the gzip stream")
            return b""
        request.inflated += len(out)
        if out:
            self._hold(request, len(out))
        return out

    def _gzip_failed(self, request: _Request, why: str) -> None:
        """TF Serving reads an uninflatable gzip body as empty; its handler then answers 400."""
        log.warning("gzip request body for %s %s dropped: %s", request.method, request.path, why)
        self._release(request)
        request.inflater = None
        request.dropped = True

    def _update_reading(self) -> None:
        want = self.write_paused or self.rejected or (
            len(self.queue) >= (MAX_PIPELINED // 2 if self.paused else MAX_PIPELINED))
        if want != self.paused and self.transport is not None and not self.closing:
            self.paused = want
            if want:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def sweep(self, elapsed: float) -> None:
        """Called by the server's sweep every ``elapsed`` seconds: close what has stalled."""
        if self.write_paused:  # a client reading a large answer makes progress without resume_writing
            buffered = self.transport.get_write_buffer_size()
            if buffered != self.buffered:
                self.buffered = buffered
                self.seen = True
        if self.seen:
            self.seen = False
            self.quiet = 0.0
        else:
            self.quiet += elapsed
        if self.lingering >= 0:
            self.lingering += elapsed
            if self.quiet >= self.limits.read_timeout or self.lingering >= LINGER_SECONDS:
                self.transport.close()
            return
        request = self.current
        if request is not None:
            if not request.method:
                self.header_age += elapsed
            if self.quiet >= self.limits.read_timeout or self.header_age >= self.limits.read_timeout:
                self._timed_out()
        elif self.write_paused or (not self.queue and (self.worker is None or self.worker.done())):
            if self.quiet >= self.limits.idle_timeout:
                self.closing = True
                if self.write_paused:  # a client that does not read: what waits for it is dropped
                    self.transport.abort()
                else:
                    self.transport.close()

    def _timed_out(self) -> None:
        """A request that stopped arriving: 408 when nothing is answered before it, then close."""
        if not self.queue and (self.worker is None or self.worker.done()) and not self.write_paused:
            self._fail(408, "Timed out reading the request")
        else:
            self.closing = True
            self.transport.abort()

    # ---------------------------------------------------------------- answering

    async def _serve(self) -> None:
        while self.queue and not self.closing:
            if self.write_paused:
                self.drained = asyncio.get_running_loop().create_future()
                await self.drained
                continue
            request = self.queue.popleft()
            if self.paused:
                self._update_reading()
            try:
                response = request.error or await self._answer(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence for one request
                log.exception("unexpected error answering %s %s", request.method, request.path)
                response = Response(500, (("Content-Type", "application/json"),),
                                    error_body(f"Internal error: {type(exc).__name__}"))
            finally:
                self._release(request)
            if self.closing or not self._send(response, request):
                return

    def _answer_now(self, request: _Request) -> bool:
        """Answer a lone plain request synchronously when the API can (``RestApi.handle_now``)."""
        if request.error is not None or "content-encoding" in request.headers:
            return False
        try:
            _enter_split(request)
            response = self.api.handle_now(request.method, request.path, request.headers, b"".join(request.body))
        except Exception:  # noqa: BLE001 - it never should; raising here would fail the HTTP parser
            log.exception("unexpected error answering %s %s inline", request.method, request.path)
            response = None
        if response is None:
            return False
        self.queue.popleft()
        self._release(request)
        self._send(response, request)
        return True

    def _send(self, response: Response, request: _Request) -> bool:
        """Write the answer to ``request``; False when that closed the connection."""
        self._write(response, request.keep_alive, request.http10, request.method == "HEAD")
        if not request.keep_alive:
            self.closing = True
            if request.error is not None and self.transport.can_write_eof():
                self._linger()
            else:
                self.transport.close()
        return request.keep_alive

    def _linger(self) -> None:
        """After refusing a request whose body is still coming: end our side and discard what
        arrives for a while (as nginx's lingering close), so that closing with unread bytes does
        not reset the connection and lose the answer before the client reads it."""
        self.transport.write_eof()
        self.lingering = 0.0
        self.paused = False
        self.transport.resume_reading()

    async def _answer(self, request: _Request) -> Response:
        body = b"".join(request.body)
        request.body.clear()
        _enter_split(request)
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return await self.api.handle(request.method, request.path, request.headers, body,
                                     peer=peer[0] if isinstance(peer, tuple) else "")

    def _write(self, response: Response, keep_alive: bool, http10: bool, head: bool = False) -> None:
        lines = [f"HTTP/{'1.0' if http10 else '1.1'} {response.status} {_REASONS.get(response.status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else response.body))

    def _fail(self, status: int, message: str) -> None:
        """A request the parser rejects: answer once, then close (its framing is unknown)."""
        self.closing = True
        response = Response(status, (("Content-Type", "application/json"),), error_body(message))
        if self.transport is not None and not self.transport.is_closing():
            self._write(response, keep_alive=False, http10=False)
            self.transport.close()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a connection whose request was refused."""


class _ServerState(ConnectionSweep):
    """What the connections of one REST server share: limits, the body budget, the idle sweep."""

    def __init__(self, limits: RestLimits) -> None:
        super().__init__(limits.idle_timeout, limits.read_timeout)
        self.limits = limits
        self.max_body = min(limits.max_body, limits.body_budget)  # a bigger body could never fit
        self.budget = BodyBudget(limits.body_budget)


async def start_rest_server(api: RestApi, host: str, port: int, limits: RestLimits = RestLimits()) -> Any:
    """Listen on ``host:port``; returns the ``asyncio.Server``."""
    loop = asyncio.get_running_loop()
    state = _ServerState(limits)
    api.budget = state.budget   # decoding large JSON bodies is charged to it too (budget.py)
    server = await loop.create_server(lambda: HttpProtocol(api, state), host, port, reuse_address=True,
                                      backlog=1024)
    state.start(loop)
    return server
