"""The running config: what the node's processes run with, and where it came from.

One file in the run dir, written by :func:`publish` (only ever by ``appliance.control`` and a
first ``up``) and read by :func:`read` -- by every program of the node: the CLI's node commands,
the agent (sync and membership) and the logviewer. It holds the config file that was read, the
``--set`` overrides given with it and the validated flat values
(:func:`appliance.config.effective_values`, secrets in the clear: the file is 0600). No other
module knows the file's name.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelserver.atomic import write_atomic
from .config import Config, NodePaths, build, effective_values, load_config
from .errors import ApplianceError, ConfigError

_NAME = "running-config.yaml"
#: libyaml's loader where PyYAML has it: the file is read at every change a node applies
#: (a rollout step), and the pure-Python loader takes ~0.2 s for it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class NotStarted(ApplianceError):
    """No node was ever started under this root (there is no running config)."""


@dataclass(frozen=True)
class RunningConfig:
    """The config the node runs with, and the file + overrides it was built from."""

    config: Config
    config_file: Path | None
    overrides: tuple[str, ...]
    values: dict[str, Any]

    def source_file(self, paths: NodePaths) -> Path | None:
        """The file a re-read takes: the one recorded, else the node's default when it exists."""
        if self.config_file is not None:
            return self.config_file
        return paths.config_file if paths.config_file.exists() else None

    def reread(self, paths: NodePaths) -> Config:
        """The config file as it is now, with the recorded overrides (raises ConfigError)."""
        return load_config(self.source_file(paths), list(self.overrides))


def path(paths: NodePaths) -> Path:
    """The running config's file (for stamps and messages; read it through :func:`read`)."""
    return paths.run / _NAME


def publish(paths: NodePaths, config: Config, config_file: Path | None,
            overrides: list[str] | tuple[str, ...]) -> bool:
    """Record ``config`` as the running config, atomically; True when it changed."""
    doc = {"config_file": str(config_file) if config_file else None,
           "overrides": [str(o) for o in overrides],
           "values": effective_values(config, mask_secrets=False)}
    paths.run.mkdir(parents=True, exist_ok=True)
    return write_atomic(path(paths), yaml.safe_dump(doc, sort_keys=False), mode=0o600)


def read(paths: NodePaths) -> RunningConfig:
    """The running config; :class:`NotStarted` when no node was started under ``paths``."""
    where = path(paths)
    try:
        doc = yaml.load(where.read_text(encoding="utf-8"), Loader=_LOADER) or {}
    except FileNotFoundError:
        raise NotStarted(f"no node was started under {paths.root} ({where} is missing)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ApplianceError(f"cannot read the running config {where}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise ApplianceError(f"cannot read the running config {where}: not what publish() writes")
    try:
        config = build(doc["values"])
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(where)) from None
    recorded = doc.get("config_file")
    return RunningConfig(config, Path(recorded) if recorded else None,
                         tuple(str(o) for o in doc.get("overrides") or []), doc.get("values"))


def file_stamp(file: Path) -> tuple[int, int, int] | None:
    """What identifies a file's current content cheaply (an atomic rewrite changes the inode);
    None when it is missing."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def stamp(paths: NodePaths) -> tuple[int, int, int] | None:
    """The running config's :func:`file_stamp`."""
    return file_stamp(path(paths))


class Follower:
    """The running config, re-read only when its file changed: cheap enough to call per request.

    A file that cannot be read (mid-upgrade, removed) keeps the last good one.
    """

    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._current: RunningConfig | None = None

    def __call__(self) -> RunningConfig:
        now = stamp(self.paths)
        with self._lock:
            if self._current is None or (now is not None and now != self._stamp):
                try:
                    self._current = read(self.paths)
                    self._stamp = now
                except ApplianceError:
                    if self._current is None:
                        raise
            return self._current
