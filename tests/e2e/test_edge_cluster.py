"""Issue 16, Must show 5 on the shared cluster: a cluster-wide rate limit (rate.cluster) stated
once, divided over the serving members; under load through every serving node the allowed rate is
the configured one within 15 %, and again after a node leaves (its share goes to the others).

The settings are put back afterwards. Measured rates: test-artifacts/edge-cluster-report.json.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance import devcluster
from appliance.localhttp import get_json
from modelserver.atomic import write_atomic
from tests.conftest import ARTIFACTS, wait_until
from tests.e2e.shared_cluster import MODEL, Cluster
from tests.edgeload import load, rest_sender
from tests.integration.node_harness import CLI

pytestmark = pytest.mark.slow
RATE = 45


def _set(node: devcluster.DevNode, key: str, value: object) -> None:
    """One key of a node's config file (None: removed); the node's agent applies the edit."""
    path = Path(node.root) / "etc/appliance/appliance.yaml"
    values = yaml.safe_load(path.read_text())
    if value is None:
        values.pop(key, None)
    else:
        values[key] = value
    write_atomic(path, yaml.safe_dump(values, sort_keys=False), mode=0o600)


def _members(node: devcluster.DevNode, action: str, address: str) -> None:
    result = subprocess.run(CLI + ["--root", node.root, "cluster", action, address], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def bucket_rate(node: devcluster.DevNode) -> float:
    """Requests per second of the node's local_ratelimit bucket, on the public listeners' one
    route configuration (0: none)."""
    _, dump = get_json(f"http://127.0.0.1:{node.admin_port}/config_dump?resource=dynamic_route_configs")
    for entry in dump.get("configs", []) if isinstance(dump, dict) else []:
        for host in entry.get("route_config", {}).get("virtual_hosts", []):
            for per_filter in host.get("typed_per_filter_config", {}).values():
                bucket = per_filter.get("token_bucket")
                if bucket:
                    return int(bucket["tokens_per_fill"]) / float(bucket["fill_interval"].rstrip("s"))
    return 0.0


def _buckets_are(nodes: list[devcluster.DevNode], rate: float) -> bool:
    return all(abs(bucket_rate(n) - rate) < 0.01 * rate + 0.01 for n in nodes)


def _measure(cluster: Cluster, entries: list[devcluster.DevNode]) -> dict:
    senders = [rest_sender(n.address, cluster.ports["http.port"], f"/v1/models/{MODEL}:predict") for n in entries]
    return load(senders, 6.0, threads=3)


def test_a_cluster_rate_limit_is_divided_over_the_members_also_after_one_leaves(cluster: Cluster) -> None:
    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    leaving, staying = serving[-1], [n for n in nodes if n is not serving[-1]]
    report: dict[str, object] = {"configured": RATE}
    try:
        for node in nodes:
            _set(node, "rate.cluster", RATE)
        wait_until(lambda: _buckets_are(nodes, RATE / len(serving)), timeout=60,
                   what=f"every Envoy limiting to {RATE}/{len(serving)} per second")
        report["all_members"] = result = _measure(cluster, serving)
        assert result["counts"].get(429, 0) > 0 and result["retry_after_on_every_429"]
        assert result["allowed_per_second"] == pytest.approx(RATE, rel=0.15)

        for node in staying:
            _members(node, "remove-node", leaving.address)
        left = [n for n in serving if n is not leaving]
        wait_until(lambda: _buckets_are(staying, RATE / len(left)), timeout=60,
                   what=f"the remaining Envoys limiting to {RATE}/{len(left)} per second")
        report["after_one_left"] = result = _measure(cluster, left)
        assert result["allowed_per_second"] == pytest.approx(RATE, rel=0.15)
    finally:
        for node in staying:
            _members(node, "add-node", leaving.address)
        for node in nodes:
            _set(node, "rate.cluster", None)
        wait_until(lambda: _buckets_are(nodes, 0), timeout=60, what="no rate limit on any Envoy")
        devcluster.wait_in_rotation(nodes, [leaving.address], progress=lambda _: None)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "edge-cluster-report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
