"""Issue 19 on the shared 3+1 dev cluster: a model's runtime is a cluster setting.

`appliance fleet set MODEL platform=openvino` on one node moves the model onto OpenVINO on every
serving node while clients keep sending through every node's Envoy (REST and gRPC) and never
see a failure; every node's `status`, `models ls` and `doctor` then name the runtime; `fleet
unset` hands the model back to ``platform: auto`` (the default) the same way.
"""

from __future__ import annotations

import json

import pytest

from appliance import devcluster
from tests.conftest import wait_until
from tests.e2e.shared_cluster import MODEL, REPORT, Cluster, Load, grpc_sender, rest_sender
from tests.e2e.test_cluster import _cli_ok, _node_cli

pytestmark = pytest.mark.slow


def _runtimes(node: devcluster.DevNode) -> dict[str, dict]:
    """version -> the runtime serving it, as the node's `status --json` says."""
    versions = json.loads(_cli_ok(node, "status", "--json"))["models"][MODEL]
    return {v["version"]: v["runtime"] for v in versions if v.get("runtime")}


def _on(serving: list[devcluster.DevNode], platform: str) -> bool:
    return all(r and all(c["platform"] == platform for c in r.values())
               for r in (_runtimes(n) for n in serving))


def test_a_model_moves_onto_openvino_on_every_node_and_back_without_a_failed_request(cluster: Cluster) -> None:
    serving = [n for n in devcluster.load(cluster.base) if n.role == "serving"]
    assert _on(serving, "tensorflow"), [_runtimes(n) for n in serving]   # auto: no warmup set to measure
    senders = [rest_sender(cluster.rest(n)) for n in serving]
    senders += [grpc_sender(f"{n.address}:{cluster.ports['grpc.port']}") for n in serving]
    turn = iter(range(1 << 62))

    def send() -> bool:
        return senders[next(turn) % len(senders)]()
    try:
        with Load(send, threads=3) as load:
            _cli_ok(serving[0], "fleet", "set", MODEL, "platform=openvino")
            wait_until(lambda: _on(serving, "openvino"), timeout=180, interval=1,
                       what=f"{MODEL} on OpenVINO on every serving node")
            on_openvino = load.count()
            wait_until(lambda: load.count() > on_openvino + 60, timeout=60, what="requests on OpenVINO")
        assert load.count() > 100 and load.failures() == 0, (load.count(), load.failures())
        for node in serving:
            line = next(iter(_runtimes(node).values()))["line"]
            assert line == "openvino f32 (configured)", line
            assert "runtime: openvino f32 (configured)" in _cli_ok(node, "models", "ls")
            # The runtimes' lines (other tests of the session may leave the doctor other problems).
            doctor = [line for line in _node_cli(node, "doctor").stdout.splitlines() if "[runtimes]" in line]
            assert any(line.startswith(f"  ok   [runtimes] model {MODEL} version ") and
                       line.endswith(": openvino f32 (configured)") for line in doctor), doctor
            assert not any("FAIL" in line for line in doctor), doctor
        REPORT["runtime_switch"] = {"requests": load.count(), "failed": load.failures()}
        print(json.dumps(REPORT["runtime_switch"]))
    finally:
        with Load(send, threads=3) as load:
            _cli_ok(serving[0], "fleet", "unset", MODEL, "platform")
            wait_until(lambda: _on(serving, "tensorflow"), timeout=180, interval=1,
                       what=f"{MODEL} back on TensorFlow (platform auto) on every serving node")
    assert load.failures() == 0, (load.count(), load.failures())
