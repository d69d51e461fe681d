"""One timer per server that closes its idle and stalled connections.

Both ports (REST's HTTP/1.1 and gRPC's HTTP/2) bound how long a connection may sit idle or stall
mid-request. A timer per connection (or per request) would add work to every request; instead
one sweep per server runs every ``tick`` seconds and asks each connection, which counts its own
quiet time, whether it has waited too long (its ``sweep(elapsed)``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class ConnectionSweep:
    """The connections of one server, swept every ``tick`` seconds (a quarter of the shortest timeout)."""

    def __init__(self, idle_timeout: float, read_timeout: float) -> None:
        self.connections: set[Any] = set()
        self.tick = max(0.05, min(1.0, idle_timeout / 4, read_timeout / 4))
        self.handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = loop.call_later(self.tick, self._sweep, loop)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        for connection in list(self.connections):
            try:
                connection.sweep(self.tick)
            except Exception:  # noqa: BLE001 - one connection never stops the sweep
                log.exception("closing a stalled connection failed")
        self.handle = loop.call_later(self.tick, self._sweep, loop)
