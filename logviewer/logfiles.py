"""Reading logs by byte offset: pages, the live tail and search (the access log: accesslog.py).

Nothing here reads a whole file: every function seeks and reads at most a few MiB, so a
multi-GB log costs the same memory as a small one. Offsets are byte offsets; pages are
aligned to whole lines (a page starts after a newline and ends after one, except at the
start or end of the file).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import BinaryIO

PAGE = 64 * 1024            # default page of a log view
MAX_PAGE = 1024 * 1024      # largest page a client may ask for
TAIL_MAX = 256 * 1024       # most bytes one live-tail poll returns
SEARCH_BLOCK = 4 * 1024 * 1024
MAX_LINE = 4096             # a longer line is cut in search results and access-log rows


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@dataclass
class Chunk:
    start: int
    end: int
    size: int
    text: str

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "size": self.size, "text": self.text}


def _pread(handle: BinaryIO, offset: int, length: int) -> bytes:
    return os.pread(handle.fileno(), max(0, length), max(0, offset))


def clamp_length(length: int | None) -> int:
    if not length or length <= 0:
        return PAGE
    return min(length, MAX_PAGE)


def read_forward(handle: BinaryIO, size: int, offset: int, length: int) -> Chunk:
    """Whole lines starting at or after ``offset`` (a partial first line is skipped)."""
    offset = min(max(0, offset), size)
    data = _pread(handle, offset, min(length, size - offset))
    start = offset
    if offset > 0 and data:
        previous = _pread(handle, offset - 1, 1)
        if previous != b"\n":
            cut = data.find(b"\n")
            if cut < 0:
                return Chunk(offset + len(data), offset + len(data), size, "")
            data, start = data[cut + 1:], offset + cut + 1
    end = start + len(data)
    if end < size:
        last = data.rfind(b"\n")
        if last >= 0:
            data = data[:last + 1]
            end = start + len(data)
    return Chunk(start, end, size, decode(data))


def read_backward(handle: BinaryIO, size: int, before: int, length: int) -> Chunk:
    """Whole lines ending at or before ``before`` (the page just above ``before``)."""
    before = min(max(0, before), size)
    offset = max(0, before - length)
    data = _pread(handle, offset, before - offset)
    start = offset
    if offset > 0:
        cut = data.find(b"\n")
        if cut >= 0:
            data, start = data[cut + 1:], offset + cut + 1
    return Chunk(start, before, size, decode(data))


def tail(handle: BinaryIO, size: int, after: int | None, initial: int = 16 * 1024,
         replaced: bool = False) -> dict:
    """New complete lines since byte ``after`` (None: the last ``initial`` bytes).

    A file that shrank (truncated) or was ``replaced`` (rotated: another inode under the same
    name) restarts from its beginning with ``reset``. A partial last line is held back until
    its newline arrives, unless it is very long.
    """
    reset = False
    inode = os.fstat(handle.fileno()).st_ino
    if after is None:
        chunk = read_backward(handle, size, size, initial)
        return {**chunk.as_dict(), "reset": False, "inode": inode}
    if after > size or replaced:
        reset, after = True, 0
    data = _pread(handle, after, min(TAIL_MAX, size - after))
    last = data.rfind(b"\n")
    if last >= 0:
        data = data[:last + 1]
    elif len(data) < TAIL_MAX:
        data = b""
    return {"start": after, "end": after + len(data), "size": size, "text": decode(data),
            "reset": reset, "inode": inode}


@dataclass
class Match:
    offset: int
    line: str


@dataclass
class SearchResult:
    matches: list[Match] = field(default_factory=list)
    start: int = 0
    scanned_to: int = 0
    size: int = 0
    complete: bool = False


def search(handle: BinaryIO, size: int, needle: str, start: int = 0, max_matches: int = 200,
           case_sensitive: bool = False, time_budget: float = 20.0) -> SearchResult:
    """Lines containing ``needle`` from byte ``start`` on, reading SEARCH_BLOCK at a time.

    Stops at ``max_matches`` or after ``time_budget`` seconds; ``scanned_to`` is where the
    next search continues (always a line start). Case-insensitive matching folds ASCII only,
    so a block and its folded copy have the same byte offsets.
    """
    result = SearchResult(start=start, size=size)
    raw = needle.encode("utf-8")
    pattern = raw if case_sensitive else raw.lower()
    deadline = time.monotonic() + time_budget
    pos = min(max(0, start), size)
    while pos < size:
        block = _pread(handle, pos, min(SEARCH_BLOCK, size - pos))
        if not block:
            break
        end_of_file = pos + len(block) >= size
        if not end_of_file:
            last = block.rfind(b"\n")
            if last >= 0:
                block = block[:last + 1]
            # else: one line longer than a block; it is searched in pieces.
        haystack = block if case_sensitive else block.lower()
        at = haystack.find(pattern)
        while at >= 0:
            line_start = block.rfind(b"\n", 0, at) + 1
            line_end = block.find(b"\n", at)
            line_end = len(block) if line_end < 0 else line_end
            line = block[line_start:min(line_end, line_start + MAX_LINE)]
            result.matches.append(Match(pos + line_start, decode(line)))
            if len(result.matches) >= max_matches:
                result.scanned_to = pos + line_end + (1 if line_end < len(block) else 0)
                result.complete = result.scanned_to >= size
                return result
            at = haystack.find(pattern, line_end)
        pos += len(block)
        if time.monotonic() > deadline:
            break
    result.scanned_to = pos
    result.complete = pos >= size
    return result
