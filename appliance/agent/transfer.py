"""Download one model version into a staging directory: concurrent, streamed, verified.

Memory stays flat whatever the model size: every download task streams its byte range in
1 MiB chunks straight to its offset in the file (``os.pwrite``), hashing as it goes.

How an object is verified (``sync.verify: etag``, the default) depends on what the repository
offers:

* pushed by ``appliance models push`` (a push manifest with block checksums): the object is
  split into block-aligned ranges and each range checks its blocks' XXH3 checksums as they
  stream in (:mod:`..sources.checksums`; ~50x cheaper than MD5). The cycle has already checked
  every listed size and ETag against the manifest, so a replaced object is refused before any
  download, and one replaced or corrupted behind the listing fails its checksums;
* otherwise (e.g. ``s3cmd sync``) the MD5 ETag: small objects are one task each; multipart
  objects are split along their upload parts, so the per-part MD5s combine into the object's
  ETag (``md5(md5(part1) + ... )-N``) without reading the file twice.

An object is written as ``<file>.part`` and renamed to its final name only after its size and
checksums/ETag check out, so after a crash (even SIGKILL) a file under its final name in the
staging dir is a verified one and only ``.part`` files are fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SourceError, SyncError
from ..sources.base import ModelSource, RemoteObject, RemoteVersion
from ..sources.checksums import BlockHasher

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RANGE_SIZE = 16 << 20          # ranges of objects not split along their upload parts
PART_SUFFIX = ".part"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_TRANSIENT_RETRIES = 3
_COMMON_PART_MIB = (8, 5, 15, 16, 64, 100, 128)
_CHECK_NAMES = {"blocks": "push-manifest checksums", "md5": "MD5 ETag",
                "multipart": "multipart MD5 ETag", "size": "size only"}


class VerificationError(SyncError):
    """An object's bytes do not match what the repository lists: the version is refused."""


@dataclass
class _Task:
    obj: RemoteObject
    index: int
    start: int
    length: int
    digest: bytes = b""
    written: int = 0


@dataclass
class _ObjectPlan:
    obj: RemoteObject
    part_path: Path
    final_path: Path
    tasks: list[_Task]
    check: str                  # "blocks", "md5", "multipart" or "size"
    pushed: RemoteObject | None = None   # the manifest's entry, with block checksums
    fd: int = -1
    left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Meter:
    """Bytes done, shared by the workers; read by the progress logger."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self._lock = total, 0, threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count


class Downloader:
    """Fetches versions from one source with ``concurrency`` parallel streams."""

    def __init__(self, source: ModelSource, concurrency: int, verify: str = "etag",
                 progress_every: float = 5.0) -> None:
        self.source = source
        self.concurrency = concurrency
        self.verify = verify
        self.progress_every = progress_every

    def fetch(self, version: RemoteVersion, staging: Path) -> int:
        """Download every object of ``version`` missing from ``staging``; return bytes fetched.

        Raises :class:`VerificationError` when an object does not match its listing (the caller
        refuses the version) and :class:`SourceError` for repository/network trouble (the
        caller retries later; finished files stay in ``staging`` for the next try).
        """
        staging.mkdir(parents=True, exist_ok=True)
        plans = [self._plan(version, obj, staging) for obj in version.objects]
        plans = [p for p in plans if p is not None]
        total = sum(p.obj.size for p in plans)
        if not plans:
            return 0
        checks: dict[str, int] = {}
        for plan in plans:
            checks[plan.check] = checks.get(plan.check, 0) + 1
        log.info("fetching %s v%s: %d objects, %.1f MB; verifying %s", version.name,
                 version.dirname, len(plans), total / 1e6,
                 ", ".join(f"{count} by {_CHECK_NAMES[check]}" for check, count in checks.items()))
        meter = _Meter(total)
        tasks = [(plan, task) for plan in plans for task in plan.tasks]
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="sync") as pool:
                futures: list[Future] = [pool.submit(self._run, version, plan, task, meter)
                                         for plan, task in tasks]
                self._wait(futures, version, meter, started)
        finally:
            for plan in plans:
                if plan.fd >= 0:
                    os.close(plan.fd)
                    plan.fd = -1
        return total

    # ------------------------------------------------------------------ planning

    def _plan(self, version: RemoteVersion, obj: RemoteObject, staging: Path) -> _ObjectPlan | None:
        final = staging / obj.path
        if not final.resolve().is_relative_to(staging.resolve()):
            raise VerificationError(f"object path {obj.path!r} escapes the version directory")
        try:
            if final.stat().st_size == obj.size:
                return None     # verified by an earlier (interrupted) run
        except FileNotFoundError:
            pass
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + PART_SUFFIX)
        pushed = version.pushed(obj) if self.verify == "etag" else None
        check, bounds = self._bounds(version, obj, pushed)
        tasks = [_Task(obj, i, start, length) for i, (start, length) in enumerate(bounds)]
        plan = _ObjectPlan(obj, part, final, tasks, check, pushed if check == "blocks" else None)
        plan.fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(plan.fd, obj.size)
        plan.left = len(tasks)
        return plan

    def _bounds(self, version: RemoteVersion, obj: RemoteObject,
                pushed: RemoteObject | None) -> tuple[str, list[tuple[int, int]]]:
        """How to split ``obj`` into download tasks, and how its content can be checked."""
        size = obj.size
        if size == 0:
            return "size", [(0, 0)]
        if pushed is not None:
            step = max(1, RANGE_SIZE // pushed.block_size) * pushed.block_size
            return "blocks", [(s, min(step, size - s)) for s in range(0, size, step)]
        if self.verify == "etag" and _MD5.match(obj.etag):
            return "md5", [(0, size)]
        multipart = _MULTIPART.match(obj.etag) if self.verify == "etag" else None
        if multipart:
            parts = int(multipart.group(2))
            # The store's answer first, then the part sizes common clients use (boto3 and aws
            # 8 MiB, s3cmd 15 MiB, mc 16 MiB, ...): the combined ETag tells which was right.
            candidates = [size] if parts == 1 else [self.source.part_size(version.key(obj)),
                                                    *(m << 20 for m in _COMMON_PART_MIB)]
            for part in candidates:
                if part and -(-size // part) == parts:
                    return "multipart", [(s, min(part, size - s)) for s in range(0, size, part)]
            log.warning("%s: cannot find the part size of a %d-part upload; checking its size only",
                        version.key(obj), parts)
        elif self.verify == "etag" and obj.etag:
            log.debug("%s: ETag %s is not an MD5; checking size only", version.key(obj), obj.etag)
        return "size", [(s, min(RANGE_SIZE, size - s)) for s in range(0, size, RANGE_SIZE)]

    # ------------------------------------------------------------------ running

    def _wait(self, futures: list[Future], version: RemoteVersion, meter: _Meter,
              started: float) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=self.progress_every, return_when=FIRST_EXCEPTION)
            for future in done:
                exc = future.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
            if pending:
                elapsed = max(time.monotonic() - started, 1e-6)
                log.info("downloading %s v%s: %.1f/%.1f MB (%d%%, %.1f MB/s)", version.name,
                         version.dirname, meter.done / 1e6, meter.total / 1e6,
                         100 * meter.done // max(meter.total, 1), meter.done / 1e6 / elapsed)

    def _run(self, version: RemoteVersion, plan: _ObjectPlan, task: _Task, meter: _Meter) -> None:
        for attempt in range(1, _TRANSIENT_RETRIES + 1):
            try:
                self._copy(version, plan, task, meter)
                break
            except (SourceError, OSError) as exc:
                if attempt == _TRANSIENT_RETRIES or isinstance(exc, VerificationError):
                    raise
                log.warning("%s bytes %d+%d: %s; retrying (%d/%d)", version.key(task.obj),
                            task.start, task.length, exc, attempt, _TRANSIENT_RETRIES)
                time.sleep(attempt)
        with plan.lock:
            plan.left -= 1
            last = plan.left == 0
        if last:
            self._finish(version, plan)

    def _copy(self, version: RemoteVersion, plan: _ObjectPlan, task: _Task, meter: _Meter) -> int:
        """One attempt at one range; on failure the meter forgets its bytes."""
        hasher: "hashlib._Hash | BlockHasher | None" = None
        if plan.check == "blocks":
            assert plan.pushed is not None
            hasher = BlockHasher(plan.pushed.block_size)
        elif plan.check != "size":
            hasher = hashlib.md5(usedforsecurity=False)
        try:
            self._stream(version, plan, task, meter, hasher)
        except BaseException:
            meter.add(-task.written)
            raise
        if isinstance(hasher, BlockHasher):
            self._check_blocks(version, plan, task, hasher.finish())
        elif hasher is not None:
            task.digest = hasher.digest()
        return task.written

    def _check_blocks(self, version: RemoteVersion, plan: _ObjectPlan, task: _Task,
                      got: list[str]) -> None:
        assert plan.pushed is not None
        block_size = plan.pushed.block_size
        first = task.start // block_size
        for index, digest in enumerate(got, start=first):
            want = plan.pushed.blocks[index]
            if digest != want:
                plan.part_path.unlink(missing_ok=True)
                raise VerificationError(
                    f"{version.key(task.obj)}: bytes {index * block_size}-"
                    f"{min((index + 1) * block_size, task.obj.size) - 1} have checksum {digest}, "
                    f"the push manifest lists {want} (checksum mismatch: corrupt, or changed "
                    "after the push)")

    def _stream(self, version: RemoteVersion, plan: _ObjectPlan, task: _Task, meter: _Meter,
                hasher: "hashlib._Hash | BlockHasher | None") -> None:
        offset, written, task.written = task.start, 0, 0
        if task.length:
            stream = self.source.open(version, task.obj, task.start, task.length)
            try:
                while written < task.length:
                    try:
                        data = stream.read(min(CHUNK, task.length - written))
                    except Exception as exc:   # urllib3/botocore read errors mid-body
                        raise SourceError(f"reading {version.key(task.obj)}: {exc}") from exc
                    if not data:
                        break
                    os.pwrite(plan.fd, data, offset)
                    if hasher is not None:
                        hasher.update(data)
                    offset += len(data)
                    written += len(data)
                    task.written = written
                    meter.add(len(data))
            finally:
                stream.close()
        if written != task.length:
            raise VerificationError(
                f"{version.key(task.obj)}: got {task.start + written} bytes where the repository "
                f"lists {task.obj.size} (size mismatch: the object is shorter than listed)")

    def _finish(self, version: RemoteVersion, plan: _ObjectPlan) -> None:
        """Verify a fully written object, then give it its final name."""
        os.fsync(plan.fd)
        os.close(plan.fd)
        plan.fd = -1
        obj, key = plan.obj, version.key(plan.obj)
        actual = plan.part_path.stat().st_size
        if actual != obj.size:
            raise VerificationError(f"{key}: {actual} bytes on disk, {obj.size} listed (size mismatch)")
        got = ""
        if plan.check == "md5":
            got = plan.tasks[0].digest.hex()
        elif plan.check == "multipart":
            combined = hashlib.md5(b"".join(t.digest for t in plan.tasks), usedforsecurity=False)
            got = f"{combined.hexdigest()}-{len(plan.tasks)}"
        if got and got != obj.etag:
            plan.part_path.unlink(missing_ok=True)
            raise VerificationError(f"{key}: content has ETag {got}, the repository lists "
                                    f"{obj.etag} (ETag mismatch: corrupt or changed while "
                                    "downloading)")
        os.rename(plan.part_path, plan.final_path)
