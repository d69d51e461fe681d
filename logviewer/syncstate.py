"""The model repository's contents and the agent's sync state, as the agent last reported them.

Read from the agent's state file (:mod:`appliance.agent.state`) on each page view. A page never
contacts the repository itself: a click must not cost an S3 listing, the logviewer needs no
repository credentials, and the agent lists the repository every cycle anyway. What the page
must make visible instead is how old that report is, so a stuck or dead agent shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.agent.state import read_state, state_path
from appliance.config import Config, NodePaths
from appliance.supervision import pid_alive

MIN_GRACE = 60.0   # seconds past the announced next cycle before the report counts as overdue


@dataclass
class SyncState:
    enabled: bool                 # s3.type is not none: there is a repository to sync from
    path: Path
    doc: dict[str, Any] | None = None
    error: str = ""               # the file is there but unreadable
    agent_log: bool = False       # agent.log exists in the log root (worth a link)
    now: float = field(default_factory=time.time)

    @property
    def present(self) -> bool:
        return self.doc is not None

    def _num(self, key: str) -> float | None:
        value = (self.doc or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def written_at(self) -> float | None:
        return self._num("written_at")

    @property
    def age(self) -> float | None:
        return None if self.written_at is None else max(0.0, self.now - self.written_at)

    @property
    def syncing_for(self) -> float | None:
        since = self._num("syncing_since")
        return None if since is None else max(0.0, self.now - since)

    @property
    def due_in(self) -> float | None:
        """Seconds until the next cycle the agent announced (negative: it is late)."""
        due = self._num("next_cycle_at")
        return None if due is None else due - self.now

    @property
    def overdue(self) -> bool:
        """Not syncing and the announced next cycle is well past: nobody writes the file."""
        if self.doc is None or self.syncing_for is not None or self.due_in is None:
            return False
        interval = self._num("interval_seconds") or 0.0
        return -self.due_in > max(MIN_GRACE, 2 * interval)

    @property
    def pid(self) -> int | None:
        pid = (self.doc or {}).get("pid")
        return pid if isinstance(pid, int) and pid > 0 else None

    @property
    def agent_gone(self) -> bool:
        return self.pid is not None and not pid_alive(self.pid)

    @property
    def last_cycle(self) -> dict[str, Any]:
        value = (self.doc or {}).get("last_cycle")
        return value if isinstance(value, dict) else {}

    @property
    def members(self) -> dict[str, Any]:
        value = (self.doc or {}).get("membership")
        return value if isinstance(value, dict) else {}

    def model(self, name: str) -> dict[str, Any] | None:
        """What the last completed cycle saw of ``name`` (None: not in the report)."""
        models = (self.doc or {}).get("models")
        entry = models.get(name) if isinstance(models, dict) else None
        if not isinstance(entry, dict):
            return None
        repo = entry.get("repository")
        entry = dict(entry, repository=[v for v in repo if isinstance(v, dict)]
                     if isinstance(repo, list) else [])
        return entry


def load(config: Config, paths: NodePaths) -> SyncState:
    state = SyncState(config.s3.type != "none", state_path(paths),
                      agent_log=(paths.logs / "agent.log").is_file())
    try:
        state.doc = read_state(state.path)
    except ValueError as exc:
        state.error = str(exc)
    return state
