"""Canary rollouts in the model server: which version a request naming no version gets, and the
per-version counts the rollout's guards compare.

While a model's settings hold ``rollout: {"version": N, "percent": P}`` (model-settings.json,
an appliance extension), a request that names neither a version nor a label goes to version N
with probability P %, else to the version the version policy serves: N is loaded on top of the
policy, which never picks it while the rollout names it (``ModelSettings.candidates``), so under
``latest`` a candidate that is the newest version on disk serves only its share.
A request naming ``/versions/V``, ``/labels/L``, ``model_spec.version`` or ``version_label`` is
never redirected. A client that sends the header (gRPC metadata) ``x-canary-key`` is in the
slice or out of it by that key alone -- the same answer on every node, at every request, and a
key in the slice at 5 % stays in it at 25 % -- so a user's session sees one version.

The counters are only kept for models with a rollout (nothing is added to other requests'
path); the node's agent reads them at ``GET /appliance/v1/rollout`` on the REST port and
reports them to the rollout's controller (appliance/rollout.py).

A request naming no version is also shown, once answered, to :meth:`Rollout.answered`, which
hands a sample of it to the model's shadow (:mod:`modelserver.shadow`) without delaying the
answer; the shadow's candidate never answers one (``ModelManager.lookup``).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from bisect import bisect_left
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

if TYPE_CHECKING:
    from modelserver.manager import VersionState
    from modelserver.shadow import ShadowTap

SPLIT_HEADER = "x-canary-key"
COUNTS_PATH = "/appliance/v1/rollout"

#: Latency bucket upper bounds in ms (the guard's p99 is the bucket bound it falls in).
BUCKETS_MS = tuple(round(0.1 * 1.1 ** i, 3) for i in range(140))   # 0.1 ms .. ~60 s, 10 % apart

#: The current request's place in [0, 100), drawn once per request (a request may be looked up
#: more than once -- an inline attempt, then the thread pool -- and must not be drawn again:
#: a second draw after a first that was passed over would bias the split).
_slot: ContextVar[float | None] = ContextVar("canary_slot", default=None)


def slot(key: str) -> float:
    """Where ``key`` falls in [0, 100): in the slice of P % when below P."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 * 100


def request_slot(key: str | None) -> float:
    """A request's place: its ``x-canary-key``'s, or a random one."""
    return slot(key) if key is not None else random.random() * 100


def set_request_slot(value: float | None) -> None:
    """Where the current request falls (:func:`request_slot`; None: drawn at each lookup)."""
    _slot.set(value)


def choose(rollout: tuple[int, float] | None, available: Mapping[int, Any], stable: int | None) -> int | None:
    """The version a request naming none gets under ``rollout``: the candidate for its share,
    else ``stable`` (what the version policy serves, ``ServedModel.default``); None when no
    rollout runs or nothing is served (the caller's usual choice)."""
    if rollout is None or not available:
        return None
    candidate, percent = rollout
    if stable is None or stable not in available:
        return candidate if candidate in available else None
    if candidate not in available:
        return stable
    draw = _slot.get()
    if draw is None:
        draw = random.random() * 100
    return candidate if draw < percent else stable


class Counts:
    """Requests, errors and a latency histogram per (model, version): cumulative, like a
    Prometheus counter, so a reader subtracts two snapshots for a window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, int], list[Any]] = {}

    @contextmanager
    def timed(self, model: str, version: int, counted: bool) -> Iterator[None]:
        if not counted:
            yield
            return
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.record(model, version, time.perf_counter() - start, ok)

    def record(self, model: str, version: int, seconds: float, ok: bool) -> None:
        bucket = bisect_left(BUCKETS_MS, seconds * 1000)
        with self._lock:
            row = self._rows.get((model, version))
            if row is None:
                row = self._rows[(model, version)] = [0, 0, [0] * (len(BUCKETS_MS) + 1)]
            row[0] += 1
            row[1] += 0 if ok else 1
            row[2][bucket] += 1

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{model: {version: {"requests", "errors", "buckets"}}}`` (JSON-ready)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        with self._lock:
            for (model, version), (requests, errors, buckets) in self._rows.items():
                out.setdefault(model, {})[str(version)] = {"requests": requests, "errors": errors,
                                                           "buckets": list(buckets)}
        return out


COUNTS = Counts()


def percentile_ms(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram of :data:`BUCKETS_MS` (its bucket's bound)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for bound, count in zip((*BUCKETS_MS, float("inf")), buckets):
        seen += count
        if seen >= q * total:
            return bound
    return float("inf")


def p99_ms(buckets: list[int]) -> float | None:
    return percentile_ms(buckets, 0.99)


class Rollout:
    """The request paths' hook for requests that name no version (REST ``handlers.py``, gRPC
    ``grpc_server.py``), called after the primary answered."""

    def __init__(self, shadow: ShadowTap | None = None) -> None:
        self.shadow = shadow

    def answered(self, name: str, api: str, state: VersionState, signature: str,
                 inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """``state`` answered an unversioned request of model ``name`` with ``outputs``."""
        if self.shadow is not None:
            self.shadow.offer(name, api, state, signature, inputs, outputs)
