"""The e2e tier's shared dev cluster (see shared_cluster.py); the test order is in
tests/conftest.py (the cluster's tests run last, those marked ``destructive`` after them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from appliance import devcluster
from tests.conftest import ARTIFACTS
from tests.e2e.shared_cluster import (FIRST, MODEL, REPORT, Cluster, _free_block, _free_everywhere,
                                      _free_internal_base)
from tests.integration.node_harness import wait_gone


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("devcluster")
    base_ip = int.from_bytes(socket.inet_aton(FIRST), "big")
    addresses = [socket.inet_ntoa((base_ip + i).to_bytes(4, "big")) for i in range(6)]
    taken: set[int] = set()
    ports = {key: _free_everywhere(addresses, taken) for key in (
        "http.port", "grpc.port", "logviewer.port", "repo.port", "cluster.port")}
    # Envoy admin and model server ports of up to 6 nodes, on 127.0.0.1 (devcluster.LOOPBACK_PORTS).
    admin_base = _free_block(6 * devcluster.LOOPBACK_PORTS, taken)
    overrides = {k: str(v) for k, v in ports.items()}
    overrides.update({"enable.access.log": "true", "sync.interval.seconds": "2",
                      "repo.internal.port.base": str(_free_internal_base(taken)),
                      "envoy.concurrency": "1", "serving.threads": "2"})
    state = Cluster(base, ports)
    try:
        state.nodes = devcluster.up(base, 3, 1, [MODEL], overrides, first=FIRST, admin_base=admin_base)
        yield state
    finally:
        pids: list[int] = []
        for node in devcluster.load(base):
            pidfile = Path(node.root) / "var/lib/appliance/run/supervisord.pid"
            if pidfile.exists():
                pids.append(int(pidfile.read_text()))
        stopping = time.monotonic()
        devcluster.down(base)
        REPORT["down_seconds"] = round(time.monotonic() - stopping, 1)
        for pid in wait_gone(pids, 30):
            os.kill(pid, signal.SIGKILL)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "cluster-report.json").write_text(json.dumps(REPORT, indent=2))


