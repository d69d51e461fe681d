"""Block checksums of pushed objects: what ``models push`` records and the agent verifies.

Why not the ETag: checking an ETag means computing the MD5 of every byte, and on a small node
(2 cores shared with the model server, or with the object store on a repo node) MD5 at ~0.6 GB/s
per core costs as much CPU as the download itself. XXH3-128 runs at >10 GB/s per core, so
verifying it is nearly free. Checksums are per fixed-size block of the object, so each download
task (a block-aligned byte range) verifies its own bytes as they stream in: no combining of
partial digests and no second read of the file.

These checksums catch corruption and objects changed after the push (the agent also compares
each listed ETag with the one the manifest recorded, before downloading). They are not a
signature: whoever can rewrite the objects can rewrite the manifest too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import xxhash

ALGORITHM = "xxh3_128"
BLOCK_SIZE = 8 << 20     # = the S3 part size of our uploads and of the aws CLI's ranged GETs
_READ = 1 << 20


class BlockHasher:
    """Checksums of consecutive blocks fed in arbitrary chunks (a chunk may span blocks)."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.digests: list[str] = []
        self._hash = xxhash.xxh3_128()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.block_size - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self._close_block()

    def finish(self) -> list[str]:
        """Digests of every block, the last (short) one included."""
        if self._filled:
            self._close_block()
        return self.digests

    def _close_block(self) -> None:
        self.digests.append(self._hash.hexdigest())
        self._hash.reset()
        self._filled = 0


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def file_blocks(path: Path, block_size: int = BLOCK_SIZE) -> list[str]:
    """The block checksums of a local file (one sequential read, 1 MiB at a time)."""
    hasher = BlockHasher(block_size)
    with path.open("rb", buffering=0) as handle:
        buf = bytearray(_READ)
        while count := handle.readinto(buf):
            hasher.update(memoryview(buf)[:count])
    return hasher.finish()


def valid_blocks(blocks: Sequence[str], size: int, block_size: int) -> bool:
    """Whether a manifest entry has exactly one well-formed digest per block of ``size``."""
    return (block_size > 0 and len(blocks) == block_count(size, block_size)
            and all(isinstance(b, str) and len(b) == 32 for b in blocks))
