"""Canonical status codes, the error type every request path raises, and its HTTP mapping.

TF Serving reports every failure as an ``absl::Status``: a canonical code plus a message.
REST clients see the message in ``{"error": ...}`` and an HTTP code derived from the canonical
code (``http_server.cc ToHTTPStatusCode``); gRPC clients see the same code and message. Keeping
one error type with the canonical code lets both front ends share all request handling.
"""

from __future__ import annotations

import enum
import re

_SURROGATE = re.compile("[\ud800-\udfff]")


class Code(enum.IntEnum):
    """``tensorflow.error.Code`` / ``grpc.StatusCode`` numbering (they agree)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request or load failure with TF Serving's canonical code and exact message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_string(self) -> str:
        """``Status::ToString()``: the form nested statuses are quoted in (``CODE: message``)."""
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def utf8_text(message: str) -> str:
    r"""``message`` as text that encodes to UTF-8, for an error body or a gRPC status.

    Text from a request body that is not UTF-8 (``\xff``, kept as U+DCFF by the JSON decoder)
    or from a lone ``\udc00`` escape holds surrogates, which neither UTF-8 nor gRPC can carry
    (encoding one raised, and the client got a 500 or INTERNAL): each becomes U+FFFD. TF Serving
    writes the raw bytes, which is not valid JSON text either.
    """
    return message if message.isascii() else _SURROGATE.sub("\ufffd", message)
