"""The agent's state file: what its last cycle saw and did, for the logviewer and for humans.

The logviewer shows the repository's contents and the sync state without ever contacting the
repository itself (a page request must not cost an S3 listing, nor need credentials): the agent
already lists the repository every cycle, so it leaves what it learnt in
``<root>/var/lib/appliance/run/agent-state.json`` (mode 0644, written atomically, never a
credential). It is rewritten when a cycle starts (``syncing_since``) and when it ends, so a
reader can tell a long download from a stuck or dead agent: ``next_cycle_at`` in the past by
more than a cycle means nobody is writing the file any more.

Format ``appliance-agent-state/1``::

    written_at, pid, interval_seconds, cycle, syncing_since, next_cycle_at  (epoch seconds)
    source            where the repository is (``describe()``: no credentials), or null
    last_cycle        {number, started_at, finished_at, seconds, bytes,
                       result: "ok" | "refused" | "failed", cause, failures_in_a_row}
    last_ok_at        when a cycle last completed without failing
    models            {name: {repository: [{version, dir, size, files, manifest, status, reason}],
                              local, installed, refused: {version: reason}, retired, waiting}}
                      from the last cycle that completed (``models_cycle``); a failed cycle
                      keeps the previous picture. ``status`` is "in store", "installed"
                      (this cycle), "refused" or "pending" (not downloaded yet).
    membership        {members, at, error}: the serving nodes the agent last pointed Envoy at
    totals            {ok, refused, failed, bytes}: cycles by result and bytes downloaded since
                      the agent started (counters for the node's metrics page)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelserver.atomic import write_atomic
from modelserver.core.platforms import is_version_name

if TYPE_CHECKING:
    from ..config import NodePaths
    from .cycle import CycleReport, Syncer

log = logging.getLogger(__name__)

STATE_FILE = "agent-state.json"
FORMAT = "appliance-agent-state/1"
MAX_BYTES = 8 << 20      # a reader never loads more than this


def state_path(paths: "NodePaths") -> Path:
    return paths.run / STATE_FILE


def _repository(model: Any) -> list[dict]:
    """One model's repository versions, newest first, each with what the agent made of it."""
    out = []
    for number in sorted(model.repository, key=int, reverse=True):
        seen = model.repository[number]
        if number in model.refused:
            status = "refused"
        elif number in model.installed:
            status = "installed"
        elif seen.get("in_store"):
            status = "in store"
        else:
            status = "pending"
        out.append({"version": int(number), "dir": seen.get("dir", number),
                    "size": seen.get("size", 0), "files": seen.get("files", 0),
                    "manifest": bool(seen.get("manifest")), "status": status,
                    "reason": model.reasons.get(number, "") if status == "refused" else ""})
    return out


class StateFile:
    """Keeps the document between cycles and rewrites the file at each step of the daemon.

    Writing is best effort: a full disk or a read-only run dir is logged once and never stops
    the agent (the file is for display; serving does not depend on it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "format": FORMAT, "pid": os.getpid(), "written_at": None, "interval_seconds": None,
            "cycle": 0, "syncing_since": None, "next_cycle_at": None, "source": None,
            "last_cycle": None, "last_ok_at": None, "models_cycle": None, "models": {},
            "membership": None, "totals": {"ok": 0, "refused": 0, "failed": 0, "bytes": 0}}
        self._write_failed = False

    # ------------------------------------------------------------------ the daemon's steps

    def membership(self, members: object, error: str = "") -> None:
        """After the membership refresh (``members`` is what it returned); written at once, as
        membership runs on its own schedule, not the cycle's."""
        previous = (self.doc["membership"] or {}).get("members", [])
        addresses = [str(a) for a in members] if isinstance(members, (list, tuple)) else previous
        self.doc["membership"] = {"members": addresses, "at": time.time(), "error": error}
        self._write()

    def cycle_started(self, cycle: int, syncer: "Syncer", interval: float) -> None:
        self.doc.update(cycle=cycle, interval_seconds=interval, source=syncer.source.describe(),
                        syncing_since=time.time())
        self._write()

    def cycle_done(self, cycle: int, started: float, report: "CycleReport", failures: int,
                   delay: float) -> None:
        """A cycle completed (``started`` is its wall-clock start)."""
        now = time.time()
        self.doc["models"] = {m.name: {"repository": _repository(m), "local": list(m.local),
                                       "installed": list(m.installed),
                                       "refused": {v: m.reasons.get(v, "") for v in m.refused},
                                       "retired": list(m.retired), "waiting": list(m.waiting)}
                              for m in report.models}
        self.doc.update(models_cycle=cycle, last_ok_at=now)
        self._finish(cycle, started, now, "refused" if report.refused else "ok", "", failures,
                     delay, report.bytes)

    def cycle_failed(self, cycle: int, started: float, cause: str, failures: int,
                     delay: float) -> None:
        self._finish(cycle, started, time.time(), "failed", cause, failures, delay, 0)

    def idle(self, cycle: int, interval: float) -> None:
        """A cycle without syncing (no repository on this node): only membership counts."""
        self.doc.update(cycle=cycle, interval_seconds=interval, source=None, syncing_since=None,
                        models={}, models_cycle=None, last_cycle=None,
                        next_cycle_at=time.time() + interval)
        self._write()

    # ------------------------------------------------------------------ internals

    def _finish(self, cycle: int, started: float, now: float, result: str, cause: str,
                failures: int, delay: float, size: int) -> None:
        self.doc["last_cycle"] = {"number": cycle, "started_at": started, "finished_at": now,
                                  "seconds": round(now - started, 3), "bytes": size,
                                  "result": result, "cause": cause[:2000],
                                  "failures_in_a_row": failures}
        self.doc.update(syncing_since=None, next_cycle_at=now + delay)
        totals = self.doc["totals"]
        totals[result] += 1
        totals["bytes"] += size
        self._write()

    def _write(self) -> None:
        self.doc["written_at"] = time.time()
        try:
            write_atomic(self.path, json.dumps(self.doc, indent=1, sort_keys=True) + "\n",
                         mode=0o644)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot write the agent state file %s: %s (the logviewer will show "
                            "the agent's state as stale)", self.path, exc)
            self._write_failed = True


def version_notes(paths: "NodePaths", store: Path, name: str) -> dict[int, str]:
    """What is wrong with versions of ``name`` on this node, in plain words, by version number.

    Versions the model server quarantined (``quarantined since <time>: <reason>``, from its
    record) and versions the agent refused in its last cycle (``refused by the agent: <reason>``,
    from the state file). ``appliance status``, ``models ls`` and ``doctor`` show these.
    """
    from modelserver import quarantine

    notes = {n: e.describe() for n, e in quarantine.current(paths.quarantine, name, store / name).items()}
    try:
        doc = read_state(state_path(paths)) or {}
    except ValueError:
        doc = {}
    model = (doc.get("models") or {}).get(name) or {}
    for version, why in (model.get("refused") or {}).items():
        if is_version_name(str(version)):
            notes.setdefault(int(version), f"refused by the agent: {why}")
    return notes


def read_state(path: Path) -> dict[str, Any] | None:
    """The state document, or None when the agent has not written one. Raises ValueError when
    the file is there but unreadable as a state document (too big, not JSON, other format)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ValueError(f"{path} is larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path} is not JSON (written by something other than the agent?)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an agent state file of format {FORMAT}")
    return doc
