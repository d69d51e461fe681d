"""``appliance agent``: the node agent's entry point (run by supervisord on every node).

The agent follows the node's running config (:mod:`appliance.runconfig`): when it changes (an
``up``, a ``reload``, a ``models add``), the membership thread re-points Envoy at once and the
syncer is rebuilt with the new model list and settings -- no restart. It also watches the
node's config FILE: a hand edit is applied like ``appliance reload`` does
(:func:`appliance.control.apply_file_edit`, with the overrides the node runs with), so editing
``cluster.members`` or ``model.name`` in the file is all a user does, on one node or on each
node of a cluster. An invalid edit is logged by key path and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .. import control, rollout, runconfig
from ..config import NodePaths
from ..errors import ApplianceError
from ..logbudget import AccessLogRotator
from ..membership import MembershipWatch
from ..scrapeconfig import write_targets
from ..shadow import AgreementSource, ReportPublisher
from . import build_syncer
from .cycle import Syncer
from .daemon import AgentDaemon
from .fleetwatch import FleetWatch
from .state import StateFile, state_path

log = logging.getLogger(__name__)

#: An edit must rest this long before it is applied: an editor's save is often several writes,
#: milliseconds apart. Short, as a cluster.members edit reaches Envoy only once it is applied.
SETTLE_SECONDS = 0.25


class ConfigFileWatch:
    """Applies the node's config file when it changed and then stayed unchanged for
    :data:`SETTLE_SECONDS`; :meth:`poll` is cheap (one stat) and never blocks: the apply (which
    waits until the node serves) runs on a thread of its own, one at a time."""

    def __init__(self, paths: NodePaths, settle: float = SETTLE_SECONDS) -> None:
        self.paths = paths
        self.settle = settle
        self._running = runconfig.Follower(paths)
        self._seen: tuple | None = ()          # () = not looked yet: check once at start
        self._changed_at: float | None = None
        self._applying: threading.Thread | None = None

    def file(self) -> Path:
        return self._running().source_file(self.paths) or self.paths.config_file

    def poll(self) -> None:
        if self._applying is not None and self._applying.is_alive():
            return
        now = runconfig.file_stamp(self.file())
        if now != self._seen:
            self._seen, self._changed_at = now, time.monotonic()
        elif self._changed_at is not None and time.monotonic() - self._changed_at >= self.settle:
            self._changed_at = None
            self._applying = threading.Thread(target=self._apply, name="apply", daemon=True)
            self._applying.start()

    def _apply(self) -> None:
        try:
            if control.apply_file_edit(self.paths):
                log.info("the edited config file is applied")
        except ApplianceError as exc:
            log.error("applying the edited config file failed: %s", exc)
        except Exception:  # noqa: BLE001 - the watch must outlive a failed apply
            log.exception("applying the edited config file failed")


def build(paths: NodePaths, rotator: list[AccessLogRotator]) -> tuple[Syncer | None, float]:
    """The agent's parts from the running config (called at start and whenever it changes)."""
    config = runconfig.read(paths).config
    rotator[:] = [AccessLogRotator(config, paths)]
    syncing = config.node.role == "serving" and config.s3.type != "none"
    return (build_syncer(config, paths) if syncing else None), float(config.sync.interval_seconds)


def run(paths: NodePaths) -> int:
    """Run the agent daemon until SIGTERM; 1 when it cannot start."""
    rotator: list[AccessLogRotator] = []
    edits = ConfigFileWatch(paths)

    def chores() -> None:
        if rotator:
            rotator[0].check()
        edits.poll()

    settings = FleetWatch(paths)
    stop = threading.Event()
    threading.Thread(target=settings.run, args=(stop,), name="fleet", daemon=True).start()
    threading.Thread(target=ReportPublisher(paths).run, args=(stop,), name="shadow-report", daemon=True).start()
    rollout.AGREEMENT_SOURCE = AgreementSource(paths)   # a rollout's guard reads the shadow's report
    watch = MembershipWatch(paths)

    def tick() -> list[str]:
        addresses = watch.refresh()
        write_targets(runconfig.read(paths).config, paths, addresses)   # Prometheus' file_sd
        return addresses

    daemon = AgentDaemon(lambda: build(paths, rotator), tick=tick,
                         state=StateFile(state_path(paths)),
                         watch_files=lambda: [runconfig.path(paths)], chores=chores)
    daemon.install_signals()
    try:
        daemon.run()
    except ApplianceError as exc:
        log.error("agent cannot start: %s", exc)
        return 1
    finally:
        stop.set()
    return 0
