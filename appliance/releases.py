"""Releases side by side: ``appliance releases``, ``appliance upgrade RELEASE``, ``appliance rollback``.

scripts/install-node.sh installs each version of the code as a complete venv of its own,
``<root>/opt/appliance/releases/<version>-<hash>``, and never touches the one running. The link
``current`` names the release the node runs (the unit, ``/usr/local/bin/appliance`` and the
clients' ``tfserving_venv`` all go through it), ``previous`` the one before. An upgrade stops the
whole node, switches ``current`` and starts the node from the new release's own code, so no two
processes ever run different versions; a rollback is an upgrade to ``previous``. The node's data
(models, object store, config) is outside the releases and shared by all of them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import NodePaths
from .errors import ApplianceError

COMMANDS = ("releases", "upgrade", "rollback")
STAMP = ".appliance-release"     # written last by install-node.sh: the release is complete
UNIT = "appliance.service"


@dataclass(frozen=True)
class Releases:
    """The releases of the node under ``root`` and its ``current`` / ``previous`` links."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "opt/appliance"

    @property
    def dir(self) -> Path:
        return self.home / "releases"

    def installed(self) -> list[str]:
        """Complete releases, oldest install first."""
        stamps = sorted(self.dir.glob(f"*/{STAMP}"), key=lambda p: p.stat().st_mtime)
        return [p.parent.name for p in stamps]

    def _link(self, name: str) -> str | None:
        try:
            return Path(os.readlink(self.home / name)).name
        except OSError:
            return None

    def current(self) -> str | None:
        return self._link("current")

    def previous(self) -> str | None:
        return self._link("previous")

    def appliance(self, release: str | None = None) -> Path:
        """The ``appliance`` command of ``release`` (default: the current one)."""
        return (self.dir / release if release else self.home / "current") / "bin/appliance"

    def check(self, release: str) -> None:
        if not (self.dir / release / STAMP).is_file():
            known = ", ".join(self.installed()) or "none"
            raise ApplianceError(f"no complete release {release!r} in {self.dir} (installed: {known}); "
                                 "scripts/install-node.sh installs one")

    def switch(self, release: str) -> None:
        """``current`` -> ``release`` and ``previous`` -> what was current, each link replaced
        by rename (a reader sees the old link or the new one, never none)."""
        self.check(release)
        was = self.current()
        if was == release:
            return
        if was is not None:
            _replace_link(self.home / "previous", f"releases/{was}")
        _replace_link(self.home / "current", f"releases/{release}")

    def text(self) -> str:
        marks = {self.current(): "current", self.previous(): "previous"}
        return "\n".join(f"{r}  {marks.get(r, '')}".rstrip() for r in self.installed()) or \
            f"no release installed in {self.dir}"


def _replace_link(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _under_systemd(paths: NodePaths) -> bool:
    """The node is the systemd unit of this machine (root install on a systemd host)."""
    return (paths.root == Path("/") and Path("/run/systemd/system").is_dir()
            and (paths.root / "etc/systemd/system" / UNIT).is_file())


def switch_node(paths: NodePaths, release: str, progress: Callable[[str], None] = print) -> None:
    """Run the node on ``release``: stop every process, switch ``current``, start them again.

    Under systemd the unit's restart does the stop and the start (its ExecStart goes through
    ``current``). Otherwise a node that was running is stopped with the old release's code and
    started with the new one's ``appliance up``, which renders every file anew and returns once
    the node serves; a node that was stopped only has its link switched.
    """
    releases = Releases(paths.root)
    releases.check(release)
    if releases.current() == release:
        progress(f"already on release {release}")
        return
    if _under_systemd(paths):
        releases.switch(release)
        _run(["systemctl", "restart", UNIT], "restarting the unit")
        progress(f"switched to release {release}; the unit restarted (systemctl status {UNIT})")
        return
    running = _running(paths)
    started = time.monotonic()
    if running:
        _run([str(releases.appliance()), "--root", str(paths.root), "down"], "stopping the node")
    stopped = time.monotonic()
    releases.switch(release)
    if running:
        _run([str(releases.appliance()), "--root", str(paths.root), "up"], f"starting {release}")
    progress(f"switched to release {release}" + (
        f" and started (down {stopped - started:.1f}s, up {time.monotonic() - stopped:.1f}s)"
        if running else ""))


def _running(paths: NodePaths) -> bool:
    """Whether the node's supervisord runs (a node never started has no run dir to ask)."""
    from .node import Node

    try:
        return Node.from_run_dir(paths).supervisor.is_running()
    except ApplianceError:
        return False


def rollback_release(paths: NodePaths) -> str:
    """The release a rollback goes back to."""
    previous = Releases(paths.root).previous()
    if previous is None:
        raise ApplianceError("no previous release to roll back to (nothing was upgraded here)")
    return previous


def release_env() -> dict[str, str]:
    """The environment for a release's processes: without PYTHONPATH (a checkout on it would
    shadow the release's own code), run from / (``python -m`` puts the cwd first on sys.path)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(cmd: list[str], what: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=release_env(),
                            cwd="/")
    if result.returncode != 0:
        raise ApplianceError(f"{what} failed (exit {result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("releases", help="installed releases of the code; which is current, previous")
    upgrade = sub.add_parser("upgrade", help="stop the node, switch to an installed release, start it")
    upgrade.add_argument("release", help="a release installed by scripts/install-node.sh")
    sub.add_parser("rollback", help="the same, back to the previous release")


def dispatch(args: argparse.Namespace, paths: NodePaths) -> int:
    if args.command == "releases":
        print(Releases(paths.root).text())
    else:
        switch_node(paths, args.release if args.command == "upgrade" else rollback_release(paths))
    return 0
