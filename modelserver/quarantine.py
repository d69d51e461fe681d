"""Quarantined model versions: a version that failed to load is not chosen again until its files change.

TF Serving keeps aspiring the newest version even when it failed to load, so a corrupt version
numbered above the served one freezes a model on its old version (newer good versions are never
aspired), and at the next start the server exits because that version fails again: a failed
deploy becomes an outage at reboot. The model server therefore records every version that fails
to load, with its error and a fingerprint of its files, and its version policy picks the newest
versions *not* in the record; GetModelStatus still reports the failed version END with its error,
as TF Serving does. A version whose files change (a fixed re-push under the same number, a copy
that was still in progress) leaves the record and is loaded again.

The record is one file per model, ``<quarantine dir>/<model>.json`` (the node renders
``--quarantine_dir=<root>/var/lib/appliance/quarantine``), so it survives restarts of the model
server and of the node. Without ``--quarantine_dir`` (a standalone model server) it lives in
memory only. The model server is the only writer; the agent (which version may replace a stray
one), ``appliance status``, ``models ls``, ``doctor`` and the logviewer read it. Format
``appliance-quarantine/1``::

    {"format": ..., "model": NAME,
     "versions": {"3": {"dir": "3", "fingerprint": "...", "code": "DATA_LOSS",
                        "error": "...", "since": <epoch seconds>, "context": "..."}}}

The fingerprint is a hash of every file's relative path, size and mtime: cheap (no file is
read), and any re-download or edit changes it. It is taken before the load, so files replaced
while a load fails are tried again. ``context`` is what else decides a load (the platform, the
SavedModel tags, warmup on or off, a precision or runtime option of ``--model_settings_file``):
a model server started (or a model's settings changed) with another context drops the entry,
so fixing a flag or a setting does not leave good versions quarantined. To retry a version without
changing it, touch one of its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_atomic

log = logging.getLogger(__name__)

FORMAT = "appliance-quarantine/1"
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One quarantined version: what failed, when, and which files it was."""

    version: int
    dir: str
    fingerprint: str
    code: str          # canonical status code name (UNKNOWN, DATA_LOSS, ...)
    error: str
    since: float
    context: str = ""

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.error}"

    def describe(self) -> str:
        """Plain words for status pages: ``quarantined since <UTC time>: <reason>``."""
        return f"quarantined since {utc(self.since)}: {self.reason}"


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def fingerprint(version_dir: str | os.PathLike) -> str:
    """Hash of (relative path, size, mtime) of every file under ``version_dir``; '' if it is gone."""
    rows = []
    root = os.fspath(version_dir)
    if not os.path.isdir(root):
        return ""
    for base, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            rows.append(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def record_path(directory: str | os.PathLike, model: str) -> Path:
    return Path(directory) / f"{urllib.parse.quote(model, safe='')}.json"


def read(directory: str | os.PathLike | None, model: str) -> dict[int, Entry]:
    """The recorded entries of ``model`` ({} when there is no record or it is unreadable)."""
    if not directory:
        return {}
    path = record_path(directory, model)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        doc = json.loads(raw) if len(raw) <= MAX_BYTES else None
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the quarantine record %s: %s", path, exc)
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        log.warning("ignoring the quarantine record %s: not of format %s", path, FORMAT)
        return {}
    entries = {}
    for number, row in (doc.get("versions") or {}).items():
        try:
            entries[int(number)] = Entry(int(number), str(row["dir"]), str(row["fingerprint"]),
                                         str(row["code"]), str(row["error"]), float(row["since"]),
                                         str(row.get("context", "")))
        except (KeyError, TypeError, ValueError):
            continue
    return entries


def current(directory: str | os.PathLike | None, model: str,
            model_dir: str | os.PathLike) -> dict[int, Entry]:
    """The entries still in force: the version's directory holds the files that failed.

    What readers other than the model server use (a version just re-pushed with new files is
    no longer quarantined, even before the model server's next poll rewrites the record).
    """
    return {n: e for n, e in read(directory, model).items()
            if fingerprint(os.path.join(model_dir, e.dir)) == e.fingerprint}


class Quarantine:
    """One model's quarantined versions, as the model server keeps them (memory + record file)."""

    def __init__(self, directory: str | None, model: str, context: str = "") -> None:
        self.directory = directory or None
        self.model = model
        self.context = context
        self.entries: dict[int, Entry] = read(self.directory, model)
        self.retarget(context)

    def retarget(self, context: str) -> None:
        """Loads now happen with ``context``: versions that failed with other settings leave."""
        self.context = context
        other = [n for n, e in self.entries.items() if e.context != context]
        for number in other:
            log.info("model %s version %d leaves quarantine: it failed with other settings (%s, now %s)",
                     self.model, number, self.entries[number].context or "-", context or "-")
            del self.entries[number]
        if other:
            self._save()

    def add(self, version: int, dirname: str, files: str, code: str, error: str) -> Entry:
        """Quarantine ``version``; ``files`` is its :func:`fingerprint` taken before the load."""
        entry = Entry(version, dirname, files, code, error, time.time(), self.context)
        self.entries[version] = entry
        self._save()
        return entry

    def refresh(self, model_dir: str, on_disk: dict[int, str]) -> set[int]:
        """Forget versions that left the disk or whose files changed; return those still quarantined."""
        dropped = []
        for number, entry in list(self.entries.items()):
            dirname = on_disk.get(number)
            if dirname is None:
                dropped.append((number, "its directory is gone"))
            elif fingerprint(os.path.join(model_dir, dirname)) != entry.fingerprint:
                dropped.append((number, "its files changed; loading it again"))
        for number, why in dropped:
            del self.entries[number]
            log.info("model %s version %d leaves quarantine: %s", self.model, number, why)
        if dropped:
            self._save()
        return set(self.entries)

    def _save(self) -> None:
        if self.directory is None:
            return
        path = record_path(self.directory, self.model)
        try:
            if not self.entries:
                path.unlink(missing_ok=True)
                return
            doc = {"format": FORMAT, "model": self.model,
                   "versions": {str(n): {k: v for k, v in asdict(e).items() if k != "version"}
                                for n, e in sorted(self.entries.items())}}
            write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o644)
        except OSError as exc:
            log.error("cannot write the quarantine record %s: %s (the quarantine holds until this "
                      "model server stops)", path, exc)
