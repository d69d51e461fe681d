"""The cost of the network layout (issue 16): direct vs through Envoy, local vs peer, plain vs TLS.

Starts a two-node dev cluster (half_plus_two, no repo node) on ``--first`` and its neighbour,
then pins node 1's Envoy to one upstream at a time by writing its EDS files (the agent's
membership interval is set to an hour so it does not rewrite them), and runs wrk against each
path in interleaved rounds (the order rotates each round):

| path | what a request crosses |
|---|---|
| direct | wrk -> node 1's model server (127.0.0.1) |
| local | wrk -> node 1's Envoy (plain) -> its own model server on 127.0.0.1 |
| local_tls | the same, wrk speaking TLS to Envoy (the edge certificate) |
| peer_plain | wrk -> node 1's Envoy -> node 2's model server, plain (the layout before issue 16) |
| peer_mtls | wrk -> node 1's Envoy -> mTLS -> node 2's internode listener -> its model server |

Prints requests/s and p50/p99 per path and round, medians, and each path's ratio to ``local``;
the Envoy stats of node 1 (upstream requests per cluster host) cross-check wrk's count. Take
``flock /tmp/bench.lock`` around it.

    flock /tmp/bench.lock .venv/bin/python bench/mtls_ab.py --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance import devcluster, membership  # noqa: E402
from appliance.config import NodePaths, load_config  # noqa: E402
from appliance.envoy_admin import read_cluster_view  # noqa: E402
from appliance.localhttp import get_text  # noqa: E402
from modelserver.atomic import write_atomic  # noqa: E402
from tests.e2e.shared_cluster import _free_block, _free_everywhere  # noqa: E402

MODEL = "saved_model_half_plus_two_mkl"


def wrk(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout=10s",
                          "-s", str(REPO / "bench/post.lua"), url], capture_output=True, text=True,
                         env={"WRK_BODY": str(body), "PATH": "/usr/bin:/bin"}, timeout=seconds + 60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def served(node: devcluster.DevNode, direct: bool) -> float:
    """The server side's own count of answered predicts: node 1's Envoy (2xx of the REST
    cluster), or for ``direct`` its model server (TF Serving's request_count, API predict, OK)."""
    if direct:
        port = node.loopback_ports()["serving.rest.port"]
        code, text = get_text(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=10)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(":tensorflow:serving:request_count{") and 'API="predict"' in line
                   and 'status="OK"' in line)
    code, text = get_text(f"http://127.0.0.1:{node.admin_port}/stats?filter=^cluster.model_server_rest.upstream_rq_2xx$")
    return float(text.split(":")[1]) if ":" in text else 0.0


def pin(node: devcluster.DevNode, endpoint: dict | None) -> None:
    """Node 1's Envoy balances over this one endpoint only (both clusters)."""
    paths = NodePaths(Path(node.root))
    config = load_config(paths.config_file)
    for cluster, text in membership.eds_documents(config, [node.address]).items():
        doc = yaml.safe_load(text)
        if endpoint is not None:
            doc["resources"][0]["endpoints"][0]["lb_endpoints"] = [endpoint]
        doc["version_info"] = json.dumps(endpoint)
        write_atomic(membership.eds_path(paths, cluster), yaml.safe_dump(doc))


def wait_healthy(node: devcluster.DevNode, address: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, clusters = read_cluster_view(node.admin_port)
        hosts = [h for c in clusters for h in c.hosts]
        if hosts and all(h.address == address and h.health == "HEALTHY" for h in hosts):
            return
        time.sleep(0.2)
    raise SystemExit(f"{address} not healthy in node 1's Envoy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", default="127.0.11.40")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mtls-ab-"))
    addresses = [args.first, str(__import__("ipaddress").ip_address(args.first) + 1)]
    taken: set[int] = set()
    ports = {k: _free_everywhere(addresses, taken) for k in ("http.port", "grpc.port", "cluster.port")}
    overrides = {**{k: str(v) for k, v in ports.items()}, "logviewer.enabled": "false",
                 "sync.interval.seconds": "3600", "envoy.concurrency": "1", "serving.threads": "2"}
    body = base / "body.json"
    body.write_text('{"instances": [1.0, 2.0, 5.0]}')
    try:   # `down` also when `up` fails half way: it stops whatever did start
        one, two = devcluster.up(base / "cluster", 2, 0, [MODEL], overrides, first=args.first,
                                 admin_base=_free_block(2 * devcluster.LOOPBACK_PORTS, taken))
        own, peer = one.loopback_ports(), two.loopback_ports()
        local = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": own["serving.rest.port"]}},
                              "health_check_config": {"port_value": own["serving.rest.port"]}}}
        peer_plain = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": peer["serving.rest.port"]}},
                                   "health_check_config": {"port_value": peer["serving.rest.port"]}}}
        peer_mtls = {"endpoint": {"address": {"socket_address": {"address": two.address, "port_value": ports["cluster.port"]}}},
                     "metadata": {"filter_metadata": membership.INTERNODE_MATCH}}
        envoy = f"{one.address}:{ports['http.port']}/v1/models/{MODEL}:predict"
        paths = {"direct": (None, f"http://127.0.0.1:{own['serving.rest.port']}/v1/models/{MODEL}:predict"),
                 "local": (local, f"http://{envoy}"), "local_tls": (local, f"https://{envoy}"),
                 "peer_plain": (peer_plain, f"http://{envoy}"), "peer_mtls": (peer_mtls, f"http://{envoy}")}
        results: dict[str, list[dict]] = {name: [] for name in paths}
        order = list(paths)
        for round_no in range(args.rounds):
            for name in order[round_no % len(order):] + order[:round_no % len(order)]:
                endpoint, url = paths[name]
                if endpoint is not None:
                    pin(one, endpoint)
                    sock = endpoint["endpoint"]["address"]["socket_address"]
                    wait_healthy(one, f"{sock['address']}:{sock['port_value']}")
                wrk(url, body, args.concurrency, 1)          # warm the connections
                before = served(one, endpoint is None)
                result = wrk(url, body, args.concurrency, args.seconds)
                result["server_count"] = served(one, endpoint is None) - before
                results[name].append(result)
                print(f"round {round_no + 1} {name:<11} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:.2f} ms"
                      f"  p99 {result['p99_ms']:.2f} ms  errors {result['errors']}  wrk {result['requests']}"
                      f" / server {result['server_count']:.0f}", flush=True)
        medians = {n: statistics.median(r["rps"] for r in rs) for n, rs in results.items()}
        print(json.dumps({"medians_rps": medians,
                          "vs_local": {n: round(v / medians["local"], 3) for n, v in medians.items()},
                          "p50_ms": {n: statistics.median(r["p50_ms"] for r in rs) for n, rs in results.items()},
                          "p99_ms": {n: statistics.median(r["p99_ms"] for r in rs) for n, rs in results.items()}},
                         indent=2))
    finally:
        devcluster.down(base / "cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
