"""What every model repository offers the agent and the CLI: list versions, read, upload.

A repository holds ``<name>/<version>/<files...>`` (the TF Serving layout; only numeric version
directory names count, as in TF Serving's file-system source). Backends are one module each
(:mod:`.local`, :mod:`.s3`) and fill in small ``_methods``; the public methods here do the shared
work -- grouping a flat listing into versions, reading push manifests, checking them -- so every
backend behaves the same (Patroni's dcs layout).

A *push manifest* (``<name>/<version>.manifest.json``, next to the version directory so TF
Serving's own discovery ignores it) records each object's size, ETag and block checksums
(:mod:`.checksums`) as uploaded, and is written last by ``appliance models push``. It lets the
agent tell a finished upload from one in progress, notice an object that was deleted or changed
after the push, and verify downloaded bytes with a cheap checksum instead of an MD5 per byte.
Manifests without checksums (older pushes) stay valid: the agent then checks ETags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from modelserver.core.platforms import is_version_name

from ..errors import SourceError
from . import checksums

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "appliance-push-manifest/1"

Progress = Callable[[int], None]   # called with a number of bytes just transferred


@dataclass(frozen=True)
class RemoteObject:
    """One file of a version: its path inside the version directory, size and ETag (no quotes).

    Objects read from a push manifest also carry the checksum of each ``block_size`` block
    (:data:`.checksums.ALGORITHM`); listed objects carry none.
    """

    path: str
    size: int
    etag: str = ""
    blocks: tuple[str, ...] = ()
    block_size: int = 0


@dataclass(frozen=True)
class RemoteVersion:
    """One version directory of a model in the repository, as listed right now."""

    name: str
    version: int
    dirname: str
    objects: tuple[RemoteObject, ...]
    manifest: tuple[RemoteObject, ...] | None = None

    @property
    def size(self) -> int:
        return sum(obj.size for obj in self.objects)

    @property
    def fingerprint(self) -> str:
        """Identifies this exact content: changes when any object is added, removed or replaced."""
        digest = hashlib.sha256()
        for obj in sorted(self.objects, key=lambda o: o.path):
            digest.update(f"{obj.path}\0{obj.size}\0{obj.etag}\n".encode())
        return digest.hexdigest()[:20]

    def key(self, obj: RemoteObject) -> str:
        return version_prefix(self.name, self.dirname) + obj.path

    @cached_property
    def _pushed(self) -> dict[str, RemoteObject]:
        return {want.path: want for want in self.manifest or ()}

    def pushed(self, obj: RemoteObject) -> RemoteObject | None:
        """The manifest's entry for a listed object with block checksums for its size, if any."""
        want = self._pushed.get(obj.path)
        return want if want is not None and want.blocks and want.size == obj.size else None

    def manifest_problems(self) -> list[str]:
        """How the listing differs from what was pushed; empty when it matches (or no manifest)."""
        if self.manifest is None:
            return []
        listed = {obj.path: obj for obj in self.objects}
        problems = []
        for want in self.manifest:
            got = listed.pop(want.path, None)
            if got is None:
                problems.append(f"{want.path}: missing from the repository (pushed with "
                                f"{want.size} bytes)")
            elif got.size != want.size:
                problems.append(f"{want.path}: size {got.size} in the repository, "
                                f"{want.size} when pushed")
            elif want.etag and got.etag and got.etag != want.etag:
                problems.append(f"{want.path}: ETag {got.etag} in the repository, "
                                f"{want.etag} when pushed (changed after the push)")
        for extra in sorted(listed):
            problems.append(f"{extra}: not in the push manifest (added after the push; "
                            "push the version again to refresh the manifest)")
        return problems


def version_prefix(name: str, dirname: str) -> str:
    """The key prefix of a version's objects in a repository: ``<name>/<dirname>/``."""
    return f"{name}/{dirname}/"


def manifest_key(name: str, dirname: str) -> str:
    """The key of a version's push manifest: beside its directory, not in it, so the version's
    objects never include it and it can be written last."""
    return f"{name}/{dirname}{MANIFEST_SUFFIX}"


def parse_version(dirname: str) -> int | None:
    """TF Serving's rule: a version dir name is an int64 (``00000123`` is 123); else ignored."""
    if not is_version_name(dirname):
        return None
    number = int(dirname)
    return number if number < 2**63 else None


def local_files(directory: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``directory`` as (relative posix path, path), sorted."""
    files = []
    for base, dirs, names in os.walk(directory, followlinks=True):
        dirs.sort()
        for fname in sorted(names):
            path = Path(base) / fname
            files.append((path.relative_to(directory).as_posix(), path))
    return files


class ModelSource(ABC):
    """A model repository. Keys are '/'-separated and relative to the repository root."""

    #: short name for logs and ``models ls`` ("local", "s3")
    kind = "?"

    @abstractmethod
    def describe(self) -> str:
        """Where the repository is, for humans (never any credential)."""

    # ------------------------------------------------------------------ for backends to fill in

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int, str]]:
        """(key, size, etag) of every object under ``prefix``, in any order."""

    @abstractmethod
    def _open(self, key: str, start: int, length: int) -> BinaryIO:
        """A stream of ``length`` bytes of ``key`` from ``start``."""

    @abstractmethod
    def _read_small(self, key: str) -> bytes:
        """The whole content of a small object (a manifest)."""

    @abstractmethod
    def _put_file(self, path: Path, key: str, progress: Progress) -> None:
        """Upload one file."""

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None:
        """Upload a small object (a manifest); written last, after the files."""

    @abstractmethod
    def _delete(self, keys: list[str]) -> None:
        """Delete objects."""

    def part_size(self, key: str) -> int | None:
        """Size of part 1 of a multipart object, when the backend can tell (for ETag checks)."""
        return None

    # ------------------------------------------------------------------ shared behaviour

    def models(self) -> list[str]:
        """Names of the models in the repository (top-level directories)."""
        names = {key.split("/", 1)[0] for key, _, _ in self._list("") if "/" in key}
        return sorted(n for n in names if not n.startswith("."))

    def versions(self, name: str) -> dict[int, RemoteVersion]:
        """The numeric version directories of ``name``, with their objects and push manifests."""
        grouped: dict[str, list[RemoteObject]] = {}
        manifests: dict[str, tuple[str, str]] = {}
        prefix = f"{name}/"
        for key, size, etag in self._list(prefix):
            rest = key[len(prefix):]
            first, sep, inner = rest.partition("/")
            if not sep:
                if first.endswith(MANIFEST_SUFFIX):
                    manifests[first[:-len(MANIFEST_SUFFIX)]] = (key, etag.strip('"'))
                continue
            if parse_version(first) is None or not inner or inner.endswith("/"):
                continue   # not a version dir, or a directory marker object
            grouped.setdefault(first, []).append(RemoteObject(inner, size, etag.strip('"')))
        out: dict[int, RemoteVersion] = {}
        for dirname in sorted(grouped):
            number = parse_version(dirname)
            assert number is not None
            if number in out:
                log.warning("model %s: version dirs %s and %s are both version %d; using %s",
                            name, out[number].dirname, dirname, number, dirname)
            manifest = self._manifest(*manifests[dirname]) if dirname in manifests else None
            out[number] = RemoteVersion(name, number, dirname, tuple(grouped[dirname]), manifest)
        cache, listed = self._manifests(), {key for key, _ in manifests.values()}
        for key in [key for key in cache if key.startswith(prefix) and key not in listed]:
            del cache[key]      # its version left the repository
        return out

    def _manifests(self) -> dict[str, tuple[str, tuple[RemoteObject, ...] | None]]:
        """Push manifests read before, by key: (the ETag they were listed with, the manifest)."""
        cache = self.__dict__.get("_manifest_cache")
        if cache is None:
            cache = self.__dict__["_manifest_cache"] = {}
        return cache

    def _manifest(self, key: str, etag: str = "") -> tuple[RemoteObject, ...] | None:
        """The push manifest at ``key``. One listed with the same ETag as when it was last read
        is not read again: an idle agent's poll is then one listing per model (the object store
        gives every new content a new ETag; a backend without ETags is read every time)."""
        cache = self._manifests()
        if etag and key in cache and cache[key][0] == etag:
            return cache[key][1]
        manifest = self._parse_manifest(key)
        if etag:
            cache[key] = (etag, manifest)
        return manifest

    def _parse_manifest(self, key: str) -> tuple[RemoteObject, ...] | None:
        try:
            doc = json.loads(self._read_small(key))
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            checksum = doc.get("checksum") or {}
            block_size = int(checksum.get("block_size", 0))
            if checksum and checksum.get("algorithm") != checksums.ALGORITHM:
                log.info("push manifest %s: unknown checksum %r; checking ETags instead", key,
                         checksum.get("algorithm"))
                block_size = 0
            out = []
            for o in doc["objects"]:
                size = int(o["size"])
                blocks = tuple(o.get("blocks", ())) if block_size else ()
                if blocks and not checksums.valid_blocks(blocks, size, block_size):
                    raise ValueError(f"{o['path']}: {len(blocks)} block checksums do not fit "
                                     f"{size} bytes in blocks of {block_size}")
                out.append(RemoteObject(o["path"], size, str(o.get("etag", "")), blocks,
                                        block_size if blocks else 0))
            return tuple(out)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable push manifest %s: %s", key, exc)
            return None

    def open(self, version: RemoteVersion, obj: RemoteObject, start: int, length: int) -> BinaryIO:
        return self._open(version.key(obj), start, length)

    def push(self, directory: Path, name: str, dirname: str,
             progress: Progress = lambda n: None) -> RemoteVersion:
        """Upload ``directory`` as ``name/dirname``, then write its manifest (last, on purpose).

        Objects of an earlier push of the same version that are not in ``directory`` are
        deleted, so the version in the repository is exactly the directory.
        """
        files = local_files(directory)
        if not files:
            raise SourceError(f"{directory} holds no files to push")
        manifest = manifest_key(name, dirname)
        self._delete([manifest])   # an upload in progress must not look finished
        blocks: dict[str, list[str]] = {}
        for rel, path in files:
            # Checksummed before the upload (xxh3 is ~50x faster than the network; the upload
            # then reads from the page cache). A file changed in between fails the agent's
            # checks, so the race refuses the version rather than installing a wrong one.
            blocks[rel] = checksums.file_blocks(path)
            self._put_file(path, version_prefix(name, dirname) + rel, progress)
        wanted = {rel for rel, _ in files}
        prefix = version_prefix(name, dirname)
        stale = [key for key, _, _ in self._list(prefix) if key[len(prefix):] not in wanted]
        if stale:
            self._delete(stale)
        listed = self.versions(name).get(int(dirname))
        if listed is None or {o.path for o in listed.objects} != wanted:
            raise SourceError(f"after uploading {name}/{dirname} the repository does not list "
                              "every file; try again")
        doc = {"format": MANIFEST_FORMAT, "name": name, "version": dirname,
               "checksum": {"algorithm": checksums.ALGORITHM, "block_size": checksums.BLOCK_SIZE},
               "objects": [{"path": o.path, "size": o.size, "etag": o.etag,
                            "blocks": blocks[o.path]}
                           for o in sorted(listed.objects, key=lambda o: o.path)]}
        self._put_bytes(manifest, json.dumps(doc, indent=1).encode())
        pushed = tuple(RemoteObject(o.path, o.size, o.etag, tuple(blocks[o.path]),
                                    checksums.BLOCK_SIZE) for o in listed.objects)
        return RemoteVersion(name, listed.version, dirname, listed.objects, pushed)

    def delete_version(self, name: str, dirname: str) -> int:
        """Remove a version and its manifest; returns the number of objects deleted."""
        keys = [key for key, _, _ in self._list(version_prefix(name, dirname))]
        self._delete(keys + [manifest_key(name, dirname)])
        return len(keys)


def read_fully(stream: BinaryIO, chunk: int) -> Iterable[bytes]:
    """Chunks of ``stream`` until EOF (bounded memory: one chunk at a time)."""
    while True:
        data = stream.read(chunk)
        if not data:
            return
        yield data
