"""The gRPC port's transport: HTTP/2 for unary calls, on the model server's own event loop.

Why not grpcio's server: measured on the 2-core benchmark VM (bench/README.md, "Where gRPC's time
went"), grpc.aio spent ~400-530 us of server CPU per half_plus_two Predict, against ~60 us for
the Predict itself (protobuf parse, tensor decoding, the TensorFlow run, the response) and
~110-130 us for a whole REST request. The difference is grpcio's per-call machinery: its C core
thread, completion queues, and the Cython/asyncio layers between them and the handler. TF
Serving's two APIs only ever carry unary calls (plus the health service's Watch, which sends one
message), so this module serves exactly that, the way the REST port serves HTTP/1.1: one
``asyncio.Protocol`` per connection parsing frames, a cheap request answered synchronously in the
same loop turn (inline.py), everything else in a task.

The same port answers REST over HTTP/2 (any request that is not ``application/grpc``), through
the REST port's own API (handlers.RestApi): Envoy reaches the model server's REST API this way,
many requests multiplexed on one connection per Envoy worker, instead of one HTTP/1.1 connection
per request in flight (bench/README.md, issue 15: a REST request through Envoy cost the two of
them 390 us of CPU, a gRPC call 205 us). The REST port stays for direct clients (the
``tensorflow_model_server`` drop-in).

What it implements of HTTP/2 (RFC 9113): the connection preface, SETTINGS, HEADERS with
CONTINUATION and full HPACK decoding (hpack.py), DATA with padding, flow control both ways
(answers larger than the client's windows wait for its WINDOW_UPDATEs), PING, RST_STREAM,
GOAWAY. Not: server push, priorities (ignored), h2c upgrade from HTTP/1.1, TLS (TF Serving's
``--ssl_config_file`` is not supported either way), message compression other than gzip/deflate.

What a client can make it hold is bounded, as on the REST port (README "Limits of the model
server"): streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS, excess streams refused), header
blocks and what they decode to, the message size (checked from its 5-byte prefix, before the
body arrives), the bytes of request bodies held across all connections (a shared budget: over
it, RESOURCE_EXHAUSTED at once), a connection that does not read its answers (reading pauses
while the write buffer is over its high-water mark, then it is dropped), and idle or stalled
connections (closed by one sweep per server, not a timer per connection).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, NamedTuple, Union

from modelserver import hpack, rollout
from modelserver.budget import BodyBudget
from modelserver.rest import GZIP_MAX_INFLATED
from modelserver.sweep import ConnectionSweep

if TYPE_CHECKING:
    from modelserver.handlers import Response, RestApi

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16384              # SETTINGS_MAX_FRAME_SIZE we accept (HTTP/2's default and minimum)
STREAM_WINDOW = 1 << 20        # our SETTINGS_INITIAL_WINDOW_SIZE: most requests need no WINDOW_UPDATE
CONNECTION_WINDOW = 16 << 20
MAX_HEADER_BLOCK = 64 * 1024   # encoded, HEADERS + CONTINUATION (the REST port's head limit)
WRITE_BUFFER_HIGH = 1024 * 1024
DEFAULT_WINDOW = 65535

# Frame types and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x9, 0xB

_HEAD = struct.Struct(">BHBBI")   # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")

# gRPC status codes used by the transport itself.
OK, CANCELLED, UNKNOWN, INTERNAL, UNIMPLEMENTED, RESOURCE_EXHAUSTED = 0, 1, 2, 13, 12, 8

_GRPC_HEAD = hpack.indexed(":status", "200") + hpack.literal("content-type", "application/grpc")
_STATUS_415 = hpack.literal(":status", "415")  # not a gRPC request (gRPC over HTTP/2's answer)
_TRAILERS_OK = hpack.literal("grpc-status", "0")
# HTTP/1.1's own headers, which HTTP/2 forbids (RFC 9113 8.2.2): never copied from a REST answer.
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                         "content-length"))


class Reply(NamedTuple):
    """What a call answers: a gRPC status, and the serialized response message when OK.

    ``more`` keeps the stream open after the message (a server-streaming call that has sent all
    it will for now: the health service's Watch)."""

    code: int
    message: str = ""
    body: bytes = b""
    more: bool = False
    headers: tuple[tuple[str, str], ...] = ()   # sent with the answer's headers (trailers when an error)


# The application behind the port: ``(path, headers, message) -> Reply``, or an awaitable of one
# when the call cannot be answered in this loop turn (it runs in a thread or waits).
Handler = Callable[[str, dict[str, str], bytes], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class GrpcLimits:
    """What one client, and all of them together, can make the gRPC port hold."""

    max_receive: int = 2 ** 31 - 1       # bytes of one request message (TF Serving: INT_MAX)
    max_send: int = 2 ** 31 - 1
    max_streams: int = 1000              # concurrent streams per connection
    max_header_list: int = 64 * 1024     # decoded headers of one block
    body_budget: int = 2 ** 30           # request bytes held across all connections
    idle_timeout: float = 300.0          # a connection without streams, then GOAWAY
    read_timeout: float = 50.0           # a request (or the preface) that stops arriving


def percent_encode(message: str) -> bytes:
    """``grpc-message``: UTF-8, with bytes outside printable ASCII and ``%`` percent-encoded."""
    data = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in data):
        return data
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in data)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


@functools.lru_cache(maxsize=1024)
def _headers_block(headers: tuple[tuple[str, str], ...]) -> bytes:
    """A reply's own headers, encoded: the same few (the model and version that answered, for
    Envoy's access log) on every call, so encoded once rather than ~15 us per call (issue 15)."""
    return b"".join(hpack.literal(name, value) for name, value in headers)


def _status_block(code: int, message: str) -> bytes:
    block = hpack.literal("grpc-status", str(code))
    if message:
        block += hpack.literal("grpc-message", percent_encode(message))
    return block


class _Stream:
    __slots__ = ("id", "headers", "body", "size", "held", "ended", "answered", "task", "send_window",
                 "pending", "trailers", "received", "rest")

    def __init__(self, stream_id: int, headers: dict[str, str], window: int) -> None:
        self.id = stream_id
        self.headers = headers
        self.body: list[bytes] = []
        self.size = 0                 # bytes of gRPC framing + message received
        self.held = 0                 # of those, bytes charged to the server's budget
        self.ended = False            # the client's END_STREAM arrived
        self.answered = False         # our answer is decided (the rest of its body is discarded)
        self.task: asyncio.Task | None = None
        self.send_window = window
        self.pending: memoryview | None = None  # answer bytes waiting for flow-control window
        self.trailers: bytes | None = b""  # the trailers block to send after them (None: END_STREAM on the last DATA)
        self.received = 0             # DATA bytes since our last WINDOW_UPDATE for this stream
        self.rest = False             # a REST request (not application/grpc), answered by the REST API


class Http2Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, server: "_ServerState") -> None:
        self.handler = handler
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list=self.limits.max_header_list)
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW       # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = MAX_FRAME
        self.received = 0                       # DATA bytes since our last connection WINDOW_UPDATE
        self.block: bytearray | None = None     # a header block awaiting CONTINUATION
        self.block_stream = 0
        self.block_flags = 0
        self.blocked: deque[_Stream] = deque()  # streams whose answer waits for window
        self.out: list[bytes] | None = None     # writes collected while a read is handled
        self.closing = False
        self.going_away = False
        self.paused = False
        self.seen = True
        self.quiet = 0.0

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        self.server.connections.add(self)
        settings = b"".join(_SETTING.pack(key, value) for key, value in (
            (0x3, self.limits.max_streams), (0x4, STREAM_WINDOW), (0x6, self.limits.max_header_list)))
        self.transport.write(_frame(SETTINGS, 0, 0, settings)
                             + _frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for stream in self.streams.values():
            self._release(stream)
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.seen = True
        if not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.closing:
            return
        buffer = self.buffer
        buffer += data
        self.out = []
        try:
            if not self.preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        self._close()
                    return
                if buffer[:len(PREFACE)] != PREFACE:
                    self._close()
                    return
                del buffer[:len(PREFACE)]
                self.preface = True
            pos, end = 0, len(buffer)
            while end - pos >= 9 and not self.closing:
                high, low, kind, flags, stream_id = _HEAD.unpack_from(buffer, pos)
                length = (high << 16) | low
                if length > MAX_FRAME:
                    self._goaway(FRAME_SIZE_ERROR)
                    break
                if end - pos < 9 + length:
                    break
                payload = bytes(buffer[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame_received(kind, flags, stream_id & 0x7FFFFFFF, payload)
            del buffer[:pos]
        except _ConnectionError as err:
            self._goaway(err.code)
        finally:
            out, self.out = self.out, None
            if out and not self.closing:
                self.transport.write(b"".join(out))
            elif out and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(out))  # the GOAWAY before a close

    # ---------------------------------------------------------------- frames in

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR)
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR)
            payload = self._unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_fragment(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.block is None or stream_id != self.block_stream:
                raise _ConnectionError(PROTOCOL_ERROR)
            self._header_fragment(flags | (self.block_flags & END_STREAM), stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ConnectionError(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR)
            if not flags & ACK:
                self._emit(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self._drop(stream)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self._close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR)
        # PRIORITY and unknown frame types are ignored, as RFC 9113 says.

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise _ConnectionError(PROTOCOL_ERROR)
        return payload[1:len(payload) - payload[0]]

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise _ConnectionError(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR)
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == 0x4:
                if value > 2 ** 31 - 1:
                    raise _ConnectionError(FLOW_CONTROL_ERROR)
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:
                if not MAX_FRAME <= value < 1 << 24:
                    raise _ConnectionError(PROTOCOL_ERROR)
                self.peer_max_frame = value
        self._emit(_frame(SETTINGS, ACK, 0))
        self._unblock()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
            self._unblock()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            if stream.pending is not None:
                self._send_pending(stream)

    def _header_fragment(self, flags: int, stream_id: int, fragment: bytes) -> None:
        if self.block is None and flags & END_HEADERS:
            block = fragment  # the usual case: the whole block in one HEADERS frame
        else:
            if self.block is None:
                self.block, self.block_stream, self.block_flags = bytearray(fragment), stream_id, flags
            else:
                self.block += fragment
            if len(self.block) > MAX_HEADER_BLOCK:
                raise _ConnectionError(ENHANCE_YOUR_CALM)
            if not flags & END_HEADERS:
                return
            block, self.block = bytes(self.block), None
        try:
            # Decoded whatever becomes of the stream: the table must follow the client's encoder.
            headers = self.decoder.decode(block)
        except hpack.HpackError as exc:
            log.info("gRPC connection closed: bad header block (%s)", exc)
            raise _ConnectionError(COMPRESSION_ERROR) from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its request
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR)
            self._ended(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise _ConnectionError(PROTOCOL_ERROR)
        self.last_stream = stream_id
        if self.going_away or len(self.streams) >= self.limits.max_streams:
            self._emit(_frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, dict(headers), self.peer_window)
        self.streams[stream_id] = stream
        if self.server.rest is not None and not stream.headers.get("content-type", "").startswith("application/grpc"):
            stream.rest = True
            length = stream.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.server.rest_max_body:
                self._refuse(stream, RESOURCE_EXHAUSTED, f"Request body larger than {self.server.rest_max_body} bytes", 413)
                return
        if flags & END_STREAM:
            self._ended(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        # Every DATA byte counts against the connection window, also for streams gone.
        self.received += len(payload)
        if self.received >= CONNECTION_WINDOW // 2:
            self._emit(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR)
            return
        if stream.ended:
            raise _ConnectionError(PROTOCOL_ERROR)  # STREAM_CLOSED, as a connection error
        data = self._unpad(flags, payload)
        if not stream.answered and data:
            self._body(stream, data)
            if stream.answered:  # refused: its stream is gone
                return
        if flags & END_STREAM:
            self._ended(stream)
            return
        stream.received += len(payload)
        if stream.received >= STREAM_WINDOW // 2:
            self._emit(_frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.received)))
            stream.received = 0

    def _body(self, stream: _Stream, data: bytes) -> None:
        """Keep a piece of the request, unless the message is too large or the budget is spent."""
        before = stream.size
        stream.size += len(data)
        if stream.rest:
            if stream.size > self.server.rest_max_body:
                self._refuse(stream, RESOURCE_EXHAUSTED, f"Request body larger than {self.server.rest_max_body} bytes", 413)
                return
        elif before < 5 <= stream.size:
            head = b"".join(stream.body) + data
            length = _U32.unpack_from(head, 1)[0]
            if length > self.limits.max_receive:
                self._refuse(stream, RESOURCE_EXHAUSTED, f"Received message larger than max ({length} vs. "
                                                         f"{self.limits.max_receive})")
                return
        if not self.server.budget.take(len(data)):
            self._refuse(stream, RESOURCE_EXHAUSTED, "Request messages in flight would exceed the server's "
                                                     f"budget of {self.limits.body_budget} bytes; retry later")
            return
        stream.held += len(data)
        stream.body.append(data)

    def _release(self, stream: _Stream) -> None:
        if stream.held:
            self.server.budget.give(stream.held)
            stream.held = 0
        stream.body = []

    # ---------------------------------------------------------------- calls

    def _ended(self, stream: _Stream) -> None:
        """The client's END_STREAM: the request is complete; answer it (now, or from a task)."""
        stream.ended = True
        if stream.answered:
            self._finish(stream)
            return
        if stream.rest:
            self._rest(stream)
            return
        headers = stream.headers
        if headers.get(":method") != "POST" or not headers.get("content-type", "").startswith("application/grpc"):
            stream.answered = True
            self._release(stream)
            self._emit(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, _STATUS_415))
            self._finish(stream)
            return
        try:
            message = self._message(stream)
        except _CallError as err:
            self._answer(stream, Reply(err.code, err.message))
            return
        finally:
            self._release(stream)
        stream.answered = True
        try:
            result = self.handler(headers.get(":path", ""), headers, message)
        except Exception as exc:  # noqa: BLE001 - the handler should never raise; one call never takes the port down
            log.exception("unexpected gRPC error")
            result = Reply(INTERNAL, f"{type(exc).__name__}: {exc}")
        if isinstance(result, Reply):
            self._answer(stream, result)
        else:
            stream.task = asyncio.get_running_loop().create_task(self._await(stream, result))

    def _message(self, stream: _Stream) -> bytes:
        """The one request message of a unary call, unframed (and inflated)."""
        data = b"".join(stream.body)
        if not data:
            raise _CallError(INTERNAL, "Couldn't initialize byte buffer reader")
        if len(data) < 5:
            raise _CallError(INTERNAL, "Incomplete gRPC message")
        compressed, length = data[0], _U32.unpack_from(data, 1)[0]
        if len(data) < 5 + length:
            raise _CallError(INTERNAL, "Incomplete gRPC message")
        message = data[5:5 + length]
        if not compressed:
            return message
        encoding = stream.headers.get("grpc-encoding", "identity")
        if encoding not in ("gzip", "deflate"):
            raise _CallError(UNIMPLEMENTED, f"Compression algorithm '{encoding}' is not supported")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            out = inflater.decompress(message, self.limits.max_receive + 1)
        except zlib.error as exc:
            raise _CallError(INTERNAL, f"Failed to decompress the message: {exc}") from None
        if len(out) > self.limits.max_receive:
            raise _CallError(RESOURCE_EXHAUSTED, f"Received message after decompression larger than max "
                                                 f"({len(out)} vs. {self.limits.max_receive})")
        return out

    async def _await(self, stream: _Stream, pending: Awaitable[Reply]) -> None:
        try:
            reply = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in _ended
            log.exception("unexpected gRPC error")
            reply = Reply(INTERNAL, f"{type(exc).__name__}: {exc}")
        if not self.closing and self.streams.get(stream.id) is stream:
            self._answer(stream, reply)

    # ---------------------------------------------------------------- REST requests

    def _rest(self, stream: _Stream) -> None:
        """A whole REST request: answered by the REST API, now (inline) or from a task."""
        headers = stream.headers
        body = b"".join(stream.body)
        self._release(stream)
        stream.answered = True
        method, path = headers.get(":method", ""), headers.get(":path", "").partition("?")[0]
        fields = {name: value for name, value in headers.items() if name[0] != ":"}
        if ":authority" in headers:
            fields.setdefault("host", headers[":authority"])
        if "gzip" in fields.get("content-encoding", "").lower():
            body = _gunzip(body)
        rollout.set_request_slot(rollout.request_slot(fields.get(rollout.SPLIT_HEADER)))
        api = self.server.rest
        try:
            response = api.handle_now(method, path, fields, body)
        except Exception:  # noqa: BLE001 - as the REST port: the task below answers it
            log.exception("unexpected error answering %s %s inline", method, path)
            response = None
        if response is not None:
            self._answer_rest(stream, response, method == "HEAD")
            return
        peer = self.transport.get_extra_info("peername")
        pending = api.handle(method, path, fields, body, peer=peer[0] if isinstance(peer, tuple) else "")
        stream.task = asyncio.get_running_loop().create_task(self._await_rest(stream, pending, method))

    async def _await_rest(self, stream: _Stream, pending: Awaitable["Response"], method: str) -> None:
        from modelserver.handlers import JSON_HEADERS, Response, error_body

        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence for one request
            log.exception("unexpected error answering %s %s", method, stream.headers.get(":path", ""))
            response = Response(500, JSON_HEADERS, error_body(f"Internal error: {type(exc).__name__}"))
        if not self.closing and self.streams.get(stream.id) is stream:
            self._answer_rest(stream, response, method == "HEAD")

    def _answer_rest(self, stream: _Stream, response: "Response", head: bool = False) -> None:
        """Send a REST answer: its headers, then its body with END_STREAM on the last DATA."""
        stream.answered = True
        body = b"" if head else response.body
        block = _rest_head(response.status, response.headers) + hpack.literal("content-length", str(len(response.body)))
        if not body:
            self._emit(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
            self._finish(stream)
            return
        self._send(stream, block, (body,), None)

    def _answer(self, stream: _Stream, reply: Reply) -> None:
        """Send ``reply`` on ``stream``: headers, message and trailers, or trailers only."""
        stream.answered = True
        code, message, body = reply.code, reply.message, reply.body
        if code == OK and len(body) > self.limits.max_send:
            code, message = RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(body)} vs. {self.limits.max_send})"
        extra = _headers_block(reply.headers) if reply.headers else b""
        if code != OK:
            self._emit(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id,
                              _GRPC_HEAD + extra + _status_block(code, message)))
            self._finish(stream)
            return
        self._send(stream, _GRPC_HEAD + extra, (b"\x00", _U32.pack(len(body)), body),
                   b"" if reply.more else _TRAILERS_OK)

    def _send(self, stream: _Stream, block: bytes, parts: tuple[bytes, ...], trailers: bytes | None) -> None:
        """The answer's header ``block``, its body ``parts`` as DATA, then ``trailers`` (None:
        END_STREAM on the last DATA frame; b"": the stream stays open). The common case, a body
        within the windows and one frame, leaves in one write; the rest as the client's windows
        allow (:meth:`_send_pending`)."""
        head = _frame(HEADERS, END_HEADERS, stream.id, block)
        size = sum(map(len, parts))
        if trailers != b"" and size <= min(stream.send_window, self.send_window, self.peer_max_frame):
            stream.send_window -= size
            self.send_window -= size
            self._emit(head + _HEAD.pack(size >> 16, size & 0xFFFF, DATA, END_STREAM if trailers is None else 0,
                                         stream.id) + b"".join(parts)
                       + (_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers) if trailers else b""))
            self._finish(stream)
            return
        self._emit(head)
        stream.pending = memoryview(b"".join(parts))
        stream.trailers = trailers
        self._send_pending(stream)

    def _send_pending(self, stream: _Stream) -> None:
        pending = stream.pending
        while pending:
            size = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            if size <= 0:
                if stream not in self.blocked:
                    self.blocked.append(stream)
                stream.pending = pending
                return
            last = size == len(pending) and stream.trailers is None
            self._emit(_frame(DATA, END_STREAM if last else 0, stream.id, bytes(pending[:size])))
            stream.send_window -= size
            self.send_window -= size
            pending = pending[size:]
        stream.pending = None
        if stream.trailers is None:
            self._finish(stream)
        elif stream.trailers:
            self._emit(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
            self._finish(stream)

    def _unblock(self) -> None:
        for _ in range(len(self.blocked)):
            if self.send_window <= 0:
                return
            stream = self.blocked.popleft()
            if self.streams.get(stream.id) is stream:
                self._send_pending(stream)

    def _finish(self, stream: _Stream) -> None:
        """Our END_STREAM is out: forget the stream (telling the client to stop sending, when
        it has not finished its request: the answer was decided before its body ended)."""
        if not stream.ended:
            self._emit(_frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
        self._release(stream)
        if self.streams.pop(stream.id, None) is not None and self.going_away and not self.streams:
            self._close()

    def _refuse(self, stream: _Stream, code: int, message: str, status: int = 429) -> None:
        """Refuse a request before it is whole: gRPC ``code``, or HTTP ``status`` for a REST
        request (429 for the body budget, 413 for a body too large, as the REST port)."""
        self._release(stream)
        if stream.rest:
            from modelserver.handlers import JSON_HEADERS, Response, error_body

            self._answer_rest(stream, Response(status, JSON_HEADERS, error_body(message)))
            return
        self._answer(stream, Reply(code, message))

    def _drop(self, stream: _Stream) -> None:
        """The client reset the stream: what it held is released, its call cancelled."""
        self._release(stream)
        stream.pending = None
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    # ---------------------------------------------------------------- output and closing

    def _emit(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        elif not self.closing:
            self.transport.write(data)

    def _goaway(self, code: int) -> None:
        if self.closing:
            return
        self._emit(_frame(GOAWAY, 0, 0, _U32.pack(self.last_stream) + _U32.pack(code)))
        if self.out is not None:
            self.transport.write(b"".join(self.out))
            self.out = []
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def sweep(self, elapsed: float) -> None:
        """Called by the server's sweep every ``elapsed`` seconds: close what is idle or stalled."""
        if self.seen:
            self.seen, self.quiet = False, 0.0
            return
        self.quiet += elapsed
        if self.paused or self.blocked or not self.preface or any(not s.answered for s in self.streams.values()):
            if self.quiet >= self.limits.read_timeout:  # not reading, or a request that stopped coming
                self.closing = True
                self.transport.abort()
        elif not self.streams and self.quiet >= self.limits.idle_timeout:
            self._goaway(NO_ERROR)

    def shut_down(self) -> None:
        self._goaway(NO_ERROR)


@functools.lru_cache(maxsize=256)
def _rest_head(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """A REST answer's header block but its length, encoded once per status and headers (the
    same few for every answer of a model version)."""
    code = str(status)
    block = hpack.indexed(":status", code) if (":status", code) in hpack.STATIC_TABLE else hpack.literal(":status", code)
    return block + b"".join(hpack.literal(name.lower(), value) for name, value in headers
                            if name.lower() not in _HOP_BY_HOP)


def _gunzip(body: bytes) -> bytes:
    """A gzip request body inflated, as the REST port does: empty when it is not whole, valid gzip
    or inflates past :data:`GZIP_MAX_INFLATED` (TF Serving's handler then answers its own 400)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, GZIP_MAX_INFLATED + 1)
    except zlib.error:
        return b""
    return out if inflater.eof and len(out) <= GZIP_MAX_INFLATED and not inflater.unused_data else b""


class _ConnectionError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _CallError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _ServerState(ConnectionSweep):
    """What the connections of one gRPC server share: limits, the body budget, the idle sweep."""

    def __init__(self, limits: GrpcLimits, rest: "RestApi | None" = None, rest_max_body: int = 2 ** 31 - 1) -> None:
        super().__init__(limits.idle_timeout, limits.read_timeout)
        self.limits = limits
        self.budget = BodyBudget(limits.body_budget)
        self.rest = rest                    # answers REST requests on this port (None: 415 to them)
        self.rest_max_body = rest_max_body


class GrpcServer:
    """The listening sockets (TCP and/or unix) of one gRPC port."""

    def __init__(self, state: _ServerState, servers: list[asyncio.AbstractServer]) -> None:
        self.state = state
        self.servers = servers

    async def stop(self, grace: float | None = None) -> None:
        for server in self.servers:
            server.close()
        self.state.stop()
        for connection in list(self.state.connections):
            connection.shut_down()


async def start_server(handler: Handler, host: str, port: int, socket_path: str = "",
                       limits: GrpcLimits = GrpcLimits(), rest: "RestApi | None" = None,
                       rest_max_body: int = 2 ** 31 - 1) -> GrpcServer:
    """Listen on ``host:port`` (when ``port`` > 0) and on ``socket_path`` (when given); REST
    requests are answered by ``rest`` when given."""
    loop = asyncio.get_running_loop()
    state = _ServerState(limits, rest, rest_max_body)
    servers: list[asyncio.AbstractServer] = []
    factory = lambda: Http2Connection(handler, state)  # noqa: E731
    try:
        if port > 0:
            servers.append(await loop.create_server(factory, host, port, reuse_address=True, backlog=1024))
        if socket_path:
            _remove_stale_socket(socket_path)
            servers.append(await loop.create_unix_server(factory, socket_path, backlog=1024))
    except BaseException:
        for server in servers:
            server.close()
        raise
    state.start(loop)
    return GrpcServer(state, servers)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier server (gRPC's own server unlinks it too); never a file."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
