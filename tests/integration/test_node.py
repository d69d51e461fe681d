"""A whole node, for real: `appliance up` starts supervisord, Envoy and the model server under a
temp root on free loopback ports; requests go through Envoy; `appliance down` stops every PID."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from appliance import promtext, runconfig
from appliance.config import NodePaths
from tests.conftest import Processes, wait_until
from tests.integration.node_harness import CLI, NodeUnderTest, new_node, node_running, wait_gone
from tests.jpeg import make_jpeg

pytestmark = pytest.mark.slow
MODELS = ["saved_model_half_plus_two_mkl", "resnet"]
EXTRA = ["--set", "enable.access.log=true", "--set", "sync.interval.seconds=1"]


@pytest.fixture(scope="module")
def node(builtin_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    node = new_node(tmp_path_factory.mktemp("node"), builtin_models, MODELS)
    started = node.cli("up", "--timeout", "300", *EXTRA, *node.overrides)
    with node_running(node, started):
        yield node


def test_the_user_guide_request_through_envoy(node: NodeUnderTest) -> None:
    resp = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                         data='{"instances": [1.0, 2.0, 5.0]}', timeout=30)
    assert resp.status_code == 200
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert resp.text == '{"predictions": [2.5, 3.0, 4.5]}'
    assert resp.headers["content-type"] == "application/json"


def test_resnet_takes_a_base64_jpeg_through_envoy(node: NodeUnderTest) -> None:
    image = base64.b64encode(make_jpeg(seed=1)).decode()
    resp = requests.post(f"{node.url}/v1/models/resnet:predict",
                         json={"instances": [{"b64": image}]}, timeout=120)
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["predictions"]
    probabilities = prediction["probabilities"]
    assert isinstance(prediction["classes"], int)
    assert 0 <= prediction["classes"] < len(probabilities)
    assert abs(sum(probabilities) - 1.0) < 1e-3
    assert probabilities.index(max(probabilities)) == prediction["classes"]


MALFORMED = [
    # (method, path, body, status, error text)
    ("POST", "/v1/models/saved_model_half_plus_two_mkl:predict", "", 400,
     "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/saved_model_half_plus_two_mkl:predict", "{bad json", 400, "JSON Parse error"),
    ("POST", "/v1/models/nosuchmodel:predict", '{"instances": [1.0]}', 404,
     "Servable not found for request: Latest(nosuchmodel)"),
    ("POST", "/v1/models/saved_model_half_plus_two_mkl:predict", '{"instances": ["a"]}', 400,
     "is not of expected type: float"),
    ("POST", "/v1/models/saved_model_half_plus_two_mkl:predict",
     '{"signature_name": "nope", "instances": [1.0]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/saved_model_half_plus_two_mkl:predict", '{"nothing": 1}', 400,
     "Missing 'inputs' or 'instances' key"),
    ("GET", "/v1/models/nosuchmodel", None, 404, "Could not find any versions of model nosuchmodel"),
    ("GET", "/v1/models/saved_model_half_plus_two_mkl:predict", None, 400, "Malformed request"),
]


@pytest.mark.parametrize("method,path,body,status,error", MALFORMED)
def test_malformed_requests_get_tf_serving_errors(node: NodeUnderTest, method: str, path: str,
                                                  body: str | None, status: int, error: str) -> None:
    resp = requests.request(method, node.url + path, data=body, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert error in resp.json()["error"]
    # and the server is still up
    ok = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                       data='{"instances": [1.0]}', timeout=30)
    assert ok.json() == {"predictions": [2.5]}


def test_status_shows_processes_uptime_and_model_versions(node: NodeUnderTest) -> None:
    status = node.status()
    processes = {p["name"]: p for p in status["processes"]}
    assert {"envoy", "model_server"} <= set(processes)
    assert all(p["state"] == "RUNNING" and p["pid"] > 0 for p in processes.values())
    assert all(p["uptime_seconds"] >= 0 for p in processes.values())
    assert status["models"]["saved_model_half_plus_two_mkl"][0]["state"] == "AVAILABLE"
    assert status["models"]["resnet"][0]["state"] == "AVAILABLE"
    # the sizing the processes run with (the harness sets two Envoy workers)
    envoy = Path(f"/proc/{processes['envoy']['pid']}/task")
    assert status["sizing"]["envoy_workers"] == 2 == sum(
        1 for comm in envoy.glob("*/comm") if comm.read_text().startswith("wrk:worker"))
    text = node.cli("status").stdout
    assert "model_server" in text and "RUNNING" in text and "resnet" in text and "AVAILABLE" in text


def test_access_log_names_the_upstream(node: NodeUnderTest) -> None:
    # Told apart by its size: Envoy flushes the log once a second, so the last line there may
    # still be an earlier test's (a GET of :predict among them).
    body = '{"instances": [3.0]}' + " " * 321
    requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict", data=body, timeout=30)
    log = node.root / "var/log/appliance/access.log"

    def predict_lines() -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [entry for entry in lines if entry["path"].endswith(":predict")
                and int(entry["bytes_received"]) == len(body)]

    (entry,) = wait_until(predict_lines, timeout=15, what="the request's access log line")
    # Its own model server, on loopback: REST over HTTP/2 on the gRPC port (issue 15).
    assert entry["upstream_host"] == f"127.0.0.1:{node.model_grpc_port}"
    assert entry["method"] == "POST"


def test_up_again_changes_nothing(node: NodeUnderTest) -> None:
    pids = sorted(p["pid"] for p in node.status()["processes"])
    again = node.cli("up", "--timeout", "120", *EXTRA, *node.overrides)
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    assert sorted(p["pid"] for p in node.status()["processes"]) == pids


def test_envoy_admin_is_on_loopback_only(node: NodeUnderTest) -> None:
    ready = requests.get(f"http://127.0.0.1:{node.admin_port}/ready", timeout=5)
    assert ready.status_code == 200
    text = (node.root / "var/lib/appliance/run/envoy.yaml").read_text()
    assert f"address: {{socket_address: {{address: 127.0.0.1, port_value: {node.admin_port}}}}}" in text


def test_foreground_up_stops_every_process_on_ctrl_c(builtin_models: Path, tmp_path: Path,
                                                     processes: Processes) -> None:
    node = new_node(tmp_path, builtin_models, ["saved_model_half_plus_two_mkl"])
    log = tmp_path / "foreground.log"
    proc = processes.start(CLI + ["--root", str(node.root), "up", "--foreground",
                                  "--set", "model.name=saved_model_half_plus_two_mkl",
                                  *node.overrides], log=log)

    def answers() -> bool:
        resp = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                             data='{"instances": [1.0, 2.0, 5.0]}', timeout=5)
        return resp.json() == {"predictions": [2.5, 3.0, 4.5]}

    wait_until(answers, timeout=240, what="the node to serve")
    pids = node.pids()
    assert len(pids) >= 3  # supervisord, envoy, the model server (and the logviewer)
    processes.stop(proc, sig=signal.SIGINT, timeout=90)  # what Ctrl-C sends to the foreground group
    assert wait_gone(pids + [proc.pid], 30) == []
    assert "stopped" in log.read_text()
    with pytest.raises(OSError):
        socket.create_connection((node.address, node.http_port), timeout=1)


def test_a_node_started_on_one_cpu_sizes_itself_for_one(builtin_models: Path, tmp_path: Path) -> None:
    """`appliance up` pinned to one CPU (as taskset, a cpuset or a container's --cpuset-cpus
    would) runs one Envoy worker and one runtime thread, not one per CPU of the machine, and
    `status` reads that from the running processes."""
    node = new_node(tmp_path, builtin_models, ["saved_model_half_plus_two_mkl"])
    pairs = node.overrides[1::2]
    overrides = [arg for pair in pairs if not pair.startswith("envoy.concurrency=") for arg in ("--set", pair)]
    started = subprocess.run(["taskset", "-c", "0", *CLI, "--root", str(node.root), "up", "--timeout", "240",
                              "--set", "model.name=saved_model_half_plus_two_mkl", *overrides],
                             capture_output=True, text=True, timeout=300)
    with node_running(node, started):
        envoy = next(p["pid"] for p in node.status()["processes"] if p["name"] == "envoy")
        workers = [c for c in Path(f"/proc/{envoy}/task").glob("*/comm") if c.read_text().startswith("wrk:worker")]
        assert len(workers) == 1
        assert node.status()["sizing"] == {"cpus": 1, "envoy_workers": 1, "model_server_threads": 1}
        assert "sizing: 1 CPUs -> 1 Envoy workers, 1 model server threads" in node.cli("status").stdout
        # The node's metrics page counts the same CPUs (`capacity` divides the CPU time by them).
        token = (node.root / "etc/appliance/metrics.token").read_text().strip()
        page = requests.get(f"{node.logviewer_url}/metrics", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        assert page.status_code == 200, page.text[:300]
        assert [s.value for s in promtext.parse(page.text) if s.name == "appliance_node_cpu_cores"] == [1.0]
        resp = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                             data='{"instances": [1.0]}', timeout=10)
        assert resp.json() == {"predictions": [2.5]}


def test_up_refuses_a_missing_model_and_starts_nothing(tmp_path: Path) -> None:
    node = new_node(tmp_path, tmp_path, [])
    result = node.cli("up", "--set", "model.name=ghost", *node.overrides, timeout=60)
    assert result.returncode != 0
    assert "no version of model(s) ghost" in result.stderr
    assert not (tmp_path / "var/lib/appliance/run/supervisord.pid").exists()


def test_resnet_metadata_says_its_weights_are_random(node: NodeUnderTest) -> None:
    resp = requests.get(f"{node.url}/v1/models/resnet/metadata", timeout=30)
    assert resp.status_code == 200
    metadata = resp.json()["metadata"]
    assert "random" in metadata["model_card"]["weights"]
    signature = metadata["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def test_grpc_predict_through_envoy(node: NodeUnderTest) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    import tensorflow as tf

    with grpc.insecure_channel(f"{node.address}:{node.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "saved_model_half_plus_two_mkl"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
        response = stub.Predict(request, timeout=30)
        assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]
        assert response.model_spec.signature_name == "serving_default"
        request.model_spec.name = "nosuchmodel"
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_config_reload_through_envoy_is_refused(node: NodeUnderTest) -> None:
    """HandleReloadConfigRequest would reconfigure whichever model server it reached, for anyone
    who can reach the public port: Envoy answers PERMISSION_DENIED and the models keep serving."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="other", base_path="/tmp/other", model_platform="tensorflow")
    with grpc.insecure_channel(f"{node.address}:{node.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "set models in appliance.yaml" in err.value.details()
    answer = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                           json={"instances": [1.0]}, timeout=30)
    assert answer.json() == {"predictions": [2.5]}


def test_membership_follows_the_config_file_and_cluster_commands(node: NodeUnderTest,
                                                                cluster_ca: dict[str, str]) -> None:
    """Editing cluster.members in the config file is all a user does: the agent re-points Envoy
    (no restart; with the cluster CA given at the same time, the node issues its certificate
    and Envoy loads it with the new listener and clusters); `appliance cluster remove-node`
    takes a member out again."""
    from appliance.envoy_admin import read_cluster_view

    def hosts() -> set[str]:
        _, clusters = read_cluster_view(node.admin_port)
        return {h.address.split(":")[0] for c in clusters for h in c.hosts}

    envoy_pid = {p["name"]: p["pid"] for p in node.status()["processes"]}["envoy"]
    config_file = node.root / "etc/appliance/appliance.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump({"cluster.members": f"{node.address},127.0.0.250",
                                           **cluster_ca}))
    config_file.chmod(0o600)
    wait_until(lambda: hosts() == {node.address, "127.0.0.250"}, timeout=60,
               what="the agent to add the member from the config file")
    for _ in range(10):  # the dead member gets no traffic: its health checks fail
        ok = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                           data='{"instances": [1.0]}', timeout=30)
        assert ok.status_code == 200
    result = node.cli("cluster", "remove-node", "127.0.0.250")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: hosts() == {node.address}, timeout=30, what="the member to leave")
    assert "127.0.0.250" not in config_file.read_text()
    assert node.cli("cluster", "members").stdout.split() == [node.address]
    assert {p["name"]: p["pid"] for p in node.status()["processes"]}["envoy"] == envoy_pid


def test_up_with_a_changed_config_touches_only_what_changed(node: NodeUnderTest) -> None:
    """A model dropped from model.name is unloaded live, the logviewer switched off is stopped,
    and the processes that did not change keep their PIDs; then everything comes back."""
    def pids() -> dict[str, int]:
        return {p["name"]: p["pid"] for p in node.status()["processes"]}

    before = pids()
    smaller = node.cli("up", "--timeout", "120", *EXTRA, *node.overrides,
                       "--set", "model.name=saved_model_half_plus_two_mkl",
                       "--set", "logviewer.enabled=false")
    assert smaller.returncode == 0, smaller.stdout + smaller.stderr
    assert "the model server re-reads it (no restart)" in smaller.stdout
    assert "stopped logviewer" in smaller.stdout
    after = pids()
    assert "logviewer" not in after
    assert {k: after[k] for k in ("model_server", "envoy", "agent")} == \
        {k: before[k] for k in ("model_server", "envoy", "agent")}
    predict = f"{node.model_server_url}/v1/models/resnet:predict"
    wait_until(lambda: requests.post(predict, data='{"instances": []}', timeout=5).status_code == 404,
               timeout=60, what="resnet unloaded by the config reload")
    status = requests.get(f"{node.model_server_url}/v1/models/resnet", timeout=5)
    # history kept, as TF Serving: UNLOADING while in-flight requests drain, then END
    assert status.json()["model_version_status"][0]["state"] in ("UNLOADING", "END")
    restored = node.cli("up", "--timeout", "300", *EXTRA, *node.overrides)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "started logviewer" in restored.stdout
    again = pids()
    assert again["model_server"] == before["model_server"] and "logviewer" in again
    resnet = requests.get(f"{node.url}/v1/models/resnet", timeout=30).json()
    assert resnet["model_version_status"][0]["state"] == "AVAILABLE"


def _logviewer(node: NodeUnderTest) -> requests.Session:
    """A logged-in session of the node's logviewer (a new password, set through the CLI)."""
    said = node.cli("logviewer-password")
    password = re.search(r"shown once\): (\S+)", said.stdout).group(1)
    session = requests.Session()
    login = session.get(f"{node.logviewer_url}/login", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    assert session.post(f"{node.logviewer_url}/login", timeout=30,
                        data={"password": password, "csrf_token": token}).ok
    return session


def _pids(node: NodeUnderTest) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in node.status()["processes"]}


def test_a_change_reaches_envoy_and_the_logviewer_and_reload_does_what_up_does(
        node: NodeUnderTest) -> None:
    """`reload` and `up` on a running node are one path (control.apply): switching the access log
    off and on reaches Envoy (its listeners, through LDS) and the logviewer's pages, and no
    process restarts: the logviewer and the agent follow the running config."""
    session = _logviewer(node)
    kept = ("logviewer", "agent", "model_server", "envoy")
    before = _pids(node)
    off = [*node.overrides, "--set", "sync.interval.seconds=1", "--set", "enable.access.log=false"]
    reloaded = node.cli("reload", "--timeout", "120", *off)
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert "running config changed" in reloaded.stdout
    assert "Envoy swaps them in (no restart)" in reloaded.stdout
    assert "ok  Envoy loaded the new listeners" in reloaded.stdout   # before reload says it is done
    assert "enable.access.log=true" in session.get(f"{node.logviewer_url}/access", timeout=30).text
    same = node.cli("up", "--timeout", "120", *off)
    assert same.returncode == 0 and "already up; nothing changed" in same.stdout, same.stdout
    on = node.cli("up", "--timeout", "120", *EXTRA, *node.overrides)
    assert on.returncode == 0, on.stdout + on.stderr
    again = node.cli("reload", "--timeout", "120", *EXTRA, *node.overrides)
    assert again.returncode == 0 and "already up; nothing changed" in again.stdout, again.stdout
    answer = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                           data='{"instances": [1.0]}', timeout=30)
    assert answer.status_code == 200
    page = wait_until(lambda: (text := session.get(f"{node.logviewer_url}/access", timeout=30).text)
                      and ":predict" in text and text, 30, what="the request on the Access log page")
    assert "enable.access.log=true" not in page, "the page says the access log is on"
    after = _pids(node)
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}


def test_an_invalid_edit_of_the_config_file_changes_nothing(node: NodeUnderTest) -> None:
    """The agent applies a valid edit of the config file (tested with cluster.members above);
    an invalid one is logged by key path -- never its value -- and nothing changes."""
    config_file = node.root / "etc/appliance/appliance.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    kept = config_file.read_text() if config_file.exists() else ""
    paths = NodePaths(node.root)
    rendered = [paths.run / name for name in ("supervisord.conf", "envoy.yaml", "models.config")]
    before = (runconfig.read(paths).values, [p.read_bytes() for p in rendered])
    pids = _pids(node)
    agent_log = node.root / "var/log/appliance/agent.log"
    try:
        config_file.write_text(kept + "sync.concurrency: SOONISH\n")
        wait_until(lambda: "keys: sync.concurrency" in agent_log.read_text(), 30,
                   what="the agent to refuse the edit")
        assert "SOONISH" not in agent_log.read_text()
        refused = node.cli("reload", *EXTRA, *node.overrides)
        assert refused.returncode == 2 and "sync.concurrency" in refused.stderr
    finally:
        config_file.write_text(kept)
    assert (runconfig.read(paths).values, [p.read_bytes() for p in rendered]) == before
    assert _pids(node) == pids


@pytest.mark.parametrize("path", ["/monitoring/prometheus/metrics", "/appliance/v1/applied-config"])
def test_the_model_servers_own_pages_are_not_served_through_envoy(node: NodeUnderTest, path: str) -> None:
    """The metrics page is read on loopback and served behind the metrics token (GET /metrics on
    the logviewer's port), /appliance/* is for the node's own processes: the public REST port
    must not hand them to anyone who asks."""
    assert requests.get(f"{node.model_server_url}{path}", timeout=30).status_code == 200
    for query in ("", "?x=1"):
        public = requests.get(f"{node.url}{path}{query}", timeout=30)
        assert public.status_code == 404 and b":tensorflow:" not in public.content


def test_doctor_finds_nothing_wrong_on_a_healthy_serving_node(node: NodeUnderTest) -> None:
    result = node.cli("doctor", *EXTRA, *node.overrides, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and result.stdout.rstrip().endswith("no problems found")
    assert "the model server follows the node's models.config" in result.stdout, result.stdout


def test_doctor_reads_the_scrape_page_with_the_nodes_token(node: NodeUnderTest) -> None:
    """A token file that is no token makes every scrape fail (HTTP 500): the doctor says so
    rather than "ok" from the config alone."""
    token = node.root / "etc/appliance/metrics.token"
    saved = token.read_bytes() if token.exists() else None
    try:
        token.write_text("short\n")
        broken = node.cli("doctor", *EXTRA, *node.overrides, timeout=120)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "FAIL [metrics]" in broken.stdout and "too short to be a token" in broken.stdout
    finally:
        token.unlink()
        if saved is not None:
            token.write_bytes(saved)
            token.chmod(0o600)
    fine = node.cli("doctor", *EXTRA, *node.overrides, timeout=120)
    assert "ok   [metrics] scrape page /metrics" in fine.stdout, fine.stdout


def test_a_changed_metrics_path_moves_the_model_servers_metrics_page(node: NodeUnderTest) -> None:
    """The model server reads monitoring.config at start only: a new metrics.path restarts it
    (and says so), so the page is where the config says once `reload` returns."""
    def page(path: str) -> int:
        return requests.get(f"{node.model_server_url}{path}", timeout=30).status_code

    before = _pids(node)
    moved = node.cli("reload", "--timeout", "300", *EXTRA, *node.overrides,
                     "--set", "metrics.path=/moved/metrics")
    try:
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "metrics.path) changed: restarting model_server" in moved.stdout
        assert (page("/moved/metrics"), page("/monitoring/prometheus/metrics")) == (200, 404)
        after = _pids(node)
        assert after["model_server"] != before["model_server"]
        assert {k: v for k, v in after.items() if k != "model_server"} == \
            {k: v for k, v in before.items() if k != "model_server"}
    finally:
        back = node.cli("reload", "--timeout", "300", *EXTRA, *node.overrides)
    assert back.returncode == 0, back.stdout + back.stderr
    assert page("/monitoring/prometheus/metrics") == 200
