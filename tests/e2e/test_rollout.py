"""Issue 18, canary: rollouts on the shared 3+1 dev cluster.

Two models of their own, pushed to the repository and served as ``versions: specific:1`` on
every node: ``canary_half`` (v1: 0.5x+2; v2: 0.5x+3; v3: 0.5x+3 but failing for x >= 0.9) and
``canary_slow`` (v1 and a v2 doing twice the work: medians of some 6 and 12 ms here, well apart
from the guards' 2 ms floor). The answer says which version served it.
Every test puts the cluster settings back; the module removes its models at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import requests
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from appliance import devcluster, rollout, runconfig
from appliance.config import NodePaths
from appliance.fleet import Fleet
from modelserver.atomic import write_atomic
from modelserver.rollout import SPLIT_HEADER, slot
from tests.conftest import wait_until
from tests.e2e.shared_cluster import REPORT, Cluster, Load
from tests.e2e.test_cluster import _cli_ok, _node_cli, _server_states

pytestmark = pytest.mark.slow

HALF, SLOW = "canary_half", "canary_slow"
BIAS = {1: 2.0, 2: 3.0, 3: 3.0}


@pytest.fixture(scope="module")
def canary(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from tests.tfmodels import canary as build, save_version

    built = tmp_path_factory.mktemp("canary-models")
    versions = {HALF: {1: build(2.0), 2: build(3.0), 3: build(3.0, fail_at=0.9)},
                SLOW: {1: build(2.0, work=400), 2: build(3.0, work=800)}}
    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    for name, builds in versions.items():
        for version, model in builds.items():
            save_version(built / name / str(version), model)
            _cli_ok(serving[0], "models", "push", str(built / name / str(version)), "--name", name,
                    "--version", str(version))
    config_files = {n.name: Path(n.root) / "etc/appliance/appliance.yaml" for n in nodes}
    before = {name: path.read_text() for name, path in config_files.items()}
    try:
        for node in nodes:   # every node's file at once: each agent applies its own (issue 11)
            values = yaml.safe_load(before[node.name])
            values["model.name"] = ",".join([values["model.name"], *versions])
            values.update({f"models.{name}.versions": "specific:1" for name in versions})
            write_atomic(config_files[node.name], yaml.safe_dump(values, sort_keys=False), mode=0o600)
        wait_until(lambda: all(_server_states(cluster, n, name) == {1: "AVAILABLE"}
                               for n in serving for name in versions),
                   timeout=120, what="v1 of the canary models AVAILABLE on every serving node")
        yield cluster
    finally:
        for name in versions:
            _reset(cluster, name)
        for name, path in config_files.items():
            write_atomic(path, before[name], mode=0o600)
        wait_until(lambda: all("AVAILABLE" not in _server_states(cluster, n, name).values()
                               for n in serving for name in versions),
                   timeout=60, what="the canary models gone from every serving node")


# ----------------------------------------------------------------------------- helpers


def _serving(cluster: Cluster) -> list[devcluster.DevNode]:
    return [n for n in devcluster.load(cluster.base) if n.role == "serving"]


def _fleet(cluster: Cluster) -> Fleet:
    paths = NodePaths(Path(_serving(cluster)[0].root))
    return Fleet.of_node(runconfig.read(paths).config, paths=paths)


def _reset(cluster: Cluster, model: str) -> None:
    """No rollout running and the model's cluster settings gone: each node's own apply again."""
    fleet = _fleet(cluster)
    state = rollout.read(fleet, model)
    if state is not None and state.state not in rollout.DONE:
        rollout.abort(fleet, model)
    keys = list(fleet.read().model(model))
    if keys:
        fleet.push(model, unset=keys, why="test cleanup")
    wait_until(lambda: all(_server_states(cluster, n, model) .get(1) == "AVAILABLE"
                           and len([s for s in _server_states(cluster, n, model).values()
                                    if s == "AVAILABLE"]) == 1 for n in _serving(cluster)),
               timeout=60, what=f"{model}: v1 alone on every serving node")


def _wait_state(cluster: Cluster, model: str, states: tuple[str, ...], timeout: float = 120) -> rollout.Rollout:
    fleet = _fleet(cluster)
    found: list[rollout.Rollout] = []

    def reached() -> bool:
        state = rollout.read(fleet, model)
        found[:] = [state] if state is not None else []
        return state is not None and state.state in states
    wait_until(reached, timeout=timeout, interval=0.1, what=f"rollout of {model} {'/'.join(states)}")
    return found[0]


def _version_of(x: float, y: float) -> int:
    """Which version answered 0.5x + bias."""
    return 1 if abs(y - (0.5 * x + 2.0)) < 1e-4 else 2 if abs(y - (0.5 * x + 3.0)) < 1e-4 else 0


def _rest(cluster: Cluster, node: devcluster.DevNode, session: requests.Session, model: str, x: float,
          path: str = "", key: str | None = None) -> tuple[int, float | None]:
    resp = session.post(f"{cluster.rest(node)}/v1/models/{model}{path}:predict",
                        data=json.dumps({"instances": [x]}), timeout=30,
                        headers={SPLIT_HEADER: key} if key else None)
    return resp.status_code, resp.json()["predictions"][0] if resp.status_code == 200 else None


def _grpc_stubs(cluster: Cluster) -> list[prediction_service_pb2_grpc.PredictionServiceStub]:
    return [prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"{n.address}:{cluster.ports['grpc.port']}")) for n in devcluster.load(cluster.base)]


def _grpc(stub, model: str, x: float, version: int | None = None, key: str | None = None) -> float | None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(x)
    try:
        response = stub.Predict(request, timeout=30, metadata=((SPLIT_HEADER, key),) if key else None)
    except grpc.RpcError:
        return None
    return response.outputs["y"].float_val[0]


class KeyedLoad(Load):
    """Client threads, each request from one of ``keys`` (sent as x-canary-key) with a random
    input in [0, 1), through every node's Envoy in turn, a third of them over gRPC; every
    outcome also kept with its key."""

    def __init__(self, cluster: Cluster, model: str, keys: list[str] | None, threads: int = 6) -> None:
        self.cluster, self.model, self.keys = cluster, model, keys
        self.keyed: list[tuple[str | None, bool]] = []
        self._local = threading.local()
        self._clients = itertools.count()
        super().__init__(self._send, threads)

    def _send(self) -> bool:
        local = self._local
        if not hasattr(local, "index"):
            local.index, local.n = next(self._clients), 0
            local.nodes, local.session = devcluster.load(self.cluster.base), requests.Session()
            local.stubs = _grpc_stubs(self.cluster)
        local.n += 1
        key = random.choice(self.keys) if self.keys else None
        x = random.random()
        try:
            if local.index % 3 == 2:
                ok = _grpc(local.stubs[local.n % len(local.stubs)], self.model, x, key=key) is not None
            else:
                ok = _rest(self.cluster, local.nodes[local.n % len(local.nodes)], local.session,
                           self.model, x, key=key)[0] == 200
        except requests.RequestException:
            ok = False
        with self._lock:
            self.keyed.append((key, ok))
        return ok

    def failed(self, keys: set[str] | None = None) -> int:
        with self._lock:
            return sum(1 for key, ok in self.keyed if not ok and (keys is None or key in keys))


# ----------------------------------------------------------------------------- tests


def test_a_rollout_at_10_percent_sends_10_percent_of_unversioned_requests(canary: Cluster) -> None:
    """Must show 1: 10% +- 2 points of 10,000 requests through every node's Envoy, REST and
    gRPC; requests naming a version are never redirected."""
    cluster = canary
    starter = _serving(cluster)[0]
    nodes = devcluster.load(cluster.base)
    try:
        # A step that never ends and guards that never judge: this test is about the split.
        out = _cli_ok(starter, "rollout", "start", HALF, "--version", "2", "--steps", "10,100",
                      "--min-seconds", "3600", "--min-requests", "1000000")
        assert "step 1 of 2" in out and "v1 -> v2" in out, out
        wait_until(lambda: all(_server_states(cluster, n, HALF) == {2: "AVAILABLE", 1: "AVAILABLE"}
                               for n in _serving(cluster)), timeout=60, what="v1 and v2 on every node")
        counts = {"rest": [0, 0], "grpc": [0, 0]}     # [candidate, all]
        wrong: list[str] = []
        lock = threading.Lock()

        def client(index: int, total: int) -> None:
            session, stubs = requests.Session(), _grpc_stubs(cluster)
            for n in range(total):
                x = random.random()
                api = "grpc" if index % 2 else "rest"
                if api == "rest":
                    _, y = _rest(cluster, nodes[(index + n) % len(nodes)], session, HALF, x)
                else:
                    y = _grpc(stubs[(index + n) % len(stubs)], HALF, x)
                version = _version_of(x, y) if y is not None else 0
                with lock:
                    if version == 0:
                        wrong.append(f"{api} x={x} -> {y}")
                    counts[api][0] += version == 2
                    counts[api][1] += 1
        threads = [threading.Thread(target=client, args=(i, 1250)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        # Requests naming a version (REST path, gRPC model_spec.version) are never redirected.
        session, stubs = requests.Session(), _grpc_stubs(cluster)
        explicit = {v: {_version_of(0.5, _rest(cluster, nodes[i % len(nodes)], session, HALF, 0.5,
                                                f"/versions/{v}")[1]) for i in range(200)} for v in (1, 2)}
        explicit_grpc = {v: {_version_of(0.5, _grpc(stubs[i % len(stubs)], HALF, 0.5, version=v))
                             for i in range(100)} for v in (1, 2)}
        shares = {api: round(100 * c / n, 2) for api, (c, n) in counts.items()}
        total = sum(n for _, n in counts.values())
        share = round(100 * sum(c for c, _ in counts.values()) / total, 2)
        REPORT["canary_split_10_percent"] = {"requests": total, "candidate_percent": share,
                                             "per_api": shares, "per_api_requests": {a: n for a, (_, n) in counts.items()}}
        print(json.dumps(REPORT["canary_split_10_percent"]))
        assert not wrong, wrong[:5]
        assert total == 10000
        assert 8 <= share <= 12 and all(8 <= s <= 12 for s in shares.values()), shares
        assert explicit == {1: {1}, 2: {2}} and explicit_grpc == {1: {1}, 2: {2}}
    finally:
        _reset(cluster, HALF)
    assert rollout.read(_fleet(cluster), HALF).state == "aborted"


def test_a_candidate_failing_on_some_inputs_is_rolled_back_everywhere_at_once(canary: Cluster) -> None:
    """Must show 2: the error guard rolls every node back within 2 s of the failed check; the
    clients outside the canary slice see no failure, during and after; the reason is in
    `rollout status` and on the logviewer's Rollouts page."""
    cluster = canary
    starter, serving = _serving(cluster)[0], _serving(cluster)
    keys = [f"client-{i}" for i in range(300)]
    gone_at: dict[str, float] = {}
    try:
        with KeyedLoad(cluster, HALF, keys) as load:
            # Only the error guard judges here (a tiny model's p50 and p99 are all noise of a busy machine).
            _cli_ok(starter, "rollout", "start", HALF, "--version", "3", "--steps", "10,50,100",
                    "--min-seconds", "30", "--min-requests", "40", "--max-error-increase", "0.02",
                    "--max-p99-ratio", "1000", "--max-p50-ratio", "1000")
            state = _wait_state(cluster, HALF, ("rolled_back",), timeout=180)

            def unloaded() -> bool:
                for node in serving:
                    if node.name not in gone_at and _server_states(cluster, node, HALF).get(3) != "AVAILABLE":
                        gone_at[node.name] = time.time()
                return len(gone_at) == len(serving)
            wait_until(unloaded, timeout=30, interval=0.02, what="v3 unloaded on every node")
            time.sleep(3)     # and clients keep going after the rollback
        failed_check = next(e["time"] for e in state.events if "guard failed" in e["what"])
        percent = state.steps[state.step]
        outside = {k for k in keys if slot(k) >= percent}
        seconds = {name: round(at - failed_check, 2) for name, at in gone_at.items()}
        REPORT["canary_error_rollback"] = {
            "requests": load.count(), "failed": load.failed(), "failed_outside_slice": load.failed(outside),
            "slice_percent": percent, "clients_outside_slice": len(outside),
            "candidate_unloaded_seconds_after_failed_check": seconds, "reason": state.reason}
        print(json.dumps(REPORT["canary_error_rollback"]))
        assert "error rate" in state.reason
        assert load.failed() > 0 and load.failed(outside) == 0
        assert max(seconds.values()) <= 2.0
        status = _cli_ok(starter, "rollout", "status", HALF)
        assert "rolled_back" in status and state.reason in status
        repo = next(n for n in devcluster.load(cluster.base) if n.role == "repo")
        page = _logviewer_page(cluster, repo, "/rollouts")
        assert state.id in page and "rolled_back" in page
        assert re.sub(r"\s+", " ", state.reason.replace("%", "&#37;")) in page or \
            state.reason.split(",")[0] in page
    finally:
        _reset(cluster, HALF)


def test_a_candidate_twice_as_slow_is_rolled_back_by_the_latency_guard(canary: Cluster) -> None:
    """Must show 3 (latency): v2 doing twice v1's work trips the latency guard (its p50 or p99
    over 1.5x v1's in the same window); every node rolls back."""
    cluster = canary
    starter = _serving(cluster)[0]
    try:
        with KeyedLoad(cluster, SLOW, None, threads=4):
            _cli_ok(starter, "rollout", "start", SLOW, "--version", "2", "--steps", "25,50,100",
                    "--min-seconds", "30", "--min-requests", "60")
            state = _wait_state(cluster, SLOW, ("rolled_back", "promoted"), timeout=180)
        REPORT["canary_latency_rollback"] = {"reason": state.reason, "window": state.window}
        print(json.dumps(REPORT["canary_latency_rollback"]))
        assert state.state == "rolled_back" and re.match(r"p(50|99) latency", state.reason), state.reason
    finally:
        _reset(cluster, SLOW)


def test_a_step_short_of_traffic_holds_and_goes_on_when_traffic_returns(canary: Cluster) -> None:
    """Must show 3 (traffic): no requests -> the step holds (never fails); load -> it completes
    and the rollout goes on to promote the candidate."""
    cluster = canary
    starter = _serving(cluster)[0]
    try:
        _cli_ok(starter, "rollout", "start", HALF, "--version", "2", "--steps", "20,100",
                "--min-seconds", "1", "--min-requests", "30", "--max-p99-ratio", "1000",
                "--max-p50-ratio", "1000")
        held = _wait_state(cluster, HALF, ("holding",), timeout=60)
        time.sleep(2)    # still holding, not failed
        assert rollout.read(_fleet(cluster), HALF).state == "holding"
        with KeyedLoad(cluster, HALF, None, threads=3):
            done = _wait_state(cluster, HALF, ("promoted", "rolled_back"), timeout=120)
        whats = [e["what"] for e in done.events]
        REPORT["canary_hold"] = {"held": held.reason, "events": whats}
        print(json.dumps(REPORT["canary_hold"]))
        assert done.state == "promoted", done.reason
        assert any("traffic is back" in w for w in whats)
        assert _fleet(cluster).read().model(HALF) == {"versions": "specific:2"}
    finally:
        _reset(cluster, HALF)


def _logviewer_page(cluster: Cluster, node: devcluster.DevNode, page: str) -> str:
    password = re.search(r"shown once\): (\S+)", _cli_ok(node, "logviewer-password")).group(1)
    base = f"http://{node.address}:{cluster.ports['logviewer.port']}"
    session = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', session.get(f"{base}/login", timeout=10).text)
    assert token
    resp = session.post(f"{base}/login", data={"password": password, "csrf_token": token.group(1)}, timeout=10)
    assert resp.status_code == 200 and "Wrong password" not in resp.text, resp.text[:300]
    resp = session.get(base + page, timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    return resp.text


def test_cluster_settings_reach_every_node_also_one_whose_agent_was_down(cluster: Cluster) -> None:
    """`appliance fleet set` changes a model's settings on every node; a node's own `reload`
    keeps them; a node whose agent was down at the push (as a node that joins later) applies
    them when its agent starts."""
    from tests.e2e.shared_cluster import MODEL

    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    late = serving[-1]

    def warmup(node: devcluster.DevNode) -> bool:
        path = Path(node.root) / "var/lib/appliance/run/model-settings.json"
        return json.loads(path.read_text())["models"][MODEL]["warmup"]
    agent = next(p["pid"] for p in cluster.status(late)["processes"] if p["name"] == "agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        result = _node_cli(serving[0], "fleet", "set", MODEL, "warmup=false", "--wait", "3")
        assert result.returncode == 1 and f"node {late.address}: at revision" in result.stdout, result.stdout
        # --wait 3 gives up on the stopped agent; a running one may take longer on a busy machine
        wait_until(lambda: not any(warmup(n) for n in serving[:-1]), timeout=60,
                   what="the running agents to apply the push")
        assert warmup(late)
        _cli_ok(serving[0], "reload")                 # no --set: the node's own overrides only
        assert not warmup(serving[0])
        os.kill(agent, signal.SIGKILL)                # supervisord starts a new agent
    finally:
        with contextlib.suppress(ProcessLookupError):   # the SIGKILLed agent may be reaped already
            os.kill(agent, signal.SIGCONT)
    try:
        wait_until(lambda: not warmup(late), timeout=60, what="the restarted agent to apply the push")

        def every_node_reported() -> str:     # a report follows its apply within REPORT_SECONDS
            shown = _cli_ok(late, "fleet", "show")
            revision = re.search(r"revision (\d+)", shown).group(1)
            done = all(f"node {n.address}: applied revision {revision}" in shown for n in serving)
            return shown if done else ""
        shown = wait_until(every_node_reported, timeout=30, what="every serving node to report the revision")
        assert f"models.{MODEL}.warmup = false" in shown
    finally:
        _cli_ok(serving[0], "fleet", "unset", MODEL, "warmup")
    assert all(warmup(n) for n in serving)
