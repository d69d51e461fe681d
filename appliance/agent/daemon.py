"""The agent daemon: a sync cycle every ``sync.interval.seconds``, forever (Patroni's daemon shape).

SIGHUP re-reads the config and rebuilds everything at the next cycle; SIGTERM/SIGINT stop it
after the current step. Each cycle logs exactly one status line. A failed cycle is logged with
its cause and retried with exponential backoff (capped), and never touches what is already
being served: the store only ever changes by whole-version renames.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Callable

from ..errors import ApplianceError
from .cycle import Syncer
from .state import StateFile

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


class AgentDaemon:
    """Runs :class:`Syncer` cycles; ``build`` is the composition root, called again on SIGHUP."""

    def __init__(self, build: Callable[[], tuple[Syncer | None, float]],
                 tick: Callable[[], object] | None = None, state: StateFile | None = None) -> None:
        self._build = build
        self._tick = tick          # membership refresh, run before every sync
        self._state = state        # agent-state.json for the logviewer, rewritten every cycle
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._stop_wait = threading.Event()   # wakes the sleep between cycles early

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._stop_wait.set()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self._stop_wait.set()

    def stop(self) -> None:
        self._on_term(signal.SIGTERM, None)

    def run(self) -> None:
        syncer, interval = self._build()
        failures = 0
        cycle = 0
        log.info("agent started: %s every %.0fs", _what(syncer), interval)
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                try:
                    syncer, interval = self._build()
                    log.info("config reloaded: %s every %.0fs", _what(syncer), interval)
                except ApplianceError as exc:
                    log.error("config reload failed, keeping the previous config: %s", exc)
            cycle += 1
            started, wall = time.monotonic(), time.time()
            if self._tick is not None:
                try:
                    members = self._tick()
                except Exception as exc:  # noqa: BLE001 - membership must not stop syncing
                    log.error("cycle %d: membership refresh failed: %s", cycle, exc)
                    if self._state:
                        self._state.membership(None, str(exc))
                else:
                    if self._state:
                        self._state.membership(members)
            if syncer is None:
                if self._state:
                    self._state.idle(cycle, interval)
                self._stop_wait.clear()
                if not self._stop.is_set() and not self._reload.is_set():
                    self._stop_wait.wait(interval)
                continue
            if self._state:
                self._state.cycle_started(cycle, syncer, interval)
            try:
                report = syncer.run_once()
            except ApplianceError as exc:
                failures += 1
                delay = min(interval * 2 ** (failures - 1), max(MAX_BACKOFF, interval))
                log.error("cycle %d FAILED after %.1fs: %s; serving what is installed; retry in "
                          "%.0fs (failure %d in a row)", cycle, time.monotonic() - started, exc,
                          delay, failures)
                if self._state:
                    self._state.cycle_failed(cycle, wall, str(exc), failures, delay)
            except Exception as exc:  # noqa: BLE001 - one bad cycle never kills the agent
                failures += 1
                delay = min(interval * 2 ** (failures - 1), max(MAX_BACKOFF, interval))
                log.exception("cycle %d FAILED with an unexpected error: %s; retry in %.0fs",
                              cycle, exc, delay)
                if self._state:
                    self._state.cycle_failed(cycle, wall, f"unexpected error: {exc!r}", failures,
                                             delay)
            else:
                failures = 0
                delay = interval
                status = "refused a version" if report.refused else "ok"
                log.info("cycle %d %s in %s; next in %.0fs", cycle, status, report.line(), delay)
                if self._state:
                    self._state.cycle_done(cycle, wall, report, failures, delay)
            self._stop_wait.clear()
            if not self._stop.is_set() and not self._reload.is_set():
                self._stop_wait.wait(delay)
        log.info("agent stopped")


def _what(syncer: Syncer | None) -> str:
    if syncer is None:
        return "watching cluster membership (models on local disk, nothing to sync)"
    return f"syncing {','.join(syncer.names)} from {syncer.source.describe()} and watching membership"
