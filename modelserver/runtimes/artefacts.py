"""A bounded, crash-safe cache of what a load computed from a version's files.

Converting a SavedModel for OpenVINO takes seconds to tens of seconds (ResNet-50: TF load,
freezing, inlining, conversion), and ``platform: auto`` measures every runtime on top of that;
neither should happen again when the server restarts with the same files. An entry is a
directory named by a key: the SHA-256 of the version's *content* (every file's relative path
and bytes, so a copy of the same model elsewhere hits, a changed file misses), the runtime's
version and whatever options changed the result.

Crash safety: an entry is filled in a temporary directory inside the cache, its files fsynced,
then renamed into place (``os.rename`` of a directory is atomic on one filesystem), so a reader
sees a whole entry or none; temporaries a crash left behind are removed at the next start.
Bounded: after each write the least recently used entries (a hit touches its entry) go until the
cache holds at most ``max_bytes``; the entry just written always stays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
DEFAULT_MAX_BYTES = 4 << 30
_CHUNK = 1 << 20


def content_hash(version_dir: str) -> str:
    """SHA-256 of a version directory's files: relative paths, sizes and bytes, in path order."""
    digest = hashlib.sha256()
    root = Path(version_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix().encode()
        digest.update(len(relative).to_bytes(4, "big") + relative + path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_tree(path: Path) -> None:
    for item in [*path.rglob("*"), path]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ArtefactCache:
    """Entries (directories) by key under ``root``; see the module docstring."""

    def __init__(self, root: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def get(self, key: str) -> Path | None:
        """The entry's directory (touched: recently used), or None."""
        entry = self.root / key
        try:
            os.utime(entry)
        except OSError:
            return None
        return entry

    def put(self, key: str, fill: Callable[[Path], None]) -> Path:
        """Write an entry: ``fill(directory)`` writes its files; then it appears whole at once.
        Another writer of the same key winning the race is fine: both wrote the same thing."""
        scratch = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{key}-", dir=self.root))
        try:
            fill(scratch)
            _fsync_tree(scratch)
            try:
                os.rename(scratch, self.root / key)
            except OSError:
                if not (self.root / key).is_dir():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._evict(keep=key)
        return self.root / key

    def _evict(self, keep: str) -> None:
        with self._lock:
            entries = []
            for entry in self.root.iterdir():
                if entry.name.startswith(TEMP_PREFIX) or not entry.is_dir():
                    continue
                try:
                    entries.append((entry.stat().st_mtime, entry, _size(entry)))
                except OSError:
                    continue  # removed meanwhile by another process's eviction
            total = sum(size for _, _, size in entries)
            for _, entry, size in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if entry.name == keep:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
                log.info("runtime cache: evicted %s (%d bytes; cache over %d bytes)", entry.name, size, self.max_bytes)


_caches: dict[str, ArtefactCache] = {}
_caches_lock = threading.Lock()


def cache_at(root: str, max_bytes: int = DEFAULT_MAX_BYTES) -> ArtefactCache | None:
    """The process's cache at ``root`` (None for ""); one object per directory."""
    if not root:
        return None
    with _caches_lock:
        cache = _caches.get(root)
        if cache is None:
            cache = _caches[root] = ArtefactCache(root, max_bytes)
        cache.max_bytes = max_bytes
        return cache
