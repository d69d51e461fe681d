"""Start a whole node (real supervisord, Envoy, model server) under a temp root on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from appliance.supervision import pid_alive
from tests.conftest import free_ports

CLI = [sys.executable, "-m", "appliance.cli"]


@dataclass
class NodeUnderTest:
    root: Path
    address: str
    http_port: int
    grpc_port: int
    admin_port: int
    rest_port: int
    model_grpc_port: int
    logviewer_port: int = 0     # 0: the logviewer keeps its default port (8090)
    cluster_port: int = 0       # 0: the inter-node listener keeps its default port (7443)

    @property
    def overrides(self) -> list[str]:
        pairs = {"node.address": self.address, "http.port": self.http_port,
                 "grpc.port": self.grpc_port, "envoy.admin.port": self.admin_port,
                 "serving.rest.port": self.rest_port, "serving.grpc.port": self.model_grpc_port,
                 "envoy.concurrency": 2}
        if self.logviewer_port:
            pairs["logviewer.port"] = self.logviewer_port
        if self.cluster_port:
            pairs["cluster.port"] = self.cluster_port
        out: list[str] = []
        for key, value in pairs.items():
            out += ["--set", f"{key}={value}"]
        return out

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def model_server_url(self) -> str:
        """The node's model server itself: on loopback only, whatever the node's address."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def logviewer_url(self) -> str:
        return f"http://{self.address}:{self.logviewer_port}"

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + ["--root", str(self.root), *args], capture_output=True,
                              text=True, timeout=timeout)

    def status(self) -> dict:
        result = self.cli("status", "--json", timeout=60)
        return json.loads(result.stdout)

    def pids(self) -> list[int]:
        """supervisord and every process it runs, by PID."""
        pidfile = self.root / "var/lib/appliance/run/supervisord.pid"
        pids = [int(pidfile.read_text())] if pidfile.exists() else []
        try:
            pids += [p["pid"] for p in self.status()["processes"] if p["pid"]]
        except (ValueError, KeyError):
            pass
        return pids

    def kill_all(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def new_node(root: Path, models: Path, names: list[str], address: str = "127.0.0.1") -> NodeUnderTest:
    """A node root whose local store links the built-in models (cheap: no copies)."""
    store = root / "data/models"
    store.mkdir(parents=True)
    for name in names:
        (store / name).symlink_to(models / name, target_is_directory=True)
    return NodeUnderTest(root, address, *free_ports(address, address, "127.0.0.1", *[address] * 4))


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if pid_alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if pid_alive(pid)]


@contextlib.contextmanager
def node_running(node: NodeUnderTest, started: subprocess.CompletedProcess) -> Iterator[NodeUnderTest]:
    """Yield a node `up` started (asserting it did); at exit `down` it and kill what is left, by PID."""
    pids = node.pids()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield node
    finally:
        node.cli("down", timeout=120)
        node.kill_all(wait_gone(pids, 30))
