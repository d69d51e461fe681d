"""Issue 17, metrics half, on the shared dev cluster: every node's one scrape page under load, a
real Prometheus scraping the cluster through the generated config, and ``appliance capacity``.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from appliance import devcluster, promtext
from tests.conftest import ARTIFACTS
from tests.e2e.shared_cluster import FIRST, MODEL, REPORT, Cluster, Load, grpc_sender, rest_sender
from tests.integration.node_harness import CLI

COUNT = ":tensorflow:serving:request_count"
PREDICT = ("predict", "Predict")      # the API label over REST and over gRPC
# A member that joins (on paper: nothing listens there) and leaves, past the cluster's 6 addresses.
JOINING = str(ipaddress.ip_address(FIRST) + 7)


def _token(cluster: Cluster) -> str:
    return (cluster.base / "metrics.token").read_text().strip()


def _page(cluster: Cluster, node: devcluster.DevNode) -> list[promtext.Sample]:
    resp = requests.get(f"http://{node.address}:{cluster.ports['logviewer.port']}/metrics",
                        headers={"Authorization": f"Bearer {_token(cluster)}"}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = promtext.parse(resp.text)    # strict: raises on anything Prometheus would refuse
    assert all(s.labels.get("node") == node.address for s in samples)
    return samples


def _served(samples: list[promtext.Sample]) -> dict[str, float]:
    """OK predicts of MODEL by version, on one node."""
    out: dict[str, float] = {}
    for s in samples:
        if (s.name == COUNT and s.labels["model_name"] == MODEL and s.labels["API"] in PREDICT
                and s.labels["status"] == "OK"):
            out[s.labels["version"]] = out.get(s.labels["version"], 0) + s.value
    return out


def _serving(cluster: Cluster) -> list[devcluster.DevNode]:
    return [n for n in devcluster.load(cluster.base) if n.role == "serving"]


def _counts(cluster: Cluster) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in _serving(cluster):
        for version, value in _served(_page(cluster, node)).items():
            total[version] = total.get(version, 0) + value
    return total


def test_every_node_page_parses_under_load_and_counts_what_was_sent(cluster: Cluster) -> None:
    nodes = devcluster.load(cluster.base)
    entry = next(n for n in nodes if n.role == "repo")
    url = f"http://{entry.address}:{cluster.ports['logviewer.port']}/metrics"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer " + "x" * 64}, timeout=30).status_code == 401

    before = _counts(cluster)
    with Load(rest_sender(cluster.rest(entry)), threads=3) as rest, \
            Load(grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}"), threads=1) as rpc:
        deadline = time.monotonic() + 8
        pages = 0
        while time.monotonic() < deadline:
            for node in nodes:          # under load, every node's page (the repo node's too)
                samples = _page(cluster, node)
                sources = {s.labels["source"]: s.value for s in samples
                           if s.name == "appliance_metrics_source_up"}
                assert sources.get("envoy") == 1 and sources.get("agent") == 1, sources
                if node.role == "serving":
                    assert sources.get("model_server") == 1, sources
                pages += 1
    sent = sum(ok for _, ok in rest.results) + sum(ok for _, ok in rpc.results)
    assert sent > 100 and pages >= len(nodes)
    after = _counts(cluster)
    served = {v: after[v] - before.get(v, 0) for v in after if after[v] != before.get(v, 0)}
    status = cluster.status(_serving(cluster)[0])
    latest = max((v["version"] for v in status["models"][MODEL] if v["state"] == "AVAILABLE"), key=int)
    assert list(served) == [latest], served
    assert abs(served[latest] - sent) <= max(1, sent // 100), (served, sent)
    REPORT["metrics_sent_vs_counted"] = [sent, served[latest]]

    # Per process and per upstream node, and the model's state, from one serving node's page.
    page = _page(cluster, _serving(cluster)[0])
    names = {s.name for s in page}
    assert {"appliance_process_cpu_seconds_total", "appliance_process_resident_memory_bytes",
            "appliance_envoy_upstream_rq_total", "appliance_agent_sync_lag_seconds",
            "envoy_cluster_upstream_rq_time_bucket", ":tensorflow:serving:runtime_latency_bucket",
            ":appliance:serving:model_resident_bytes"} <= names
    assert promtext.total(page, ":appliance:serving:model_state", model_name=MODEL, version=latest,
                          state="AVAILABLE") == 1
    upstreams = {s.labels["upstream"] for s in page if s.name == "appliance_envoy_upstream_rq_total"}
    assert upstreams == {n.address for n in _serving(cluster)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed "
                    "(scripts/install.sh installs Debian's prometheus package)")
def test_a_real_prometheus_scrapes_the_cluster_with_the_generated_config(
        cluster: Cluster, tmp_path: Path) -> None:
    repo = next(n for n in devcluster.load(cluster.base) if n.role == "repo")
    out = subprocess.run(CLI + ["--root", repo.root, "prometheus-config", "--dir", str(tmp_path),
                                "--interval", "1s"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "metrics.token").stat().st_mode & 0o777 == 0o600
    port = _free_port()
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'data'}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def targets() -> dict[str, dict]:
            try:
                doc = requests.get(f"{api}/targets", timeout=5).json()
            except (requests.RequestException, ValueError):
                return {}
            return {t["labels"]["instance"]: t for t in doc["data"]["activeTargets"]}

        expected = {f"{n.address}:{cluster.ports['logviewer.port']}" for n in devcluster.load(cluster.base)}
        _wait(lambda: set(targets()) == expected and all(t["health"] == "up" for t in targets().values()),
              60, lambda: f"targets: {targets()}")
        entry = _serving(cluster)[0]
        query = (f'sum by (model_name) (rate({COUNT}{{model_name="{MODEL}",API=~"predict|Predict",'
                 'status="OK"}[5s]))')

        def rate() -> float:
            result = requests.get(f"{api}/query", params={"query": query}, timeout=5).json()
            assert result["status"] == "success", result
            rows = result["data"]["result"]
            return float(rows[0]["value"][1]) if rows else 0.0

        with Load(rest_sender(cluster.rest(entry)), threads=2):
            _wait(lambda: rate() > 0, 60, lambda: f"no rate of {MODEL} in Prometheus")

        # A member joining and leaving reaches Prometheus through the file_sd file alone.
        joining = f"{JOINING}:{cluster.ports['logviewer.port']}"
        try:
            _members(repo, "add-node")
            _wait(lambda: joining in targets(), 60, lambda: f"{joining} not in {list(targets())}")
        finally:
            _members(repo, "remove-node")
        _wait(lambda: set(targets()) == expected, 60, lambda: f"targets: {list(targets())}")
    finally:
        prometheus.terminate()
        prometheus.wait(30)


def _members(node: devcluster.DevNode, action: str) -> None:
    out = subprocess.run(CLI + ["--root", node.root, "cluster", action, JOINING], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _wait(condition, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(message())


HOOK = """import json, os, sys
doc = json.load(sys.stdin)
doc["env"] = {k: v for k, v in os.environ.items() if k.startswith("APPLIANCE_CAPACITY_")}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(doc) + "\\n")
"""


def test_capacity_recommends_a_node_past_the_objective_and_no_change_without_load(
        cluster: Cluster, tmp_path: Path) -> None:
    """A low objective (0.1 ms, below what a predict costs here) stands for a cluster pushed past
    it; capacity.min.nodes 3 (the cluster's serving nodes) makes "no change" the idle answer."""
    hook, calls = tmp_path / "hook.py", tmp_path / "calls.jsonl"
    hook.write_text(HOOK)
    node = _serving(cluster)[0]
    settings = ["--set", "capacity.latency.objective.ms=0.1", "--set", "capacity.min.nodes=3",
                "--set", "capacity.window.seconds=3",
                "--set", f"capacity.hook={sys.executable} {hook} {calls}"]

    def capacity() -> str:
        out = subprocess.run(CLI + ["--root", node.root, "capacity", *settings], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    with Load(rest_sender(cluster.rest(node)), threads=3):
        loaded = capacity()
    assert "recommendation: add " in loaded, loaded
    idle = capacity()
    assert "recommendation: no change (3 -> 3)" in idle, idle
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "capacity-report.txt").write_text(f"under load:\n{loaded}\nidle:\n{idle}")
    first, second = [json.loads(line) for line in calls.read_text().splitlines()]
    assert first["action"] == "add" and first["nodes"] >= 1 and first["target_nodes"] == 3 + first["nodes"]
    assert first["env"]["APPLIANCE_CAPACITY_ACTION"] == "add"
    assert first["env"]["APPLIANCE_CAPACITY_NODES"] == str(first["nodes"])
    assert len(first["per_node"]) == 3 and all(n["rate"] > 0 for n in first["per_node"])
    assert second["action"] == "none" and second["env"]["APPLIANCE_CAPACITY_ACTION"] == "none"
