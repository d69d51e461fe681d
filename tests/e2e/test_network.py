"""Issue 16 (network), must show 1-3 on the shared dev cluster: what listens where (Envoy alone on
a node address: its public ports, the log browser, the inter-node port, a repo node's S3), an impostor
without a certificate of the cluster CA, and TLS at the edge (REST with curl, gRPC with the
official stubs, the self-signed default).

Every node's listening sockets are read from /proc (the sockets held by its supervisord, the
programs it runs and their children). On a dev cluster every address is a loopback one: a
node's "network" address is its own 127.0.0.x, and "loopback only" means 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from appliance import devcluster, pki, portowners
from appliance.config import NodePaths
from appliance.doctor import our_pids
from appliance.envoy_admin import read_cluster_view
from tests.conftest import wait_until
from tests.e2e.shared_cluster import MODEL, REPORT, Cluster, envoy_hosts, grpc_sender, rest_sender
from tests.integration.node_harness import CLI

pytestmark = pytest.mark.slow
#: The impostor's address: the lead gave this helper 127.0.11.20-60 for its own multi-node tests.
IMPOSTOR = "127.0.11.30"


def _sockets(node: devcluster.DevNode) -> list[portowners.Socket]:
    return portowners.sockets_of(our_pids(NodePaths(Path(node.root))))


def test_only_envoy_listens_on_a_node_address(cluster: Cluster) -> None:
    ports = cluster.ports
    listing = {}
    for node in devcluster.load(cluster.base):
        sockets = _sockets(node)
        listing[node.name] = sorted(f"{s.address}:{s.port} {s.command}" for s in sockets)
        assert {s.address for s in sockets} <= {"127.0.0.1", node.address}, listing[node.name]
        public = {(s.port, s.command) for s in sockets if s.address == node.address}
        # The logviewer too is served by Envoy (TLS), from a unix socket.
        expected = {(ports["http.port"], "envoy"), (ports["grpc.port"], "envoy"),
                    (ports["logviewer.port"], "envoy")}
        expected.add((ports["cluster.port"], "envoy") if node.role == "serving"
                     else (ports["repo.port"], "envoy"))
        assert public == expected, listing[node.name]
        loopback = {s.port: s.pid for s in sockets if s.address == "127.0.0.1"}
        pids = {p["name"]: p["pid"] for p in cluster.status(node)["processes"]}
        assert loopback[node.admin_port] == pids["envoy"]
        if node.role == "serving":
            own = node.loopback_ports()
            assert loopback[own["serving.rest.port"]] == pids["model_server"]
            assert loopback[own["serving.grpc.port"]] == pids["model_server"]
    REPORT["listening_sockets"] = listing
    print(json.dumps(listing, indent=2))


def test_requests_through_any_node_reach_every_serving_node(cluster: Cluster) -> None:
    """Through each node's Envoy, REST and gRPC reach each serving node: its own on loopback,
    its peers over mutual TLS (the counters of each upstream host, named by node)."""
    nodes = devcluster.load(cluster.base)
    serving = {n.address for n in nodes if n.role == "serving"}

    def served(entry: devcluster.DevNode, name: str) -> dict[str, int]:
        _, clusters = read_cluster_view(entry.admin_port)
        return {h.node: h.stats.get("rq_total", 0) for c in clusters if c.name == name for h in c.hosts}

    for entry in nodes:
        for name, send in (("model_server_rest", rest_sender(cluster.rest(entry))),
                           ("model_server_grpc", grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}"))):
            before = served(entry, name)

            def everywhere() -> bool:
                for _ in range(6):
                    assert send()
                now = served(entry, name)
                return all(now.get(a, 0) > before.get(a, 0) for a in serving)
            wait_until(everywhere, timeout=60, interval=0, what=f"{name} through {entry.name} on every node")
        local = [h for c in read_cluster_view(entry.admin_port)[1] for h in c.hosts
                 if h.address.startswith("127.0.0.1:")]
        assert [h.node for h in local] == ([entry.address] * 2 if entry.role == "serving" else [])


# ----------------------------------------------------------------------------- the impostor


class Impostor:
    """A TLS server on IMPOSTOR:cluster.port with a certificate from another CA, answering 200
    to anything -- what a machine posing as a member would do. It counts the TLS handshakes it
    completed and the HTTP requests it received."""

    def __init__(self, workdir: Path, port: int) -> None:
        ca_dir = workdir / "other-ca"
        ca_dir.mkdir(parents=True)
        cert, key = pki.generate_ca()
        (ca_dir / "ca.crt").write_text(cert)
        (ca_dir / "ca.key").write_text(key)
        (ca_dir / "ca.key").chmod(0o600)
        self.cert, self.key = workdir / "impostor.crt", workdir / "impostor.key"
        pki.issue(self.cert, self.key, f"/CN=appliance node {IMPOSTOR}", f"IP:{IMPOSTOR}", 30,
                  (ca_dir / "ca.crt", ca_dir / "ca.key"))
        self.handshakes = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server((IMPOSTOR, port))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, self.key)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                data = tls.recv(65536)
                if data:
                    self.requests.append(data)
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def impostor(tmp_path: Path, cluster: Cluster) -> Iterator[Impostor]:
    fake = Impostor(tmp_path, cluster.ports["cluster.port"])
    try:
        yield fake
    finally:
        fake.close()


def _ask_internode(node: devcluster.DevNode, port: int, cert: Path | None, key: Path | None) -> bytes:
    """A GET of the model's status on ``node``'s internode listener, presenting ``cert`` (or
    none); what came back, b"" when the connection was refused at the TLS layer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE      # an attacker does not care who answers
    if cert is not None:
        context.load_cert_chain(cert, key)
    try:
        with socket.create_connection((node.address, port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(f"GET /v1/models/{MODEL} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
                return tls.recv(65536)
    except (OSError, ssl.SSLError):
        return b""


def test_an_impostor_can_neither_call_a_node_nor_be_called(cluster: Cluster, impostor: Impostor) -> None:
    target = cluster.node("serving-2")
    port = cluster.ports["cluster.port"]
    # A member's own certificate is let in (the listener works) ...
    member = pki.node_files(NodePaths(Path(cluster.node("serving-1").root)))
    assert _ask_internode(target, port, member.cert, member.key).startswith(b"HTTP/1.1 200")
    # ... the impostor's, from another CA, is not; nor is a client without a certificate.
    assert _ask_internode(target, port, impostor.cert, impostor.key) == b""
    assert _ask_internode(target, port, None, None) == b""

    # A member list naming the impostor by mistake: Envoy's handshakes with it fail (its
    # certificate is not the cluster CA's), it never passes a health check, no request reaches it.
    entry = cluster.node("serving-1")
    added = subprocess.run(CLI + ["--root", entry.root, "cluster", "add-node", IMPOSTOR],
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stdout + added.stderr
    try:
        wait_until(lambda: IMPOSTOR in envoy_hosts(entry), timeout=30, what="the impostor listed")
        send_rest, send_grpc = rest_sender(cluster.rest(entry)), grpc_sender(
            f"{entry.address}:{cluster.ports['grpc.port']}")
        assert all(send_rest() and send_grpc() for _ in range(40))
        wait_until(lambda: _failed_handshakes(entry) > 0, timeout=30, what="Envoy's refused handshakes")
        assert envoy_hosts(entry)[IMPOSTOR] == "UNHEALTHY"
        assert envoy_hosts(entry, "model_server_grpc")[IMPOSTOR] == "UNHEALTHY"
        assert impostor.requests == [] and impostor.handshakes == 0
    finally:
        removed = subprocess.run(CLI + ["--root", entry.root, "cluster", "remove-node", IMPOSTOR],
                                 capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    wait_until(lambda: IMPOSTOR not in envoy_hosts(entry), timeout=30, what="the impostor gone")


def _failed_handshakes(node: devcluster.DevNode) -> int:
    """Envoy's count of upstream TLS handshakes refused for a certificate it could not verify."""
    stats = requests.get(f"http://127.0.0.1:{node.admin_port}/stats?format=json&filter="
                         r"model_server_rest\.ssl\.fail_verify_error", timeout=5).json()["stats"]
    return sum(int(s.get("value", 0)) for s in stats)


# ----------------------------------------------------------------------------- edge TLS


def _last_serving(cluster: Cluster) -> devcluster.DevNode:
    """A serving node other than serving-1 (the entry of other tests); the shared cluster's
    earlier tests may have replaced serving-3 by a node that joined later."""
    return [n for n in devcluster.load(cluster.base) if n.role == "serving"][-1]


def test_tls_rest_with_curl_and_grpc_with_the_official_stubs(cluster: Cluster) -> None:
    """The same public ports take TLS (the self-signed certificate `status` shows, trusted with
    curl --cacert / a secure channel) and, by default, plain text (the user guide's curl)."""
    node = _last_serving(cluster)
    status = cluster.status(node)
    (edge,) = [c for c in status["certificates"] if c["role"] == "edge"]
    served = ssl.get_server_certificate((node.address, cluster.ports["http.port"]))
    assert pki.fingerprint(served) == edge["fingerprint_sha256"]
    assert "self-signed" in edge["note"] and not edge["problem"]
    ca_file = edge["file"]
    url = f"https://{node.address}:{cluster.ports['http.port']}/v1/models/{MODEL}:predict"
    out = subprocess.run(["curl", "-sS", "--cacert", ca_file, "-d", '{"instances": [1.0, 2.0, 5.0]}',
                          "-X", "POST", url], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == {"predictions": [2.5, 3.0, 4.5]}, out.stderr
    refused = subprocess.run(["curl", "-sS", "-d", "{}", url], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 60, "an unknown CA is refused by curl"       # CURLE_PEER_FAILED_VERIFICATION
    plain = requests.post(f"{cluster.rest(node)}/v1/models/{MODEL}:predict",
                          data='{"instances": [1.0]}', timeout=30)
    assert plain.json() == {"predictions": [2.5]}

    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    with grpc.secure_channel(f"{node.address}:{cluster.ports['grpc.port']}", credentials) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].dtype = 1  # DT_FLOAT
        request.inputs["x"].tensor_shape.dim.add().size = 3
        request.inputs["x"].float_val.extend([1.0, 2.0, 5.0])
        assert list(stub.Predict(request, timeout=30).outputs["y"].float_val) == [2.5, 3.0, 4.5]


def test_plaintext_can_be_turned_off(cluster: Cluster) -> None:
    node = _last_serving(cluster)
    url = f"/v1/models/{MODEL}"

    def reload(*overrides: str) -> None:
        done = subprocess.run(CLI + ["--root", node.root, "reload", *overrides], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    (edge,) = [c for c in cluster.status(node)["certificates"] if c["role"] == "edge"]
    ca_file = edge["file"]
    try:
        reload("--set", "tls.plaintext=false")
        wait_until(lambda: _plain_refused(cluster.rest(node) + url), timeout=30, what="plain text refused")
        assert requests.get(f"https://{node.address}:{cluster.ports['http.port']}{url}", verify=str(ca_file),
                            timeout=30).status_code == 200
    finally:
        reload()
    wait_until(lambda: requests.get(cluster.rest(node) + url, timeout=5).status_code == 200, timeout=30,
               what="plain text back")


def _plain_refused(url: str) -> bool:
    try:
        requests.get(url, timeout=5)
    except requests.ConnectionError:
        return True
    return False
