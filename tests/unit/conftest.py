"""The unit tier's guard: a test in tests/unit that starts a process fails.

Unit tests are the fast tier that runs anywhere, in seconds; a test that needs a real process
(a server, a CLI run, a helper binary) belongs in tests/integration, where processes are started
through the shared ``processes`` fixture and stopped by PID. The guard replaces every way Python
starts a process (``subprocess.Popen``, which ``run``/``check_output``/asyncio use; ``os.system``,
``os.exec*``, ``os.posix_spawn*``, ``os.fork*``; ``multiprocessing``) for
the duration of each unit test, so a new test that starts one fails with a message naming the rule
instead of slowing the tier down quietly.
"""

from __future__ import annotations

import _posixsubprocess
import multiprocessing.process
import os
import subprocess
from typing import Iterator

import pytest

RULE = ("tests/unit must not start processes (a process needs a test in tests/integration, "
        "started through the `processes` fixture)")


class ProcessStartForbidden(AssertionError):
    """Raised when a unit test tries to start a process."""


def _forbidden(what: str):
    def refuse(*args, **kwargs):
        raise ProcessStartForbidden(f"{RULE}: this test called {what}")
    return refuse


# Everything in os that creates a process or replaces this one.
_OS_CALLS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "popen", "execv",
             "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv",
             "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every process start in a unit test raise :class:`ProcessStartForbidden`."""
    for name in _OS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _forbidden(f"os.{name}"))
    # Popen binds _posixsubprocess.fork_exec at import; its _execute_child is the one way in.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _forbidden("subprocess.Popen"))
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _forbidden("_posixsubprocess.fork_exec"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        _forbidden("multiprocessing Process.start"))
    yield
