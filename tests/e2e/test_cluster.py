"""Issue 5, end to end: a 3-serving + 1-repo dev cluster on loopback addresses, models in the
repo node's object store. Any node serves; a killed model server costs (almost) nothing; nodes
join and leave under load without losing a request; the same through gRPC.

Counts (failures during detection, recovery) are written to test-artifacts/cluster-report.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from appliance import devcluster
from appliance.envoy_admin import read_cluster_view
from tests.conftest import ARTIFACTS, wait_until
from tests.integration.node_harness import CLI, wait_gone

pytestmark = pytest.mark.slow
MODEL = "saved_model_half_plus_two_mkl"
FIRST = "127.0.0.102"   # this module's own loopback range: .102 - .107
REPORT: dict[str, object] = {}


def _free_everywhere(addresses: list[str], taken: set[int]) -> int:
    """A port free on every address (so each node can use the same one, like real machines)."""
    while True:
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        if port in taken:
            continue
        try:
            for address in addresses[1:]:
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
        import subprocess

        out = subprocess.run(CLI + ["--root", node.root, "status", "--json"], capture_output=True,
                             text=True, timeout=60).stdout
        return json.loads(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("devcluster")
    base_ip = int.from_bytes(socket.inet_aton(FIRST), "big")
    addresses = [socket.inet_ntoa((base_ip + i).to_bytes(4, "big")) for i in range(6)]
    taken: set[int] = set()
    ports = {key: _free_everywhere(addresses, taken) for key in (
        "http.port", "grpc.port", "serving.rest.port", "serving.grpc.port", "logviewer.port",
        "repo.port")}
    admin_base = _free_everywhere(["127.0.0.1"], taken)
    while not all(_port_free("127.0.0.1", admin_base + i) for i in range(6)):
        admin_base = _free_everywhere(["127.0.0.1"], taken)
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


def _port_free(address: str, port: int) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, port))
        return True
    except OSError:
        return False


def _free_internal_base(taken: set[int]) -> int:
    """The object store's 8 consecutive internal ports on 127.0.0.1."""
    while True:
        base = _free_everywhere(["127.0.0.1"], taken)
        if base < 60000 and all(_port_free("127.0.0.1", base + i) for i in range(8)):
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


def rest_sender(url: str) -> Callable[[], bool]:
    local = threading.local()

    def send() -> bool:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        resp = session.post(f"{url}/v1/models/{MODEL}:predict", data='{"instances": [1.0, 2.0]}',
                            timeout=30)
        return resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0]}
    return send


def grpc_sender(target: str) -> Callable[[], bool]:
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([1.0, 2.0])

    def send() -> bool:
        response = stub.Predict(request, timeout=30)
        return list(response.outputs["y"].float_val) == [2.5, 3.0]
    return send


def envoy_hosts(node: devcluster.DevNode, cluster_name: str = "model_server_rest") -> dict[str, str]:
    _, clusters = read_cluster_view(node.admin_port)
    return {h.address.split(":")[0]: h.health for c in clusters if c.name == cluster_name
            for h in c.hosts}


# ----------------------------------------------------------------------------- tests


def test_any_node_answers_and_requests_spread_over_every_serving_node(cluster: Cluster) -> None:
    nodes = devcluster.load(cluster.base)
    assert [n.role for n in nodes] == ["serving"] * 3 + ["repo"]
    for node in nodes:
        for _ in range(15):
            resp = requests.post(f"{cluster.rest(node)}/v1/models/{MODEL}:predict",
                                 data='{"instances": [1.0, 2.0, 5.0]}', timeout=30)
            assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
        assert grpc_sender(f"{node.address}:{cluster.ports['grpc.port']}")()
    serving = {n.address for n in nodes if n.role == "serving"}

    def upstreams() -> set[str]:
        seen = set()
        for node in nodes:
            log = Path(node.root) / "var/log/appliance/access.log"
            for line in log.read_text().splitlines() if log.exists() else []:
                entry = json.loads(line)
                if entry["path"].endswith(":predict"):
                    seen.add(entry["upstream_host"].split(":")[0])
        return seen

    spread = wait_until(lambda: upstreams() if upstreams() >= serving else None, timeout=20,
                        what="access logs naming every serving node")
    assert spread == serving
    # the model came from the repo node's object store, through each serving node's agent
    status = cluster.status(nodes[0])
    assert status["models"][MODEL][0]["state"] == "AVAILABLE"
    assert {u["address"].split(":")[0] for u in status["upstreams"]} == serving
    assert status["sizing"]["cpus"] == os.cpu_count()


def test_killed_model_server_costs_a_handful_and_comes_back(cluster: Cluster) -> None:
    entry = cluster.node("repo-1")            # clients talk to the repo node's Envoy
    victim = cluster.node("serving-2")
    before = {p["name"]: p["pid"] for p in cluster.status(victim)["processes"]}
    with Load(rest_sender(cluster.rest(entry))) as rest, \
            Load(grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}"), threads=2) as rpc:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(before["model_server"], signal.SIGKILL)
        wait_until(lambda: envoy_hosts(entry).get(victim.address) == "UNHEALTHY", timeout=30,
                   interval=0.05, what="Envoy to mark the killed node unhealthy")
        detected_at = time.monotonic()
        time.sleep(3)                        # steady state without the node
        steady_until = time.monotonic()

        def back() -> bool:
            pids = {p["name"]: p["pid"] for p in cluster.status(victim)["processes"]}
            return (pids.get("model_server") not in (None, 0, before["model_server"])
                    and envoy_hosts(entry).get(victim.address) == "HEALTHY"
                    and envoy_hosts(entry, "model_server_grpc").get(victim.address) == "HEALTHY")
        rest_port = cluster.ports["serving.rest.port"]
        wait_until(lambda: requests.get(f"http://{victim.address}:{rest_port}/v1/models/{MODEL}",
                                        timeout=2).status_code == 200,
                   timeout=120, interval=0.2, what="the model server restarted by supervisord")
        restarted_at = time.monotonic()
        wait_until(back, timeout=120, interval=0.2, what="the restarted model server in rotation")
        back_at = time.monotonic()
        served_before = _requests_to(entry, victim.address)
        wait_until(lambda: _requests_to(entry, victim.address) > served_before, timeout=30,
                   what="traffic to the node again")
    REPORT["kill"] = {
        "rest_requests": rest.count(), "grpc_requests": rpc.count(),
        "rest_failed_during_detection": rest.failures(killed_at, detected_at),
        "grpc_failed_during_detection": rpc.failures(killed_at, detected_at),
        "rest_failed_after_detection": rest.failures(detected_at),
        "grpc_failed_after_detection": rpc.failures(detected_at),
        "detection_seconds": round(detected_at - killed_at, 2),
        "model_server_serving_again_seconds_after_kill": round(restarted_at - killed_at, 2),
        "back_in_rotation_seconds_after_restart": round(back_at - restarted_at, 2),
    }
    print(json.dumps(REPORT["kill"], indent=2))
    assert rest.failures(detected_at) == 0 and rpc.failures(detected_at) == 0
    assert rest.failures(killed_at, detected_at) <= 5
    assert rpc.failures(killed_at, detected_at) <= 5
    assert rest.count(detected_at) > 0 and rpc.count(steady_until) > 0


def _requests_to(node: devcluster.DevNode, address: str) -> int:
    _, clusters = read_cluster_view(node.admin_port)
    return sum(h.stats.get("rq_total", 0) for c in clusters for h in c.hosts
               if h.address.startswith(f"{address}:"))


def test_nodes_join_and_leave_under_load_without_losing_a_request(cluster: Cluster) -> None:
    entry = cluster.node("serving-1")
    with Load(rest_sender(cluster.rest(entry))) as rest, \
            Load(grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}"), threads=2) as rpc:
        time.sleep(1)
        new = devcluster.add_serving(cluster.base)
        wait_until(lambda: envoy_hosts(entry).get(new.address) == "HEALTHY", timeout=60,
                   what="the new node healthy in Envoy")
        wait_until(lambda: _requests_to(entry, new.address) > 0, timeout=30,
                   what="traffic to the new node")
        devcluster.remove_serving(cluster.base, "serving-3")
        time.sleep(2)
    REPORT["join_leave"] = {"rest_requests": rest.count(), "grpc_requests": rpc.count(),
                            "rest_failed": rest.failures(), "grpc_failed": rpc.failures()}
    print(json.dumps(REPORT["join_leave"], indent=2))
    assert rest.failures() == 0 and rpc.failures() == 0
    assert rest.count() > 50 and rpc.count() > 20
    hosts = envoy_hosts(entry)
    assert new.address in hosts and cluster.node("serving-1").address in hosts
    assert not any(n.name == "serving-3" for n in devcluster.load(cluster.base))
    assert len(hosts) == 3


def test_add_and_remove_node_with_a_node_dead_succeed_and_name_it(cluster: Cluster) -> None:
    """Issue 12: a dead node is named and not waited for; the operation asked for succeeds."""
    dead = cluster.node("serving-2")
    pids = [int((Path(dead.root) / "var/lib/appliance/run/supervisord.pid").read_text())]
    pids += [p["pid"] for p in cluster.status(dead)["processes"] if p["pid"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert not wait_gone(pids, 30)
    dev = CLI + ["dev-cluster", "--dir", str(cluster.base)]
    added = subprocess.run(dev + ["add-node"], capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stdout + added.stderr
    assert f"serving-2 ({dead.address}) is down" in added.stdout
    new = devcluster.load(cluster.base)[-1]
    assert envoy_hosts(cluster.node("serving-1")).get(new.address) == "HEALTHY"
    assert new.address in _members_in_config(dead)   # applied when the node starts again
    removed = subprocess.run(dev + ["remove-node", new.name], capture_output=True, text=True,
                             timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"serving-2 ({dead.address}) is down" in removed.stdout
    assert new.address not in envoy_hosts(cluster.node("serving-1"))
    assert dead.address in envoy_hosts(cluster.node("serving-1"))   # only the asked-for change
    assert new.address not in _members_in_config(dead)


def _members_in_config(node: devcluster.DevNode) -> str:
    import yaml

    return yaml.safe_load((Path(node.root) / "etc/appliance/appliance.yaml").read_text())["cluster.members"]
