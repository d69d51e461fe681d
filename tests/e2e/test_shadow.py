"""Issue 18, shadow: ``appliance shadow start|report|stop`` on the shared 3+1 dev cluster.

A model of its own, ``shadow_cls`` (tests/tfmodels.py ``classifier``), pushed to the repository
and served as ``versions: specific:1``; version 2 moves the top class of the inputs whose x[0] is
negative, one in each request of 20. Requests go through every node's Envoy, REST and gRPC; the
report, summed over the nodes, says 5 % changed class, with the requests that did. The test
stops the shadow and removes the model at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import requests

from appliance import devcluster, runconfig
from appliance.config import NodePaths
from appliance.fleet import Fleet
from tests.conftest import wait_until
from tests.e2e.shared_cluster import Cluster
from tests.e2e.test_cluster import _cli_ok, _node_cli, _server_states

pytestmark = pytest.mark.slow

MODEL = "shadow_cls"


def _serving(cluster: Cluster) -> list[devcluster.DevNode]:
    return [n for n in devcluster.load(cluster.base) if n.role == "serving"]


def _loaded(cluster: Cluster, versions: set[int]) -> bool:
    return all({v for v, s in _server_states(cluster, n, MODEL).items() if s == "AVAILABLE"} == versions
               for n in _serving(cluster))


@pytest.fixture(scope="module")
def shadowed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from tests.tfmodels import classifier, save_version

    built = tmp_path_factory.mktemp("shadow-models")
    nodes = devcluster.load(cluster.base)
    for version, build in ((1, classifier()), (2, classifier(flip=True))):
        save_version(built / str(version), build)
        _cli_ok(_serving(cluster)[0], "models", "push", str(built / str(version)), "--name", MODEL,
                "--version", str(version))
    try:
        for node in nodes:
            _cli_ok(node, "models", "add", MODEL, "versions=specific:1")
        wait_until(lambda: _loaded(cluster, {1}), timeout=120, what=f"{MODEL} v1 on every serving node")
        yield cluster
    finally:
        paths = NodePaths(Path(_serving(cluster)[0].root))
        store = Fleet.of_node(runconfig.read(paths).config, paths=paths)
        if store.read().model(MODEL):
            store.push(MODEL, unset=list(store.read().model(MODEL)), why="test cleanup")
        for node in nodes:
            _node_cli(node, "models", "remove", MODEL)


def test_shadow_start_report_stop_through_envoy(shadowed: Cluster) -> None:
    from tests.tfmodels import send_classifier

    cluster = shadowed
    first = _serving(cluster)[0]
    out = _cli_ok(first, "shadow", "start", MODEL, "--version", "2", "--sample", "100")
    assert "shadow of shadow_cls started: version 2" in out
    wait_until(lambda: _loaded(cluster, {1, 2}), timeout=120, what="the candidate loaded on every serving node")

    nodes = devcluster.load(cluster.base)        # every node's Envoy, the repo node's too
    for i, node in enumerate(nodes):
        send_classifier(cluster.rest(node), f"{node.address}:{cluster.ports['grpc.port']}", MODEL, 40, seed=i)
    sent = 40 * len(nodes)

    last: list[dict] = [{}]

    def summed() -> dict | None:
        result = _node_cli(first, "shadow", "report", MODEL, "--json")
        if result.returncode != 0:
            return None
        report = last[0] = json.loads(result.stdout)[MODEL]
        counts = report["requests"]
        done = counts["compared"] + counts["dropped"] + counts["skipped"]
        return report if counts["seen"] == sent and done == counts["sampled"] else None
    try:
        report = wait_until(summed, timeout=60, interval=0.5, what="every node's report of every request")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; sent {sent}, last report's counts: {last[0].get('requests')}, "
                             f"nodes {last[0].get('nodes')}") from None
    assert report["candidate"] == 2 and report["primary"] == [1] and report["running"]
    assert len(report["nodes"]) == len(_serving(cluster)) and report["requests"]["compared"] >= sent // 2
    top1 = report["outputs"]["scores"]["classifier"]
    assert abs(top1["top1_changed_percent"] - 5.0) <= 1.0 and top1["regression"], top1
    assert report["verdict"] == "differs" and report["examples"]
    example = report["examples"][0]
    row = example["outputs"]["scores"]["top1"][0]["row"]
    assert example["inputs"]["x"][row][0] == -1.0 and example["node"] in report["nodes"]
    for node in nodes:   # the node's own report is not for the network
        assert requests.get(cluster.rest(node) + "/appliance/v1/shadow", timeout=5).status_code == 404
    text = _cli_ok(first, "shadow", "report", MODEL)
    assert "verdict: DIFFERS (regressions in: scores); agreement 95.0% of inputs" in text
    assert "top-1 agreement 95.0%" in text

    out = _cli_ok(first, "shadow", "stop", MODEL)
    assert "stopped" in out
    wait_until(lambda: _loaded(cluster, {1}), timeout=120, what="the candidate unloaded everywhere")
    wait_until(lambda: not json.loads(_cli_ok(first, "shadow", "report", MODEL, "--json"))[MODEL]["running"],
               timeout=30, what="the report marked stopped")
