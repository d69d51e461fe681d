"""Issue 16, the edge of one node (real Envoy, model server, supervisord): API keys (401 / 403 /
200 on REST and gRPC, rotation without a restart, no key in any log), IP allow / deny lists from
127.0.12.x source addresses and behind a trusted proxy, and the rate limits of the node, of a model
and of a key under load (429 with Retry-After, RESOURCE_EXHAUSTED).

Measured rates are written to test-artifacts/edge-report.json.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from appliance import pki
from appliance.config import NodePaths
from appliance.envoy_admin import read_cluster_view
from modelserver.atomic import write_atomic
from tests.conftest import ARTIFACTS
from tests.edgeload import BODY, Sender, grpc_sender, load, rest_sender
from tests.integration.node_harness import NodeUnderTest, new_node, node_running

MODEL = "saved_model_half_plus_two_mkl"
OTHER = "half_again"           # the same model files under a second name: a model a key may not call
NODE_ADDRESS = os.environ.get("APPLIANCE_EDGE_NODE", "127.0.12.20")
CLIENTS = [NODE_ADDRESS.rsplit(".", 1)[0] + f".{int(NODE_ADDRESS.rsplit('.', 1)[1]) + i}" for i in (1, 2, 3, 4)]
REPORT: dict[str, object] = {}


@pytest.fixture(scope="module")
def node(builtin_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    root = tmp_path_factory.mktemp("edge")
    node = new_node(root, builtin_models, [MODEL], address=NODE_ADDRESS)
    (root / "data/models" / OTHER).symlink_to(builtin_models / MODEL, target_is_directory=True)
    config = root / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"model.name": f"{MODEL},{OTHER}", "enable.access.log": True}))
    started = node.cli("up", "--timeout", "300", *node.overrides)
    with node_running(node, started):
        yield node
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "edge-report.json").write_text(json.dumps(REPORT, indent=2))


def _edit(node: NodeUnderTest, **values: object) -> None:
    """Set keys in the node's config file (None: remove) and apply it with `appliance reload`."""
    path = node.root / "etc/appliance/appliance.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in values.items():
        key = key if "." in key else key.replace("_", ".")
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    # Renamed into place: the agent, which follows the file too, never reads half of it.
    write_atomic(path, yaml.safe_dump(doc), path.stat().st_mode & 0o777)
    result = node.cli("reload", "--timeout", "120", *node.overrides)
    assert result.returncode == 0, result.stdout + result.stderr


def _post(node: NodeUnderTest, path: str = f"/v1/models/{MODEL}:predict", headers: dict | None = None,
          source: str | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one REST request, from ``source`` when given."""
    conn = http.client.HTTPConnection(node.address, node.http_port, timeout=30,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("POST", path, BODY, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"text": body.decode("utf-8", "replace")}
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, doc
    finally:
        conn.close()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _predict_request(model: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([1.0, 2.0])
    return request


def _grpc(node: NodeUnderTest, model: str = MODEL, metadata: tuple = ()) -> grpc.StatusCode:
    with grpc.insecure_channel(f"{node.address}:{node.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = _predict_request(model)
        try:
            response = stub.Predict(request, timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
        assert list(response.outputs["y"].float_val) == [2.5, 3.0]
        return grpc.StatusCode.OK


def _key(node: NodeUnderTest, *args: str) -> str:
    """Run `appliance keys ...`; the key it prints once."""
    result = node.cli("keys", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"^\S+: (ie_\S+)$", result.stdout, re.M)
    return found.group(1) if found else ""


def _pids(node: NodeUnderTest) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in node.status()["processes"]}


def _healthy(node: NodeUnderTest) -> bool:
    _, clusters = read_cluster_view(node.admin_port)
    return all(h.health == "HEALTHY" for c in clusters for h in c.hosts) and bool(clusters)


# ----------------------------------------------------------------------------- API keys


def test_api_keys_on_rest_and_grpc_rotation_without_restart_and_no_key_in_any_log(node: NodeUnderTest) -> None:
    _edit(node, auth_required=True)
    try:
        status, headers, body = _post(node)
        assert status == 401 and "API key" in body["error"] and headers["www-authenticate"] == "Bearer"
        assert _grpc(node) == grpc.StatusCode.UNAUTHENTICATED
        assert _healthy(node), "Envoy's health checks pass with keys required"

        alice = _key(node, "add", "alice", "--models", MODEL)
        bob = _key(node, "add", "bob")
        assert _post(node, headers={"x-api-key": "ie_wrong"})[0] == 401
        status, headers, body = _post(node, headers=_bearer(alice))
        assert (status, body) == (200, {"predictions": [2.5, 3.0]})
        assert headers["x-appliance-key-name"] == "alice"
        status, _, body = _post(node, f"/v1/models/{OTHER}:predict", _bearer(alice))
        assert status == 403 and body["error"] == f"API key alice may not call model {OTHER}"
        assert _post(node, f"/v1/models/{OTHER}:predict", {"x-api-key": bob})[0] == 200
        assert _grpc(node, metadata=(("authorization", f"Bearer {alice}"),)) == grpc.StatusCode.OK
        assert _grpc(node, OTHER, (("authorization", f"Bearer {alice}"),)) == grpc.StatusCode.PERMISSION_DENIED
        assert _grpc(node, OTHER, (("x-api-key", bob),)) == grpc.StatusCode.OK
        assert _grpc(node, metadata=(("authorization", "Bearer ie_wrong"),)) == grpc.StatusCode.UNAUTHENTICATED

        before = _pids(node)
        rotating = time.monotonic()
        new_alice = _key(node, "rotate", "alice")
        # `keys rotate` returns once the model server follows the new keys file
        assert _post(node, headers=_bearer(new_alice))[0] == 200
        assert _post(node, headers=_bearer(alice))[0] == 401
        REPORT["rotation_command_seconds"] = round(time.monotonic() - rotating, 2)
        assert _pids(node) == before, "no process restarted"
        _key(node, "revoke", "bob")
        assert _grpc(node, OTHER, (("x-api-key", bob),)) == grpc.StatusCode.UNAUTHENTICATED
        assert _pids(node) == before

        logs = [p for p in (node.root / "var/log/appliance").rglob("*") if p.is_file()]
        assert any(p.name == "access.log" for p in logs)
        for path in logs + [node.root / "etc/appliance/appliance.yaml", node.root / "var/lib/appliance/run/api-keys.json"]:
            text = path.read_bytes()
            for key in (alice, new_alice, bob):
                assert key.encode() not in text, f"a key in {path}"
        assert oct((node.root / "var/lib/appliance/run/api-keys.json").stat().st_mode & 0o777) == "0o600"
    finally:
        _key(node, "revoke", "alice")
        _edit(node, auth_required=None)


def test_a_model_may_require_a_key_alone_and_keys_rotate_within_a_second_of_the_file(node: NodeUnderTest) -> None:
    _edit(node, **{f"models.{OTHER}.auth.required": True})
    try:
        assert _post(node)[0] == 200
        assert _post(node, f"/v1/models/{OTHER}:predict")[0] == 401
        key = _key(node, "add", "carol")
        assert _post(node, f"/v1/models/{OTHER}:predict", _bearer(key))[0] == 200
        # the model server follows a changed keys file by itself, within a second (no reload)
        keys_file = node.root / "var/lib/appliance/run/api-keys.json"
        doc = json.loads(keys_file.read_text())
        doc["keys"] = {}
        tmp = keys_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.chmod(0o600)
        written = time.monotonic()
        os.replace(tmp, keys_file)
        while _post(node, f"/v1/models/{OTHER}:predict", _bearer(key))[0] == 200:
            assert time.monotonic() - written < 5
        REPORT["keys_file_change_to_refusal_seconds"] = round(time.monotonic() - written, 3)
    finally:
        _key(node, "revoke", "carol")
        _edit(node, **{f"models.{OTHER}.auth.required": None})


# ----------------------------------------------------------------------------- IP lists


def test_ip_allow_and_deny_lists_on_the_client_address(node: NodeUnderTest) -> None:
    allowed, denied, other, _ = CLIENTS
    _edit(node, ip_allow=f"{allowed},{denied}", ip_deny=denied)
    try:
        assert _post(node, source=allowed)[0] == 200
        status, _, body = _post(node, source=denied)
        assert (status, body) == (403, {"text": "RBAC: access denied"})
        assert _post(node, source=other)[0] == 403
        # a client cannot claim another address when no proxy is trusted
        assert _post(node, headers={"X-Forwarded-For": allowed}, source=other)[0] == 403
    finally:
        _edit(node, ip_allow=None, ip_deny=None)
    assert _post(node, source=other)[0] == 200


def test_behind_a_trusted_proxy_the_forwarded_client_address_counts(node: NodeUnderTest) -> None:
    client, denied, proxy, _ = CLIENTS
    _edit(node, ip_allow=client, ip_trusted_proxies=1)
    try:
        assert _post(node, headers={"X-Forwarded-For": client}, source=proxy)[0] == 200
        assert _post(node, headers={"X-Forwarded-For": f"{client}, {denied}"}, source=proxy)[0] == 403
        assert _post(node, headers={"X-Forwarded-For": denied}, source=proxy)[0] == 403
        assert _grpc(node, metadata=(("x-forwarded-for", client),)) == grpc.StatusCode.OK
        assert _grpc(node, metadata=(("x-forwarded-for", denied),)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        _edit(node, ip_allow=None, ip_trusted_proxies=None)


# ----------------------------------------------------------------------------- rate limits


def _sender(node: NodeUnderTest, path: str = f"/v1/models/{MODEL}:predict", headers: dict | None = None) -> Sender:
    return rest_sender(node.address, node.http_port, path, headers)


def _envoy_rate_limited(node: NodeUnderTest) -> int:
    """Requests the node's bucket refused: one bucket for every public listener (rds.yaml)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.admin_port, timeout=5)
    conn.request("GET", "/stats?filter=^edge_rate.http_local_rate_limit.rate_limited$")
    text = conn.getresponse().read().decode()
    conn.close()
    found = re.search(r"rate_limited: (\d+)", text)
    return int(found.group(1)) if found else 0


def test_the_nodes_rate_limit_under_load(node: NodeUnderTest) -> None:
    rate = 40
    _edit(node, rate_node=rate)
    try:
        limited_before = _envoy_rate_limited(node)
        result = load([_sender(node)], 6.0)
        result["envoy_rate_limited"] = _envoy_rate_limited(node) - limited_before
        REPORT["node_rate"] = {"configured": rate, **result}
        print(json.dumps(REPORT["node_rate"]))
        assert result["counts"].get(429, 0) > result["counts"][200], "the load exceeds the limit"
        assert result["allowed_per_second"] == pytest.approx(rate, rel=0.10)
        assert result["retry_after_on_every_429"]
        assert result["envoy_rate_limited"] == result["counts"][429], "Envoy's own count agrees"
        assert _grpc_until_exhausted(node)
    finally:
        _edit(node, rate_node=None)


def test_one_bucket_for_the_node_whichever_port_and_transport_a_client_uses(node: NodeUnderTest) -> None:
    """rate.node is the node's rate, not each listener's: REST in plain text, REST over TLS and
    gRPC at once are allowed the configured rate together (one bucket on the public listeners'
    shared route configuration), and every refusal is counted by that one bucket."""
    rate = 40
    _edit(node, rate_node=rate)
    try:
        cafile = str(pki.tls_dir(NodePaths(node.root)) / "edge.crt")
        senders = [_sender(node), rest_sender(node.address, node.http_port, f"/v1/models/{MODEL}:predict", cafile=cafile),
                   grpc_sender(node.address, node.grpc_port, MODEL)]
        assert all(send()[0] in (200, 429) for send in senders), "each way in answers"
        limited_before = _envoy_rate_limited(node)
        result = load(senders, 6.0, threads=2)
        result["envoy_rate_limited"] = _envoy_rate_limited(node) - limited_before
        REPORT["node_rate_three_ways"] = {"configured": rate, **result}
        print(json.dumps(REPORT["node_rate_three_ways"]))
        assert set(result["counts"]) <= {200, 429}, result["counts"]
        assert result["allowed_per_second"] == pytest.approx(rate, rel=0.10), \
            "REST, REST over TLS and gRPC share the node's one bucket"
        assert result["retry_after_on_every_429"]
        assert result["envoy_rate_limited"] == result["counts"][429], "the one bucket refused every 429"
    finally:
        _edit(node, rate_node=None)


def _grpc_until_exhausted(node: NodeUnderTest) -> bool:
    """A burst of gRPC calls over the limit: RESOURCE_EXHAUSTED, not UNAVAILABLE."""
    with grpc.insecure_channel(f"{node.address}:{node.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(_predict_request(MODEL), timeout=30) for _ in range(40)]
        codes = {call.code() for call in calls}
    return grpc.StatusCode.RESOURCE_EXHAUSTED in codes and codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_a_models_and_a_keys_rate_limits_in_the_model_server(node: NodeUnderTest) -> None:
    rate = 25
    _edit(node, **{f"models.{MODEL}.rate": rate})
    try:
        result = load([_sender(node)], 6.0)
        REPORT["model_rate"] = {"configured": rate, **result}
        print(json.dumps(REPORT["model_rate"]))
        assert result["allowed_per_second"] == pytest.approx(rate, rel=0.10)
        assert result["retry_after_on_every_429"] and result["counts"].get(429, 0) > 0
        assert _post(node, f"/v1/models/{OTHER}:predict")[0] == 200, "another model is not limited"
        assert _grpc_until_exhausted(node)
    finally:
        _edit(node, **{f"models.{MODEL}.rate": None})
    key = _key(node, "add", "dave", "--rate", "10")
    try:
        result = load([_sender(node, headers=_bearer(key))], 4.0, threads=4)
        REPORT["key_rate"] = {"configured": 10, **result}
        assert result["allowed_per_second"] == pytest.approx(10, rel=0.10)
        status, headers, body = _post(node, headers=_bearer(key))
        while status == 200:
            status, headers, body = _post(node, headers=_bearer(key))
        assert status == 429 and headers["retry-after"] == "1" and body["error"] == "Rate limit of API key dave exceeded"
        assert _post(node)[0] == 200, "requests without the key are not limited by it"
    finally:
        _key(node, "revoke", "dave")
