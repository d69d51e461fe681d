"""A model repository that is a local directory (the single-node trial's /data/models, or a mount).

Pushing into it is atomic per version: files are copied into a hidden staging directory on the
same filesystem and the version directory is renamed into place, so a model server polling the
directory never sees half a version.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import SourceError
from .base import ModelSource, Progress, RemoteVersion, local_files, manifest_key

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


class _Window:
    """``length`` bytes of an open file from its current position (what S3 ranged GETs return)."""

    def __init__(self, handle: BinaryIO, length: int) -> None:
        self._handle, self._left = handle, length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._handle.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


class LocalSource(ModelSource):
    """``<root>/<name>/<version>/...`` on a local (or mounted) filesystem."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise SourceError(f"{key!r} is outside the repository {self.root}")
        return path

    def _list(self, prefix: str) -> Iterator[tuple[str, int, str]]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for rel, path in local_files(base):
            if any(part.startswith(".") for part in rel.split("/")):
                continue   # staging dirs and hidden files are not part of any version
            try:
                size = path.stat().st_size
            except OSError:
                continue   # vanished while listing
            yield f"{prefix}{rel}", size, ""

    def _open(self, key: str, start: int, length: int) -> BinaryIO:
        try:
            handle = self._path(key).open("rb")
        except OSError as exc:
            raise SourceError(f"cannot read {key} in {self.root}: {exc.strerror}") from exc
        handle.seek(start)
        return _Window(handle, length)  # type: ignore[return-value]

    def _read_small(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _put_file(self, path: Path, key: str, progress: Progress) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
                progress(len(chunk))

    def _put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                pass

    def push(self, directory: Path, name: str, dirname: str,
             progress: Progress = lambda n: None) -> RemoteVersion:
        """Copy into ``<root>/.staging/``, then rename the version dir into place (atomic)."""
        if not local_files(directory):
            raise SourceError(f"{directory} holds no files to push")
        staging = self.root / ".staging" / f"push-{name}-{dirname}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for rel, path in local_files(directory):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as src, target.open("wb") as dst:
                while chunk := src.read(_COPY_CHUNK):
                    dst.write(chunk)
                    progress(len(chunk))
        final = self.root / name / dirname
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if final.exists():
            old = staging.with_name(staging.name + ".old")
            os.rename(final, old)
        os.rename(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._delete([manifest_key(name, dirname)])
        version = self.versions(name)[int(dirname)]
        return version
