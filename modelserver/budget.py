"""The REST memory budget: request bodies in flight, and what decoding them as JSON objects costs.

A body's bytes are charged by the HTTP layer as they arrive (``rest.py``). Decoding JSON into
Python objects costs far more than the text: 48-291 bytes per value were measured (a float in a
list 60, a short string 93, a one-key object 291), 12-30x the body. A large array of numbers
avoids that (``json_numbers.py`` decodes it straight into numpy), but any other large body (rows
of objects, strings, an invalid document re-parsed for its error text) would not be bounded by
the body's own charge: 240 MiB of such JSON took 11.6 GB. So a thread decoding a request runs
under :func:`charging`, and :func:`charge_decode` (called by the JSON parser for bodies of
:data:`CHARGED_BODY` bytes or more) takes an estimate of the decode's cost from the same budget
before parsing: 100 bytes per structural token (``,`` ``:`` ``[`` ``{``) plus 16 bytes per byte
of text (48 when it is not all ASCII: Python stores such a string at up to 4 bytes a character,
and the text is copied several times on its way to the model and back), an upper bound of every
shape measured (one 95 MiB string of 4-byte characters through an echo model: 41x its size; of
ASCII: 14x). A decode that can never fit is refused with 413, one that does not fit now with
429; both before any object is made.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from modelserver.core.status import Code, ServingError

CHARGED_BODY = 1 << 20
COST_PER_TOKEN = 100
COST_PER_BYTE = 16
COST_PER_BYTE_NOT_ASCII = 48


class BodyBudget:
    """Bytes of request bodies (and their decoding) in memory across one REST server."""

    __slots__ = ("limit", "used", "_lock")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()   # the event loop and the runtime pool's threads share it

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class DecodeTooLarge(ServingError):
    """A JSON body whose decoding could never fit in the budget: 413, like a body over the cap."""

    @property
    def http_status(self) -> int:
        return 413


_current = threading.local()


@contextmanager
def charging(budget: BodyBudget | None) -> Iterator[None]:
    """Charge the JSON decoding done by this thread, until the block ends, to ``budget``."""
    _current.budget, _current.held = budget, 0
    try:
        yield
    finally:
        if _current.held and budget is not None:
            budget.give(_current.held)
        _current.budget, _current.held = None, 0


def decode_cost(body: bytes) -> int:
    """An upper bound of the memory that decoding ``body`` into Python objects takes."""
    tokens = body.count(b",") + body.count(b":") + body.count(b"[") + body.count(b"{")
    per_byte = COST_PER_BYTE if body.isascii() else COST_PER_BYTE_NOT_ASCII
    return per_byte * len(body) + COST_PER_TOKEN * tokens


def charge_decode(body: bytes) -> None:
    """Before a large body is decoded into objects: take its cost from the budget, or refuse."""
    if len(body) < CHARGED_BODY:  # every request body passes here: the cheap test first
        return
    budget = getattr(_current, "budget", None)
    if budget is None:
        return
    cost = decode_cost(body)
    if cost > budget.limit:
        raise DecodeTooLarge(Code.RESOURCE_EXHAUSTED,
                             f"Decoding this JSON body ({len(body)} bytes) takes about {cost} bytes of "
                             f"memory, more than the server's REST body budget of {budget.limit} bytes; "
                             "send a large tensor as one array of numbers (decoded without that cost), "
                             "split the request, or use gRPC")
    if not budget.take(cost):
        raise ServingError(Code.RESOURCE_EXHAUSTED,
                           f"Decoding this JSON body takes about {cost} bytes of memory, more than the "
                           f"server's REST body budget of {budget.limit} bytes has free now; retry later")
    _current.held += cost
