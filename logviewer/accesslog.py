"""Envoy's access log, searched in one request however big it is.

A 500 MB log holds about 1.3 M requests. Paging back 64 MiB at a time to find a rare model took
pages of "older →"; here one request answers, at the cost of a full scan when it must:

* A time range becomes a byte range first: Envoy writes a line when a request ends, so the
  lines are in time order (to within the longest request), and a binary search on the ``time``
  field finds the range's ends in ~30 reads of 4 KiB.
* The byte range is then read in 4 MiB blocks from its newest end back. Each filter is a
  regular expression on the raw bytes of a line (a model, a status, a node, a request id or any
  text); the first filter's pattern finds candidate lines in C (``re.search`` over the whole
  block), and only those lines are looked at in Python. A rare model or one request id in
  500 MB costs one pass of the regex engine over the bytes: about a second.
* Without filters, per-field counts come from ``re.findall`` over whole blocks (one call per
  block per field), so counting every request of the range also stays in C.

Memory: one block and its matches at a time, the newest ``limit`` rows and three counters.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from .logfiles import MAX_LINE, decode

BLOCK = 4 * 1024 * 1024
PROBE = 64 * 1024          # bytes read around one offset by the time bisection
LOCAL = "127.0.0.1"        # the upstream host of this node's own model server

_TIME = re.compile(rb'"time":\s*"([^"]*)"')
_STATUS = re.compile(rb'"status":\s*"?(\d+)')
_UPSTREAM = re.compile(rb'"upstream_host":\s*"([^"]*)"')
# A REST request names its model in the path; a gRPC one only in the model server's answer
# (the x-appliance-model header, logged as "model"). One pattern each: a pattern starting with
# a literal is searched at memchr speed, an alternation is tried at every byte.
_MODEL_FIELD = re.compile(rb'"model":\s*"([^"-][^"]*)"')
_MODEL_PATH = re.compile(rb'"path":\s*"/v1/models/([^/:?"]+)')
MODEL_PATH = re.compile(r"^/v1/models/([^/:?]+)(?:/versions/(\d+))?")

# Envoy's %RESPONSE_FLAGS%: what went wrong between the client, Envoy and the model servers.
RESPONSE_FLAGS = {
    "UH": "no healthy upstream: every model server is failing its health check or ejected",
    "UF": "upstream connection failure: a model server did not accept the connection",
    "UO": "upstream overflow: circuit breaker open (too many requests or connections)",
    "NR": "no route: the request matched no route (e.g. a non-gRPC request on the gRPC port)",
    "URX": "upstream retry limit exceeded: every retry failed",
    "NC": "no cluster: the route's cluster does not exist (a config problem)",
    "DT": "downstream timeout: the request took longer than the route's timeout",
    "UT": "upstream request timeout: the model server did not answer within the route timeout",
    "LH": "local health check failed",
    "UC": "upstream connection termination: the model server closed the connection",
    "DC": "downstream connection termination: the client went away before the answer",
    "DI": "delay injected by fault injection",
    "FI": "aborted by fault injection",
    "RL": "rate limited locally (HTTP 429 from Envoy's local rate limit filter)",
    "UAEX": "refused by an external authorization service",
    "RLSE": "rate limit service error",
    "IH": "invalid header value refused (strict header checking)",
    "SI": "stream idle timeout",
    "DPE": "downstream protocol error: the client sent malformed HTTP",
    "UPE": "upstream protocol error: the model server answered malformed HTTP",
    "UMSDR": "upstream max stream duration reached",
    "OM": "overload manager: Envoy shed the request under memory pressure",
    "DF": "DNS resolution failed",
    "DO": "drop overload: dropped by the cluster's drop_overload setting",
    "UDO": "upstream drop overload",
}


@dataclass
class AccessEntry:
    offset: int
    time: str
    method: str
    path: str
    status: str
    duration_ms: str
    upstream: str
    node: str
    model: str
    version: str
    flags: str
    listener: str
    client: str
    request_id: str
    key_name: str
    raw: str

    def status_class(self) -> str:
        return f"s{self.status[:1]}xx" if self.status[:1].isdigit() else "s0xx"

    def flag_list(self) -> list[str]:
        return [] if self.flags in ("-", "") else self.flags.split(",")


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value)[:MAX_LINE]


def node_of(upstream: str, local_address: str) -> str:
    """The node an upstream host is: its address, or this node's for its loopback model server."""
    host = upstream.rsplit(":", 1)[0] if upstream.count(":") == 1 else upstream
    return local_address if host == LOCAL and local_address else host


def parse_line(line: bytes, offset: int, local_address: str = "") -> AccessEntry | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    path = _text(entry.get("path"))
    match = MODEL_PATH.match(path)
    model = _text(entry.get("model"))
    version = _text(entry.get("version"))
    if model == "-" and match:
        model = match.group(1)
    if version == "-" and match and match.group(2):
        version = match.group(2)
    upstream = _text(entry.get("upstream_host"))
    return AccessEntry(
        offset=offset, time=_text(entry.get("time")), method=_text(entry.get("method")),
        path=path, status=_text(entry.get("status")), duration_ms=_text(entry.get("duration_ms")),
        upstream=upstream, node=node_of(upstream, local_address) if upstream != "-" else "-",
        model="" if model == "-" else model, version=version, flags=_text(entry.get("flags")),
        listener=_text(entry.get("listener")), client=_text(entry.get("client")),
        request_id=_text(entry.get("request_id")), key_name=_text(entry.get("key_name")),
        raw=decode(line[:MAX_LINE]))


# ----------------------------------------------------------------------------- filters


@dataclass
class AccessFilter:
    """What the page asked for; every field optional. Times are ISO 8601 UTC prefixes."""

    model: str = ""
    status: str = ""   # "404", "4xx", "5xx", "error" (>= 400 or none) or ""
    node: str = ""     # a node's address (its loopback upstream counts as itself)
    text: str = ""     # any text of the line, case-insensitive (a request id, a client, ...)
    since: str = ""    # lines at or after this time
    until: str = ""    # lines before this time

    def patterns(self, local_address: str) -> list[re.Pattern[bytes]]:
        """One pattern per filter, each matching inside a line that passes it."""
        out = []
        if self.text:
            out.append(re.compile(re.escape(self.text.encode()), re.IGNORECASE))
        if self.model:
            name = re.escape(self.model.encode())
            out.append(re.compile(rb'"model":\s*"' + name + rb'"|"path":\s*"/v1/models/' + name
                                  + rb'[/:?"]'))
        if self.node:
            hosts = [re.escape(self.node.encode())]
            if self.node == local_address:
                hosts.append(re.escape(LOCAL.encode()))
            out.append(re.compile(rb'"upstream_host":\s*"(?:' + b"|".join(hosts) + rb')[:"]'))
        status = self.status.lower()
        if status == "error":
            out.append(re.compile(rb'"status":\s*"?(?:[4-9]\d\d|0)\b'))
        elif len(status) == 3 and status.endswith("xx") and status[0].isdigit():
            out.append(re.compile(rb'"status":\s*"?' + status[:1].encode() + rb'\d\d\b'))
        elif status.isdigit():
            out.append(re.compile(rb'"status":\s*"?' + status.encode() + rb'\b'))
        return out

    def hint(self) -> tuple[bytes, bool] | None:
        """Bytes every matching line contains, and whether they are ASCII-lowercased (to be
        found in a lowercased block): found with ``bytes.find``, far faster than any pattern."""
        hints = [(self.text.encode().lower(), True)] if self.text else []
        if self.model:
            hints.append((self.model.encode(), False))
        return max(hints, key=lambda h: len(h[0])) if hints else None

    @property
    def active(self) -> bool:
        return any((self.model, self.status, self.node, self.text, self.since, self.until))

    def problem(self) -> str | None:
        """What is wrong with the status asked for (a filter that matched nothing silently would
        read as "no such requests")."""
        if _STATUS_FORM.fullmatch(self.status):
            return None
        return (f"status {self.status!r} is not one the search knows: a code (404), a class "
                "(4xx) or \"error\" (400 and above, or none)")


_STATUS_FORM = re.compile(r"(?i)|error|[0-9]xx|[0-9]{3}")


# ----------------------------------------------------------------------------- time range


def _pread(handle: BinaryIO, offset: int, length: int) -> bytes:
    return os.pread(handle.fileno(), max(0, length), max(0, offset))


def _time_at(handle: BinaryIO, offset: int, size: int) -> tuple[bytes, int] | None:
    """The time of the first line starting at or after ``offset``, and that line's start."""
    data = _pread(handle, offset, min(PROBE, size - offset))
    start = 0
    if offset > 0:
        cut = data.find(b"\n")
        if cut < 0:
            return None
        start = cut + 1
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        found = _TIME.search(data, start, end)
        if found:
            return found.group(1), offset + start
        start = end + 1
    return None


def offset_of_time(handle: BinaryIO, size: int, moment: bytes) -> int:
    """The start of the first line whose time is at or after ``moment`` (``size``: none is)."""
    lo, hi = 0, size
    while hi - lo > PROBE:
        mid = (lo + hi) // 2
        probe = _time_at(handle, mid, size)
        if probe is None or probe[0] >= moment:
            hi = mid
        else:
            lo = mid
    # The last stretch line by line, up to the first line starting at or after ``hi``.
    data = _pread(handle, lo, min(size, hi + PROBE) - lo)
    pos = 0 if lo == 0 else data.find(b"\n") + 1
    if lo > 0 and pos == 0:
        return hi           # a line longer than PROBE: close enough
    while pos < len(data):
        stop = data.find(b"\n", pos)
        stop = len(data) if stop < 0 else stop
        found = _TIME.search(data, pos, stop)
        if lo + pos >= hi or (found and found.group(1) >= moment):
            return lo + pos
        pos = stop + 1
    return size

def byte_range(handle: BinaryIO, size: int, flt: AccessFilter) -> tuple[int, int]:
    lo = offset_of_time(handle, size, flt.since.encode()) if flt.since else 0
    hi = offset_of_time(handle, size, flt.until.encode()) if flt.until else size
    return lo, max(lo, hi)


# ----------------------------------------------------------------------------- search


@dataclass
class AccessResult:
    entries: list[AccessEntry]          # newest first, at most ``limit``
    matched: int                        # every matching line of the range
    by_status: Counter = field(default_factory=Counter)
    by_model: Counter = field(default_factory=Counter)
    by_node: Counter = field(default_factory=Counter)
    start: int = 0                      # the byte range searched
    end: int = 0
    scanned_from: int = 0               # where the scan stopped (== start when complete)
    size: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.scanned_from <= self.start

    def flags_seen(self) -> list[str]:
        return sorted({f for e in self.entries for f in e.flag_list()})


def blocks_backward(handle: BinaryIO, start: int, end: int, block: int = BLOCK
                    ) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of whole lines from ``end`` back to ``start``, ``block`` bytes at a time."""
    pos = end
    while pos > start:
        lo = max(start, pos - block)
        data = _pread(handle, lo, pos - lo)
        if lo > start:
            cut = data.find(b"\n")
            if cut < 0 and block < 4 * BLOCK:
                block *= 2      # one line longer than a block: read it whole with a bigger one
                continue
            # (past 16 MiB a line is cut: its end is shown as a line of its own)
            data, lo = data[cut + 1:], lo + cut + 1
        yield lo, data
        pos = lo


def _count_all(data: bytes, result: AccessResult, local_address: str) -> None:
    for status, n in Counter(_STATUS.findall(data)).items():
        result.by_status[status.decode()] += n
    for pattern in (_MODEL_PATH, _MODEL_FIELD):
        for model, n in Counter(pattern.findall(data)).items():
            result.by_model[model.decode("utf-8", "replace")] += n
    for host, n in Counter(_UPSTREAM.findall(data)).items():
        result.by_node[node_of(host.decode("utf-8", "replace"), local_address)] += n


def _lines_matching(data: bytes, patterns: list[re.Pattern[bytes]],
                    hint: tuple[bytes, bool] | None) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of ``data`` that every pattern matches, in file order.

    Candidates are the lines holding ``hint`` (or, without one, matching the first pattern).
    """
    if hint is not None:
        needle, folded = hint
        haystack = data.lower() if folded else data
        find = lambda pos: haystack.find(needle, pos)            # noqa: E731
    else:
        find = lambda pos: (lambda m: -1 if m is None else m.start())(patterns[0].search(data, pos))  # noqa: E731
    pos = 0
    while True:
        at = find(pos)
        if at < 0:
            return
        begin = data.rfind(b"\n", 0, at) + 1
        stop = data.find(b"\n", at)
        stop = len(data) if stop < 0 else stop
        if all(p.search(data, begin, stop) for p in patterns):
            yield begin, stop
        pos = stop + 1


def search(handle: BinaryIO, size: int, flt: AccessFilter, local_address: str = "",
           limit: int = 200, time_budget: float = 60.0) -> AccessResult:
    """The newest ``limit`` lines matching ``flt`` and counts of every match, in one pass."""
    started = time.monotonic()
    start, end = byte_range(handle, size, flt)
    result = AccessResult([], 0, start=start, end=end, scanned_from=end, size=size)
    patterns, hint = flt.patterns(local_address), flt.hint()
    newest: list[tuple[int, bytes]] = []
    for offset, data in blocks_backward(handle, start, end):
        if not patterns:
            result.matched += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            _count_all(data, result, local_address)
            if len(newest) < limit:
                lines = data.rstrip(b"\n").split(b"\n")
                at = offset + len(data.rstrip(b"\n"))
                for line in reversed(lines):
                    at -= len(line)
                    if len(newest) < limit and line.strip():
                        newest.append((at, line))
                    at -= 1
        else:
            hits = list(_lines_matching(data, patterns, hint))
            result.matched += len(hits)
            if hits:
                _count_all(b"\n".join(data[b:e] for b, e in hits), result, local_address)
            for b, e in reversed(hits):
                if len(newest) >= limit:
                    break
                newest.append((offset + b, data[b:e]))
        result.scanned_from = offset
        if time.monotonic() - started > time_budget:
            break
    result.entries = [e for e in (parse_line(line, off, local_address) for off, line in newest)
                      if e is not None]
    result.seconds = time.monotonic() - started
    return result
