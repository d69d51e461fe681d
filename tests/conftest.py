"""Shared test fixtures: free loopback ports, readiness waits, and processes stopped by PID.

Every process a test starts goes through :class:`Processes`, which kills it (and its process
group) by PID at teardown, whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts"
TFS_TESTDATA = (REPO.parent / "shared" / "tfs_testdata" / "tensorflow_serving" / "servables"
                / "tensorflow" / "testdata")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    return free_ports(host)[0]


def free_ports(*hosts: str) -> list[int]:
    """A TCP port free on each of ``hosts`` right now, no two the same. Drawn one at a time, the
    kernel hands a port it just gave out again about once in 14,000 draws (8 draws: 1 in 500),
    so every socket stays bound until the last port is drawn."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for host in hosts:
            while True:
                s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                s.bind((host, 0))
                if s.getsockname()[1] not in ports:
                    break
            ports.append(s.getsockname()[1])
    return ports


class GiveUp(Exception):
    """Raised by a ``wait_until`` check when waiting longer cannot help (the process died)."""


def wait_until(check: Callable[[], object], timeout: float = 60.0, interval: float = 0.1,
               what: str = "condition") -> object:
    """Poll ``check`` until it returns a truthy value (exceptions count as not yet, except
    ``GiveUp``, which ends the wait at once)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - readiness polling
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last!r}" if last else ""))


def venv_bin(name: str) -> str:
    """Path of a console script installed in the test interpreter's venv."""
    return str(VENV_BIN / name)


class Processes:
    """Starts subprocesses in their own process group and stops them all by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path | None = None, **kw) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The shared dev cluster (tests/e2e/conftest.py, session-scoped) lives from its first test to
    the session's end, four idle nodes costing about half a core: its tests run after every other
    test, those that leave it broken (``destructive``) last."""
    def order(item: pytest.Item) -> tuple[bool, bool]:
        return ("cluster" in getattr(item, "fixturenames", ()),
                item.get_closest_marker("destructive") is not None)
    items.sort(key=order)     # stable: the files' own order otherwise


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def session_processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def builtin_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in models, built once per session the way the install step builds them."""
    from appliance.builtin_models import build_all

    dest = tmp_path_factory.mktemp("builtin_models")
    build_all(dest)
    return dest


@pytest.fixture(scope="session")
def cluster_ca() -> dict[str, str]:
    """A cluster CA made once per session: the config keys cluster.ca.cert and cluster.ca.key."""
    from appliance.pki import generate_ca

    cert, key = generate_ca()
    return {"cluster.ca.cert": cert, "cluster.ca.key": key}
