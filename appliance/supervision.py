"""Talk to the node's supervisord over its XML-RPC unix socket.

supervisord owns the processes (it forks, restarts and stops them); the appliance never forks
or kills a server itself, it asks supervisord. Process state names are supervisord's:
STOPPED -> STARTING -> RUNNING (after startsecs) -> STOPPING -> STOPPED, with BACKOFF
(died while starting, will retry), EXITED (died after RUNNING) and FATAL (gave up).
"""

from __future__ import annotations

import http.client
import socket
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from .errors import SupervisorError


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    uptime_seconds: int
    description: str
    exit_status: int
    logfile: str


class Supervisor:
    """A client of one supervisord, addressed by its unix socket."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def _proxy(self):
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def call(self, method: str, *args):
        try:
            return getattr(self._proxy().supervisor, method)(*args)
        except (OSError, http.client.HTTPException, socket.error) as exc:
            raise SupervisorError(f"supervisord is not reachable at {self.sock}: {exc}") from exc
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord refused {method}: {exc.faultString}") from exc

    def is_running(self) -> bool:
        try:
            return self.call("getState")["statename"] == "RUNNING"
        except SupervisorError:
            return False

    def pid(self) -> int:
        return int(self.call("getPID"))

    def processes(self) -> list[ProcessInfo]:
        infos = []
        for raw in self.call("getAllProcessInfo"):
            running = raw["statename"] == "RUNNING" and raw["start"]
            infos.append(ProcessInfo(
                name=raw["name"], state=raw["statename"], pid=raw["pid"],
                uptime_seconds=int(raw["now"] - raw["start"]) if running else 0,
                description=raw["description"], exit_status=raw["exitstatus"],
                logfile=raw["stdout_logfile"]))
        return infos

    def restart(self, name: str) -> None:
        try:
            self.call("stopProcess", name, True)
        except SupervisorError as exc:
            if "NOT_RUNNING" not in str(exc):
                raise
        self.call("startProcess", name, False)

    def update(self) -> tuple[list[str], list[str], list[str]]:
        """Apply a changed supervisord.conf like ``supervisorctl update``.

        Programs whose section changed are restarted, removed ones stopped, new ones started;
        untouched programs keep running. Returns (added, changed, removed).
        """
        added, changed, removed = self.call("reloadConfig")[0]
        for name in removed + changed:
            try:
                self.call("stopProcessGroup", name)
            except SupervisorError as exc:
                if "BAD_NAME" not in str(exc):
                    raise
            self.call("removeProcessGroup", name)
        for name in changed + added:
            self.call("addProcessGroup", name)
        return added, changed, removed

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every process and supervisord itself; wait until its PID is gone."""
        pid = self.pid()
        self.call("shutdown")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        raise SupervisorError(f"supervisord (pid {pid}) did not stop within {timeout}s")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False
