"""The agent's part of the cluster settings (:mod:`appliance.fleet`): poll, apply, report.

Every :data:`~appliance.fleet.POLL_SECONDS` the agent reads the cluster settings document; a
revision other than the one the node applied last is applied through
:func:`appliance.control.apply_fleet` (a refused one is logged with its key paths once and
retried only when the document changes). The node's report -- the revision applied, why one
was refused, and while a rollout runs its model server's per-version counts
(:mod:`modelserver.rollout`) -- is written to ``.appliance/nodes/<node.address>.json`` after
each apply, every :data:`REPORT_SECONDS` while a rollout runs and every
:data:`IDLE_REPORT_SECONDS` otherwise. The agent whose node runs a rollout's controller then
gives it a tick (:mod:`appliance.rollout`).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from modelserver.rollout import COUNTS_PATH

from .. import control, fleet, rollout, runconfig
from ..config import NodePaths
from ..errors import ApplianceError, ConfigError
from ..localhttp import get_json
from ..modelstatus import local_rest_base

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.5
IDLE_REPORT_SECONDS = 10.0


class FleetWatch:
    """Runs on two threads of its own (:meth:`run`), so a slow store never holds up the sync
    cycle or membership, and reports and rollout ticks never delay the next poll."""

    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths
        self._running = runconfig.Follower(paths)
        self._built_for: object = None
        self._fleet: fleet.Fleet | None = None
        self._refused: tuple[int, str] | None = None     # revision, why
        self._reported_at = 0.0
        self._report_now = threading.Event()
        self._store_lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._loop, args=(stop, REPORT_SECONDS, self.report, "report"),
                         name="fleet-report", daemon=True).start()
        self._loop(stop, fleet.POLL_SECONDS, self.poll, "poll")

    def _loop(self, stop: threading.Event, seconds: float, work, what: str) -> None:
        error = ""
        while not stop.wait(seconds):
            try:
                work()
                if error:
                    log.info("cluster settings: the %s works again", what)
                error = ""
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a store outage
                if str(exc) != error:
                    log.error("cluster settings: the %s failed (retrying): %s", what, exc)
                error = str(exc)

    def _store(self) -> tuple[fleet.Fleet, runconfig.RunningConfig]:
        with self._store_lock:
            running = self._running()
            if running is not self._built_for or self._fleet is None:
                self._fleet = fleet.Fleet.of_node(running.config, call_seconds=2.0, paths=self.paths)
                self._built_for = running
            return self._fleet, running

    def poll(self) -> None:
        """Apply a new revision of the document (a refused one is not tried again)."""
        store, _ = self._store()
        settings = store.read()
        if settings.revision != fleet.applied(self.paths).revision and (
                self._refused is None or self._refused[0] != settings.revision):
            if self._apply(settings):
                self._report_now.set()

    def report(self) -> None:
        """The node's report, when due; a tick of the rollouts this node controls."""
        store, running = self._store()
        active = any(entry.get("rollout.version") for entry in fleet.applied(self.paths).models.values())
        now = time.monotonic()
        if self._report_now.is_set() or now - self._reported_at >= (REPORT_SECONDS if active else IDLE_REPORT_SECONDS):
            self._report_now.clear()
            self._report(store, running, active)
            self._reported_at = now
        if active:
            rollout.tick(store, running.config)

    def _apply(self, settings: fleet.FleetSettings) -> bool:
        try:
            did = control.apply_fleet(self.paths, settings)
        except ConfigError as exc:
            why = "; ".join(f"{key}: {problem}" for key, problem in exc.problems)
            log.error("cluster settings revision %d refused, nothing changed: %s", settings.revision, why)
            self._refused = (settings.revision, why)
            return True
        except ApplianceError as exc:
            log.error("cluster settings revision %d not applied (retrying): %s", settings.revision, exc)
            return False
        self._refused = None
        log.info("cluster settings revision %d applied%s (%s)", settings.revision,
                 "" if did else ": nothing changed on this node", settings.why or "no reason given")
        return True

    def _report(self, store: fleet.Fleet, running: runconfig.RunningConfig, active: bool) -> None:
        config = running.config
        doc = {"node": config.node.address, "role": config.node.role,
               "revision": fleet.applied(self.paths).revision, "time": time.time(),
               "error": self._refused[1] if self._refused else ""}
        if active and config.node.role == "serving":
            code, counts = get_json(local_rest_base(config) + COUNTS_PATH, 1.0)
            doc["counts"] = counts if code == 200 else {}
        store.write_object(fleet.node_report_key(config.node.address), json.dumps(doc).encode())
