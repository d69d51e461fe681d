"""The node's local model store as the agent sees it: staging, atomic install, retirement.

The model server polls ``<store>/<name>/`` for numeric version directories. Everything the agent
writes first goes to ``<store>/.staging/`` (same filesystem, hidden from the model server, which
only looks inside model directories) and reaches ``<store>/<name>/<version>`` by one
``rename``: the model server sees a whole version or none. Retiring works the same way in
reverse: rename out of sight first, delete afterwards.

``.sync-state.json`` remembers the fingerprint of each version the agent installed, so a changed
version in the repository is noticed and an unchanged one is not downloaded again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from modelserver.atomic import write_atomic
from ..sources.base import RemoteVersion, parse_version

log = logging.getLogger(__name__)

STAGING = ".staging"
STATE = ".sync-state.json"


class LocalStore:
    """``root`` is the store the model server reads (``<node root>/data/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_root = root / STAGING
        self.state_path = root / STATE

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, dict[str, str]]:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {str(k): dict(v) for k, v in doc.get("installed", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save(self, state: dict[str, dict[str, str]]) -> None:
        write_atomic(self.state_path, json.dumps({"installed": state}, indent=1, sort_keys=True))

    def fingerprint(self, name: str, dirname: str) -> str | None:
        """Fingerprint of the installed version, or None if the agent did not install it."""
        if not (self.root / name / dirname).is_dir():
            return None
        return self._state().get(name, {}).get(dirname)

    # ------------------------------------------------------------------ versions

    def versions(self, name: str) -> dict[int, str]:
        """Installed version number -> directory name."""
        out: dict[int, str] = {}
        try:
            entries = list((self.root / name).iterdir())
        except OSError:
            return out
        for entry in entries:
            number = parse_version(entry.name)
            if number is not None and entry.is_dir():
                out[number] = entry.name
        return out

    def staging_dir(self, version: RemoteVersion) -> Path:
        """Per content: a changed version gets a fresh dir, an interrupted one is resumed."""
        return self.staging_root / f"{version.name}-{version.dirname}-{version.fingerprint}"

    def clean_staging(self, keep: set[Path]) -> None:
        """Remove staging dirs nobody wants any more (old content, retired versions)."""
        try:
            entries = list(self.staging_root.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry not in keep:
                log.info("removing stale staging dir %s", entry.name)
                shutil.rmtree(entry, ignore_errors=True)

    def install(self, version: RemoteVersion, staged: Path) -> bool:
        """Rename the staged version into place; True when it replaced a different copy."""
        target = self.root / version.name / version.dirname
        target.parent.mkdir(parents=True, exist_ok=True)
        replaced = False
        if target.exists():
            # Same version number, new content: swap it. The model server keeps the copy it
            # loaded until the version is unloaded (TF Serving does not reload a version).
            aside = self.staging_root / f"replaced-{version.name}-{version.dirname}-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(target, aside)
            os.rename(staged, target)
            shutil.rmtree(aside, ignore_errors=True)
            replaced = True
        else:
            os.rename(staged, target)
        _fsync_dir(target.parent)
        state = self._state()
        state.setdefault(version.name, {})[version.dirname] = version.fingerprint
        self._save(state)
        return replaced

    def retire(self, name: str, dirname: str) -> None:
        """Take a version out of the model server's sight at once, then delete it."""
        target = self.root / name / dirname
        aside = self.staging_root / f"retired-{name}-{dirname}-{os.getpid()}"
        self.staging_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        _fsync_dir(target.parent)
        shutil.rmtree(aside, ignore_errors=True)
        state = self._state()
        state.get(name, {}).pop(dirname, None)
        self._save(state)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
