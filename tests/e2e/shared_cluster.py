"""The dev cluster the e2e modules share (3 serving + 1 repo node on loopback addresses), its
port helpers, and the load and request helpers the modules use against it.

The ``cluster`` fixture (tests/e2e/conftest.py) starts it once per session; a test that changes
the cluster's settings puts them back, and a test that breaks it for good is marked
``destructive`` and runs after every other test of the session.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from appliance import devcluster
from appliance.envoy_admin import Cluster as EnvoyCluster, http_json, parse_clusters
from tests.integration.node_harness import CLI

MODEL = "saved_model_half_plus_two_mkl"
# The shared cluster's loopback range: .102 - .107 (APPLIANCE_E2E_FIRST moves it, e.g. for two
# checkouts testing at once).
FIRST = os.environ.get("APPLIANCE_E2E_FIRST", "127.0.0.102")
REPORT: dict[str, object] = {}


def _free_everywhere(addresses: list[str], taken: set[int]) -> int:
    """A port free on every address (so each node can use the same one, like real machines).

    Drawn below the kernel's ephemeral range (32768-60999): nodes are started again and added
    minutes later, and a port of that range may by then be the local port of one of the
    cluster's own connections (seen: a new node's Envoy admin port taken, so it could not start).
    """
    while True:
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        taken.add(port)
        return port


@dataclass
class Cluster:
    base: Path
    ports: dict[str, int]
    nodes: list[devcluster.DevNode] = field(default_factory=list)

    def node(self, name: str) -> devcluster.DevNode:
        return next(n for n in devcluster.load(self.base) if n.name == name)

    def rest(self, node: devcluster.DevNode) -> str:
        return f"http://{node.address}:{self.ports['http.port']}"

    def status(self, node: devcluster.DevNode) -> dict:
        out = subprocess.run(CLI + ["--root", node.root, "status", "--json"], capture_output=True,
                             text=True, timeout=60).stdout
        return json.loads(out)


def _port_free(address: str, port: int) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, port))
        return True
    except OSError:
        return False


def _free_internal_base(taken: set[int]) -> int:
    """The object store's 8 consecutive internal ports on 127.0.0.1."""
    return _free_block(8, taken)


def _free_block(count: int, taken: set[int]) -> int:
    """``count`` consecutive ports free on 127.0.0.1 and not handed out yet (all then taken)."""
    while True:
        base = _free_everywhere(["127.0.0.1"], taken)
        block = range(base, base + count)
        if not taken.intersection(block[1:]) and all(_port_free("127.0.0.1", p) for p in block):
            taken.update(block)
            return base


# ----------------------------------------------------------------------------- load


class Load:
    """Client threads sending predicts without pause; every outcome recorded with its time."""

    def __init__(self, send: Callable[[], bool], threads: int = 4) -> None:
        self.send = send
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.send()
            except Exception:  # noqa: BLE001 - any client-side error is a failed request
                ok = False
            with self._lock:
                self.results.append((time.monotonic(), ok))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def failures(self, since: float = 0.0, until: float = float("inf")) -> int:
        with self._lock:
            return sum(1 for t, ok in self.results if since <= t < until and not ok)

    def count(self, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for t, _ in self.results if t >= since)


def rest_sender(url: str, model: str = MODEL, not_found: list[int] | None = None
                ) -> Callable[[], bool]:
    """A predict through ``url``; a 404 is also counted in ``not_found`` when given."""
    local = threading.local()

    def send() -> bool:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        resp = session.post(f"{url}/v1/models/{model}:predict", data='{"instances": [1.0, 2.0]}',
                            timeout=30)
        if resp.status_code == 404 and not_found is not None:
            not_found.append(1)
        return resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0]}
    return send


def grpc_sender(target: str, model: str = MODEL, not_found: list[int] | None = None
                ) -> Callable[[], bool]:
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([1.0, 2.0])

    def send() -> bool:
        try:
            response = stub.Predict(request, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and not_found is not None:
                not_found.append(1)
            raise
        return list(response.outputs["y"].float_val) == [2.5, 3.0]
    return send


def envoy_clusters(node: devcluster.DevNode) -> list[EnvoyCluster] | None:
    """The clusters and hosts this node's Envoy admin lists (one call), None when it does not answer."""
    code, body = http_json(f"http://127.0.0.1:{node.admin_port}/clusters?format=json")
    return parse_clusters(body) if code == 200 and isinstance(body, dict) else None


def envoy_hosts(node: devcluster.DevNode, cluster_name: str = "model_server_rest") -> dict[str, str]:
    return {h.node: h.health for c in envoy_clusters(node) or () if c.name == cluster_name
            for h in c.hosts}


def seconds_until_listed(nodes: list[devcluster.DevNode], address: str, since: float,
                         timeout: float = 30, present: bool = True) -> dict[str, float]:
    """Per node, the seconds from ``since`` (time.monotonic()) until its Envoy lists ``address``
    in both model server clusters (``present=False``: in neither). Each look is one admin call
    per node not yet there, so the figures are what Envoy did, not how long a round of looks at
    every node takes on a loaded machine."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(nodes):
        for node in nodes:
            if node.name in seen:
                continue
            clusters = envoy_clusters(node)
            if clusters is None:
                continue   # an admin that does not answer says nothing either way
            hosts = {c.name: {h.node for h in c.hosts} for c in clusters}
            listed = [address in hosts.get(name, ()) for name in ("model_server_rest", "model_server_grpc")]
            if all(listed) if present else not any(listed):
                seen[node.name] = time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s, {address} is {'not yet' if present else 'still'} "
                                 f"listed by {sorted({n.name for n in nodes} - set(seen))}")
        time.sleep(0.02)
    return seen


