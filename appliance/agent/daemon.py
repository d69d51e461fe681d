"""The agent daemon: a sync cycle every ``sync.interval.seconds``, forever (Patroni's daemon shape),
and membership on its own thread.

Membership (Envoy's EDS files from ``cluster.members`` / ``cluster.dns``) never waits for the
model repository: a hung object store may hold a sync cycle for as long as its calls' deadlines
allow (:func:`appliance.sources.s3.call_limits`), but a ``cluster.members`` edit reaches Envoy
within :data:`WATCH_SECONDS` -- the membership thread looks at the config files' stamps twice a
second and refreshes at once when one changed (and once per interval anyway, for DNS).

A changed config file also rebuilds the syncer (as SIGHUP does) and starts a cycle at once, so a
model added to ``model.name`` by ``appliance up`` is fetched without waiting an interval.
SIGTERM/SIGINT stop the daemon after the current step. Each cycle logs one status line, except
that a repository failing cycle after cycle is logged when the failure starts, when its cause
changes and at 2, 4, 8, ... failures in a row, and once more when it recovers. A failed cycle is
retried after one interval (no growing backoff: the first cycle after the repository returns
is at most one interval late), and never touches what is already being served: the store only
ever changes by whole-version renames.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Callable, Iterable

from ..errors import ApplianceError
from ..runconfig import file_stamp
from .cycle import Syncer
from .state import StateFile

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5     # how often the membership thread looks at the config files
CHORE_SECONDS = 0.1     # how often the chores thread runs (the access log's size: one stat)
QUIET_LOG_SECONDS = 600.0   # a failure that keeps repeating is still logged this often


class AgentDaemon:
    """Runs :class:`Syncer` cycles; ``build`` is the composition root, called again on SIGHUP
    and whenever one of the files ``watch_files()`` names changes."""

    def __init__(self, build: Callable[[], tuple[Syncer | None, float]],
                 tick: Callable[[], object] | None = None, state: StateFile | None = None,
                 watch_files: Callable[[], Iterable[Path]] = tuple,
                 chores: Callable[[], object] | None = None) -> None:
        self._build = build
        self._tick = tick          # membership refresh, on its own thread
        self._state = state        # agent-state.json for the logviewer, rewritten every cycle
        self._state_lock = threading.Lock()   # both threads report to it
        self._watch_files = watch_files
        self._chores = chores      # small periodic work (the access log's rotation), own thread
        self._chore_error = ""
        self._interval = 10.0
        self._member_error = ""
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

    def _report(self, method: str, *args: object) -> None:
        if self._state is not None:
            with self._state_lock:
                getattr(self._state, method)(*args)

    # ------------------------------------------------------------------ membership thread

    def _refresh_members(self) -> None:
        """One membership refresh; an error is logged once until it changes or goes away."""
        assert self._tick is not None
        try:
            members = self._tick()
        except Exception as exc:  # noqa: BLE001 - membership must outlive a bad edit
            if str(exc) != self._member_error:
                log.error("membership refresh failed, Envoy keeps its endpoints: %s", exc)
            self._member_error = str(exc)
            self._report("membership", None, str(exc))
            return
        if self._member_error:
            log.info("membership refresh works again")
            self._member_error = ""
        self._report("membership", members)

    def _watch_membership(self, stamp: tuple) -> None:
        due = time.monotonic() + self._interval
        while not self._stop.wait(WATCH_SECONDS):
            try:
                now = _stamp(self._watch_files())
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a bad file
                log.debug("cannot look at the config files: %s", exc)
                now = stamp
            if now != stamp:
                stamp = now
                due = 0.0
                log.info("config changed: refreshing membership now; the syncer is rebuilt")
                self._reload.set()
                self._stop_wait.set()
            if time.monotonic() >= due:
                if self._tick is not None:
                    self._refresh_members()
                due = time.monotonic() + self._interval

    def _run_chores(self) -> None:
        """Every CHORE_SECONDS: a log growing at 20 MB/s passes its limit by 2 MB at most."""
        assert self._chores is not None
        while not self._stop.wait(CHORE_SECONDS):
            try:
                self._chores()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a failing chore
                if str(exc) != self._chore_error:
                    log.error("periodic chore failed: %s", exc)
                self._chore_error = str(exc)
            else:
                self._chore_error = ""

    # ------------------------------------------------------------------ sync loop

    def run(self) -> None:
        syncer, interval = self._build()
        self._interval = interval
        failures = 0
        failing = _FailureLog()
        cycle = 0
        log.info("agent started: %s every %.0fs", _what(syncer), interval)
        watcher = None
        chores = None
        if self._chores is not None:
            chores = threading.Thread(target=self._run_chores, name="chores", daemon=True)
            chores.start()
        files = list(self._watch_files())
        if self._tick is not None or files:
            stamp = _stamp(files)
            if self._tick is not None:
                self._refresh_members()
            watcher = threading.Thread(target=self._watch_membership, args=(stamp,),
                                       name="membership", daemon=True)
            watcher.start()
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                try:
                    syncer, interval = self._build()
                    self._interval = interval
                    log.info("config reloaded: %s every %.0fs", _what(syncer), interval)
                except ApplianceError as exc:
                    log.error("config reload failed, keeping the previous config: %s", exc)
            cycle += 1
            started, wall = time.monotonic(), time.time()
            if syncer is None:
                self._report("idle", cycle, interval)
                self._sleep(interval)
                continue
            self._report("cycle_started", cycle, syncer, interval)
            try:
                report = syncer.run_once()
            except Exception as exc:  # noqa: BLE001 - one bad cycle never kills the agent
                failures += 1
                expected = isinstance(exc, ApplianceError)
                cause = str(exc) if expected else f"unexpected error: {exc!r}"
                if failing.worth_logging(cause, failures):
                    (log.error if expected else log.exception)(
                        "cycle %d FAILED after %.1fs: %s; serving what is installed; retry in "
                        "%.0fs (failure %d in a row%s)", cycle, time.monotonic() - started, cause,
                        interval, failures, failing.quiet_note())
                self._report("cycle_failed", cycle, wall, cause, failures, interval)
            else:
                if failures:
                    log.info("the repository answers again: cycle %d is the first good one after "
                             "%d failed in %.0fs", cycle, failures, failing.seconds())
                failures = 0
                failing = _FailureLog()
                status = "refused a version" if report.refused else "ok"
                log.info("cycle %d %s in %s; next in %.0fs", cycle, status, report.line(), interval)
                self._report("cycle_done", cycle, wall, report, failures, interval)
            self._sleep(interval)
        for thread in (watcher, chores):
            if thread is not None:
                thread.join(5)
        log.info("agent stopped")

    def _sleep(self, seconds: float) -> None:
        self._stop_wait.clear()
        if not self._stop.is_set() and not self._reload.is_set():
            self._stop_wait.wait(seconds)


class _FailureLog:
    """Decides which of a run of failed cycles get a log line, so an outage does not flood it."""

    def __init__(self) -> None:
        self.since = time.monotonic()
        self._cause = ""
        self._logged_at = 0.0
        self._skipped = 0

    def worth_logging(self, cause: str, failures: int) -> bool:
        now = time.monotonic()
        if failures == 1:
            self.since = now
        if (cause != self._cause or failures & (failures - 1) == 0
                or now - self._logged_at >= QUIET_LOG_SECONDS):
            self._cause, self._logged_at = cause, now
            return True
        self._skipped += 1
        return False

    def quiet_note(self) -> str:
        note = f"; {self._skipped} like it not logged" if self._skipped else ""
        self._skipped = 0
        return note

    def seconds(self) -> float:
        return time.monotonic() - self.since


def _stamp(files: Iterable[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    return tuple(file_stamp(path) for path in files)


def _what(syncer: Syncer | None) -> str:
    if syncer is None:
        return "watching cluster membership (models on local disk, nothing to sync)"
    return f"syncing {','.join(syncer.names)} from {syncer.source.describe()} and watching membership"
