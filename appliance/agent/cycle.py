"""One sync cycle: make the local store hold what the repository holds, without ever breaking serving.

For each configured model, highest version first:

1. list the repository's versions;
2. refuse a version whose push manifest does not match the listing (an object deleted or
   changed after the push), and wait for a version without a manifest to stop changing
   (an upload in progress, e.g. ``s3cmd sync``, must not be installed half-way);
3. download new or changed versions into staging, verify every object, check that the version
   is a model (:mod:`..modelfiles`: the SavedModel or ONNX proto parses), rename into place;
4. retire local versions that left the repository, but only once the model server reports the
   version that replaces them AVAILABLE; a version the model server quarantined (it failed to
   load, :mod:`..quarantine`) never counts as a replacement, and is retired at once when it left
   the repository (it serves nothing). A repository with no version of a model retires nothing.

A refused version is remembered (by content fingerprint) and not downloaded again until it
changes; the versions already in the store keep serving.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelserver import quarantine
from ..errors import SourceError, SyncError
from ..modelfiles import NotAModel, check_version
from ..modelstatus import ModelServerClient
from ..sources.base import ModelSource, RemoteVersion
from .store import LocalStore
from .transfer import Downloader, VerificationError

log = logging.getLogger(__name__)


@dataclass
class ModelReport:
    """What one cycle did for one model (feeds the status line)."""

    name: str
    remote: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    bytes: int = 0
    reasons: dict[str, str] = field(default_factory=dict)     # refused version -> why
    repository: dict[str, dict] = field(default_factory=dict)  # version -> size, files, ...
    local: list[str] = field(default_factory=list)            # in the store after the cycle

    def summary(self) -> str:
        parts = [f"repo [{','.join(self.remote) or '-'}]"]
        for label, items in (("installed", self.installed), ("retired", self.retired),
                             ("REFUSED", self.refused), ("waiting", self.waiting)):
            if items:
                parts.append(f"{label} {','.join(items)}")
        return f"{self.name}: " + " ".join(parts)


@dataclass
class CycleReport:
    models: list[ModelReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.models)

    @property
    def refused(self) -> bool:
        return any(m.refused for m in self.models)

    def line(self) -> str:
        rate = f", {self.bytes / 1e6:.1f} MB at {self.bytes / 1e6 / max(self.seconds, 1e-6):.1f} MB/s" \
            if self.bytes else ""
        return f"{self.seconds:.1f}s{rate}; " + "; ".join(m.summary() for m in self.models)


class Syncer:
    """Runs cycles for the configured models; keeps what it learnt between cycles."""

    def __init__(self, names: tuple[str, ...], source: ModelSource, store: LocalStore,
                 downloader: Downloader, server: ModelServerClient | None,
                 settle_seconds: float = 2.0, quarantine_dir: Path | None = None) -> None:
        self.names = names
        self.source = source
        self.store = store
        self.downloader = downloader
        self.server = server
        self.settle_seconds = settle_seconds
        self.quarantine_dir = quarantine_dir     # the model server's record of failed loads
        self._seen: dict[tuple[str, int], str] = {}      # fingerprints listed last cycle
        self._refused: dict[tuple[str, int], str] = {}   # fingerprints found bad
        self._refused_why: dict[tuple[str, int], str] = {}

    def run_once(self) -> CycleReport:
        """One cycle over every model. Raises SourceError/SyncError when the cycle failed."""
        started = time.monotonic()
        report = CycleReport()
        listings = {name: self.source.versions(name) for name in self.names}
        listings = self._settle(listings)
        keep: set[Path] = set()
        for name in self.names:
            report.models.append(self._sync_model(name, listings[name], keep))
        self.store.clean_staging(keep)
        report.seconds = time.monotonic() - started
        return report

    # ------------------------------------------------------------------ steps

    def _needs(self, version: RemoteVersion) -> bool:
        return self.store.fingerprint(version.name, version.dirname) != version.fingerprint

    def _settle(self, listings: dict[str, dict[int, RemoteVersion]]) -> dict[str, dict[int, RemoteVersion]]:
        """Versions without a manifest must list the same twice in a row before we take them."""
        unsettled = {name for name, versions in listings.items()
                     for number, v in versions.items()
                     if v.manifest is None and self._needs(v)
                     and self._seen.get((name, number)) != v.fingerprint}
        for name, versions in listings.items():
            for number, v in versions.items():
                self._seen[(name, number)] = v.fingerprint
        if not unsettled:
            return listings
        time.sleep(self.settle_seconds)
        for name in unsettled:
            fresh = self.source.versions(name)
            for number, v in fresh.items():
                if self._seen.get((name, number)) != v.fingerprint:
                    log.info("%s v%s is still changing in the repository (upload in progress?); "
                             "waiting", name, v.dirname)
            listings[name] = {n: v for n, v in fresh.items()
                              if v.manifest is not None or not self._needs(v)
                              or self._seen.get((name, n)) == v.fingerprint}
            for number, v in fresh.items():
                self._seen[(name, number)] = v.fingerprint
        return listings

    def _sync_model(self, name: str, remote: dict[int, RemoteVersion], keep: set[Path]) -> ModelReport:
        report = ModelReport(name, remote=[str(n) for n in sorted(remote)])
        for number in sorted(remote, reverse=True):
            version = remote[number]
            if not self._needs(version):
                continue
            if self._refused.get((name, number)) == version.fingerprint:
                report.refused.append(str(number))
                report.reasons[str(number)] = self._refused_why.get((name, number), "")
                continue
            problems = version.manifest_problems()
            if problems:
                self._refuse(version, report, "its objects do not match the push manifest: "
                             + "; ".join(problems))
                continue
            staging = self.store.staging_dir(version)
            keep.add(staging)
            try:
                report.bytes += self.downloader.fetch(version, staging)
            except VerificationError as exc:
                keep.discard(staging)
                self._refuse(version, report, str(exc))
                continue
            try:
                check_version(staging)
            except NotAModel as exc:
                keep.discard(staging)
                self._refuse(version, report, f"it is not a model: {exc}")
                continue
            replaced = self.store.install(version, staging)
            keep.discard(staging)
            report.installed.append(str(number))
            log.info("installed %s v%s (%d files, %.1f MB)%s", name, version.dirname,
                     len(version.objects), version.size / 1e6,
                     "; it replaced a different copy of the same version" if replaced else "")
        self._retire(name, remote, report)
        report.repository = {str(n): {"dir": v.dirname, "size": v.size, "files": len(v.objects),
                                      "manifest": v.manifest is not None,
                                      "in_store": not self._needs(v)} for n, v in remote.items()}
        report.local = [str(n) for n in sorted(self.store.versions(name), reverse=True)]
        return report

    def _refuse(self, version: RemoteVersion, report: ModelReport, why: str) -> None:
        self._refused[(version.name, version.version)] = version.fingerprint
        self._refused_why[(version.name, version.version)] = why
        report.refused.append(str(version.version))
        report.reasons[str(version.version)] = why
        serving = sorted(self.store.versions(version.name))
        log.error("REFUSED %s v%s from %s: %s. Local versions %s keep serving; fix or re-push "
                  "the version.", version.name, version.dirname, self.source.describe(), why,
                  ",".join(map(str, serving)) or "(none)")

    def quarantined(self, name: str) -> dict[int, quarantine.Entry]:
        """Local versions of ``name`` the model server failed to load (and that did not change since)."""
        return quarantine.current(self.quarantine_dir, name, self.store.root / name)

    def _retire(self, name: str, remote: dict[int, RemoteVersion], report: ModelReport) -> None:
        local = self.store.versions(name)
        gone = sorted(n for n in local if n not in remote)
        if not gone:
            return
        if not remote:
            log.warning("the repository has no version of %s; keeping local versions %s",
                        name, ",".join(map(str, gone)))
            return
        failed = self.quarantined(name)
        for number in [n for n in gone if n in failed]:
            self.store.retire(name, local[number])
            report.retired.append(str(number))
            gone.remove(number)
            log.info("retired %s v%s: it left the repository and it serves nothing (%s)", name,
                     local[number], failed[number].describe())
        if not gone:
            return
        present = [n for n in remote if n in local and not self._needs(remote[n]) and n not in failed]
        if not present:
            if failed:
                log.info("keeping %s v%s: no version in the repository loads (%s)", name,
                         ",".join(map(str, gone)),
                         "; ".join(f"v{n} {e.describe()}" for n, e in sorted(failed.items())))
            report.waiting.append(f"retire {','.join(map(str, gone))}")
            return
        replacement = max(present)
        states = self.server.states(name) if self.server else None
        if not states or states.get(replacement) != "AVAILABLE":
            state = "unreachable" if states is None else states.get(replacement, "not loaded yet")
            log.info("keeping %s v%s until v%d is AVAILABLE on the model server (now: %s)",
                     name, ",".join(map(str, gone)), replacement, state)
            report.waiting.append(f"retire {','.join(map(str, gone))} after {replacement}")
            return
        for number in gone:
            self.store.retire(name, local[number])
            report.retired.append(str(number))
            log.info("retired %s v%s: it left the repository and v%d is AVAILABLE", name,
                     local[number], replacement)


__all__ = ["CycleReport", "ModelServerClient", "Syncer", "SourceError", "SyncError"]
