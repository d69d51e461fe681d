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

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.5
IDLE_REPORT_SECONDS = 10.0


class FleetWatch:
    """Runs on a thread of its own (:meth:`run`), so a slow store never holds up the sync cycle
    or membership."""

    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths
        self._running = runconfig.Follower(paths)
        self._built_for: object = None
        self._fleet: fleet.Fleet | None = None
        self._refused: tuple[int, str] | None = None     # revision, why
        self._reported_at = 0.0
        self._ticked_at = 0.0
        self._error = ""

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(fleet.POLL_SECONDS):
            try:
                self.poll()
                if self._error:
                    log.info("the cluster settings can be read again")
                self._error = ""
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a store outage
                if str(exc) != self._error:
                    log.error("cannot read or apply the cluster settings (retrying): %s", exc)
                self._error = str(exc)

    def _store(self) -> tuple[fleet.Fleet, runconfig.RunningConfig]:
        running = self._running()
        if running is not self._built_for or self._fleet is None:
            self._fleet = fleet.Fleet.of_node(running.config, call_seconds=2.0, paths=self.paths)
            self._built_for = running
        return self._fleet, running

    def poll(self) -> None:
        store, running = self._store()
        settings = store.read()
        applied = fleet.applied(self.paths)
        changed = False
        if settings.revision != applied.revision and (
                self._refused is None or self._refused[0] != settings.revision):
            changed = self._apply(settings)
        now = time.monotonic()
        active = any(entry.get("rollout.version") for entry in settings.models.values())
        if changed or now - self._reported_at >= (REPORT_SECONDS if active else IDLE_REPORT_SECONDS):
            self._report(store, running, active)
            self._reported_at = now
        if active and now - self._ticked_at >= rollout.TICK_SECONDS:
            rollout.tick(store, running.config)
            self._ticked_at = now

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
            code, counts = get_json(f"http://{config.connect_address()}:{config.serving.rest_port}"
                                    + COUNTS_PATH, 1.0)
            doc["counts"] = counts if code == 200 else {}
        store.write_object(fleet.node_report_key(config.node.address), json.dumps(doc).encode())
