"""Issue 5, end to end: a 3-serving + 1-repo dev cluster on loopback addresses, models in the
repo node's object store. Any node serves; a killed model server costs (almost) nothing; nodes
join and leave under load without losing a request; the same through gRPC. Issue 12: a frozen
object store does not delay a membership edit; a version pushed after a repo node outage arrives
within two sync intervals; a model added under load costs no 404.

Counts (failures during detection, recovery) are written to test-artifacts/cluster-report.json.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest
import requests
import yaml

from appliance import devcluster, portowners
from modelserver.atomic import write_atomic
from appliance.envoy_admin import read_cluster_view
from tests.conftest import wait_until
from tests.e2e.shared_cluster import (FIRST, MODEL, REPORT, Cluster, Load, envoy_hosts, grpc_sender,
                                      rest_sender, seconds_until_listed)
from tests.integration.node_harness import CLI, wait_gone

pytestmark = pytest.mark.slow
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
                if entry["path"].endswith(":predict") and entry.get("upstream_host"):   # not a local 429
                    # the node's own model server is on loopback; a peer is peer:cluster.port
                    host = entry["upstream_host"].split(":")[0]
                    seen.add(node.address if host == "127.0.0.1" else host)
        return seen

    spread = wait_until(lambda: upstreams() if upstreams() >= serving else None, timeout=20,
                        what="access logs naming every serving node")
    assert spread == serving
    # the model came from the repo node's object store, through each serving node's agent
    status = cluster.status(nodes[0])
    assert status["models"][MODEL][0]["state"] == "AVAILABLE"
    assert {u["node"] for u in status["upstreams"]} == serving
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
        rest_port = victim.loopback_ports()["serving.rest.port"]
        wait_until(lambda: requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}",
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
               if h.node == address)


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


# ----------------------------------------------------------------------------- a failed deploy


def _node_cli(node: devcluster.DevNode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["--root", node.root, *args], capture_output=True, text=True, timeout=300)


def _cli_ok(node: devcluster.DevNode, *args: str) -> str:
    result = _node_cli(node, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _server_states(cluster: Cluster, node: devcluster.DevNode, model: str = MODEL) -> dict[int, str]:
    """version -> state on the node's model server; empty while it does not know the model."""
    url = f"http://127.0.0.1:{node.loopback_ports()['serving.rest.port']}/v1/models/{model}"
    resp = requests.get(url, timeout=5)
    if resp.status_code != 200:
        return {}
    return {int(r["version"]): r["state"] for r in resp.json()["model_version_status"]}


def _built(cluster: Cluster) -> Path:
    from appliance.builtin_models import version_dir

    return version_dir(cluster.base / "builtin-models", MODEL)


def _everywhere(cluster: Cluster, want: Callable[[dict[int, str]], bool]) -> bool:
    return all(want(_server_states(cluster, n)) for n in devcluster.load(cluster.base) if n.role == "serving")


def test_a_failed_version_is_quarantined_on_every_node_also_after_down_and_up(
        cluster: Cluster, tmp_path: Path) -> None:
    """Issue 12: a version above the served one that fails to load never becomes an outage."""
    from tests.tfmodels import saved_model_bytes

    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    pusher = serving[0]
    good = _built(cluster)
    # A SavedModel proto without a graph: the agent's cheap check passes, the load fails.
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(saved_model_bytes(400))
    (broken / "variables/variables.index").write_bytes(b"\0" * 64)
    entry = cluster.node("repo-1")
    with Load(rest_sender(cluster.rest(entry)), threads=2) as rest:
        for version, source in (("150", good), ("200", broken)):
            _cli_ok(pusher, "models", "push", str(source), "--name", MODEL, "--version", version)
        pushed_at = time.monotonic()
        wait_until(lambda: _everywhere(cluster, lambda s: s.get(150) == "AVAILABLE" and s.get(200) == "END"),
                   timeout=120, interval=0.2, what="v200 quarantined and v150 serving on every node")
        quarantined_after = time.monotonic() - pushed_at
    assert rest.failures() == 0 and rest.count() > 0
    for node in serving:
        record = json.loads((Path(node.root) / f"var/lib/appliance/quarantine/{MODEL}.json").read_text())
        assert list(record["versions"]) == ["200"]
    status = _node_cli(pusher, "status")
    assert re.search(r"200  END  quarantined since \S+ \S+ UTC: ", status.stdout), status.stdout
    listing = _node_cli(pusher, "models", "ls")
    assert any(line.split()[:2] == [MODEL, "200"] and "quarantined since" in line
               for line in listing.stdout.splitlines()), listing.stdout

    # `down` + `up` (a reboot): every model server starts on v150 without trying v200 again.
    logs = {n.name: Path(n.root) / "var/log/appliance/model_server.log" for n in serving}
    offsets = {name: log.stat().st_size for name, log in logs.items()}
    devcluster.down(cluster.base)
    for node in [n for n in nodes if n.role == "repo"] + serving:
        _cli_ok(node, "up")
    devcluster.wait_in_rotation(nodes, [n.address for n in serving], print)
    assert _everywhere(cluster, lambda s: s.get(150) == "AVAILABLE" and s.get(200) == "END")
    for name, log in logs.items():
        with log.open("rb") as handle:
            handle.seek(offsets[name])
            since_restart = handle.read().decode("utf-8", "replace")
        assert f"Loading servable: {{name: {MODEL} version: 150}} from" in since_restart
        assert f"version: 200}} from" not in since_restart

    # The same number re-pushed with good files: installed and served on every node.
    _cli_ok(pusher, "models", "push", str(good), "--name", MODEL, "--version", "200")
    repushed_at = time.monotonic()
    wait_until(lambda: _everywhere(cluster, lambda s: s.get(200) == "AVAILABLE"), timeout=120, interval=0.2,
               what="the fixed v200 serving on every node")
    fixed_after = time.monotonic() - repushed_at
    for node in serving:
        assert not (Path(node.root) / f"var/lib/appliance/quarantine/{MODEL}.json").exists()
    resp = requests.post(f"{cluster.rest(entry)}/v1/models/{MODEL}:predict", data='{"instances": [1.0, 2.0]}',
                         timeout=30)
    assert resp.json() == {"predictions": [2.5, 3.0]}
    REPORT["quarantine"] = {"sync_interval_seconds": 2, "rest_requests": rest.count(),
                            "rest_failed": rest.failures(),
                            "quarantined_and_v150_serving_everywhere_seconds_after_push": round(quarantined_after, 2),
                            "fixed_v200_serving_everywhere_seconds_after_repush": round(fixed_after, 2)}
    print(json.dumps(REPORT["quarantine"], indent=2))


# ----------------------------------------------------------------------------- issue 12: delivery


def _set_in_config(node: devcluster.DevNode, key: str, value: str) -> None:
    """Edit one key of a node's config file, as a user would (written by rename, like an editor)."""
    path = Path(node.root) / "etc/appliance/appliance.yaml"
    values = yaml.safe_load(path.read_text())
    values[key] = value
    write_atomic(path, yaml.safe_dump(values, sort_keys=False), mode=0o600)


def _agent_state(node: devcluster.DevNode) -> dict:
    return json.loads((Path(node.root) / "var/lib/appliance/run/agent-state.json").read_text())


def test_a_frozen_object_store_does_not_hold_up_a_membership_edit(cluster: Cluster) -> None:
    """The store SIGSTOPped (accepts connections, never answers): agents' sync cycles hang on it,
    yet a cluster.members edit in the config files reaches every Envoy within 2 s; and the hung
    cycles fail within their S3 calls' deadlines (read timeout 5 s, 2 attempts at this interval;
    boto's defaults were 60 s and 5 attempts)."""
    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    store = next(p for p in cluster.status(cluster.node("repo-1"))["processes"]
                 if p["name"] == "objectstore")
    frozen = [store["pid"], *portowners.descendants({store["pid"]})]
    members = ",".join(n.address for n in serving)
    # In the shared cluster's range (FIRST + 5), never started: Envoy lists it unhealthy.
    extra = str(ipaddress.ip_address(FIRST) + 5)
    try:
        frozen_at = time.time()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        # every serving agent is inside a cycle against the frozen store
        wait_until(lambda: all(_agent_state(n)["syncing_since"] for n in serving), timeout=30,
                   what="sync cycles hanging on the frozen store")
        last_ok = {n.name: _agent_state(n)["last_ok_at"] for n in serving}
        edited_at = time.monotonic()
        for node in nodes:
            _set_in_config(node, "cluster.members", f"{members},{extra}")
        added = seconds_until_listed(nodes, extra, edited_at)
        synced = [n.name for n in serving if _agent_state(n)["last_ok_at"] != last_ok[n.name]]
        removed_at = time.monotonic()
        for node in nodes:
            _set_in_config(node, "cluster.members", members)
        removed = seconds_until_listed(nodes, extra, removed_at, present=False)

        def failed_cycle(node: devcluster.DevNode) -> float | None:
            last = _agent_state(node)["last_cycle"]
            return last["seconds"] if last["result"] == "failed" and \
                last["started_at"] >= frozen_at else None
        wait_until(lambda: all(failed_cycle(n) for n in serving), timeout=90,
                   what="a cycle against the frozen store to fail on every node")
        hung = max(failed_cycle(n) or 0.0 for n in serving)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        for node in nodes:
            _set_in_config(node, "cluster.members", members)
    REPORT["membership_with_frozen_store"] = {
        "seconds_to_each_envoy_added": {k: round(v, 2) for k, v in added.items()},
        "seconds_to_each_envoy_removed": {k: round(v, 2) for k, v in removed.items()},
        "agents_with_a_good_cycle_meanwhile": synced,
        "longest_cycle_failing_on_the_frozen_store_seconds": hung}
    print(json.dumps(REPORT["membership_with_frozen_store"], indent=2))
    assert not synced, "no sync cycle may complete against a frozen store"
    assert max(added.values()) < 2.0 and max(removed.values()) < 2.0, (added, removed)
    assert hung < 40, "bounded by the calls' deadlines (boto's defaults: 60 s per attempt)"


def test_a_version_pushed_when_the_repo_node_returns_serves_within_two_intervals(
        cluster: Cluster) -> None:
    """The repo node stopped for several failed cycles (the old backoff would have grown to 16 s
    and more), started again; a version pushed then serves on every node within two intervals."""
    interval = 2.0                     # sync.interval.seconds of this module's cluster
    repo = cluster.node("repo-1")
    serving = [n for n in devcluster.load(cluster.base) if n.role == "serving"]
    current = max(_server_states(cluster, serving[0]))
    stopped_at = time.monotonic()
    _cli_ok(repo, "down")
    wait_until(lambda: all(_agent_state(n)["last_cycle"]["failures_in_a_row"] >= 4
                           for n in serving), timeout=60, what="four failed cycles on every node")
    down_seconds = time.monotonic() - stopped_at
    _cli_ok(repo, "up")
    back_at = time.monotonic()
    _cli_ok(serving[0], "models", "push", str(_built(cluster)), "--name", MODEL,
            "--version", str(current + 1))
    pushed_at = time.monotonic()

    installed_at: list[float] = []

    def served() -> bool:
        if not installed_at and all((Path(n.root) / "data/models" / MODEL / str(current + 1)).is_dir()
                                    for n in serving):
            installed_at.append(time.monotonic())
        return all(_server_states(cluster, n).get(current + 1) == "AVAILABLE" for n in serving)
    wait_until(served, timeout=60, interval=0.05, what=f"v{current + 1} AVAILABLE on every node")
    seconds = time.monotonic() - pushed_at
    installed = (installed_at or [time.monotonic()])[0] - pushed_at
    REPORT["repo_outage"] = {"outage_seconds": round(back_at - stopped_at, 1),
                             "seconds_to_fail_four_cycles": round(down_seconds, 1),
                             "push_seconds": round(pushed_at - back_at, 2),
                             "installed_everywhere_seconds_after_push": round(installed, 2),
                             "served_everywhere_seconds_after_push": round(seconds, 2)}
    print(json.dumps(REPORT["repo_outage"], indent=2))
    # The agents' part: every node has the version within two intervals (the old backoff had
    # grown to 16 s and more), plus 2 s for fetching and installing it on a busy CI machine (the
    # same bound in the next-but-one test measured 4.03 s once). Serving adds the model server's
    # poll (1 s) and the load, which a busy CI machine may stretch: measured 1.0-2.0 s in all,
    # given a few seconds of margin.
    assert installed <= 2 * interval + 2
    assert seconds <= 2 * interval + 5


def test_a_model_added_under_load_costs_no_404(cluster: Cluster) -> None:
    """A new model pushed and added to model.name node by node, with clients sending it
    requests from the moment its first node serves it: nodes that have not synced it yet answer
    404 / NOT_FOUND, and Envoy retries those on the other nodes; no client sees a failure."""
    new = "half_plus_two_added"
    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]
    entry = cluster.node("repo-1")
    _cli_ok(serving[0], "models", "push", str(_built(cluster)), "--name", new, "--version", "1")
    for node in nodes:
        _set_in_config(node, "model.name", f"{MODEL},{new}")
    _cli_ok(serving[0], "up", "--timeout", "120")
    rest_404: list[int] = []
    grpc_404: list[int] = []
    with Load(rest_sender(cluster.rest(entry), new, rest_404)) as rest, \
            Load(grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}", new, grpc_404),
                 threads=2) as rpc:
        time.sleep(0.5)
        ups = [subprocess.Popen(CLI + ["--root", n.root, "up", "--timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for n in nodes[1:]]
        outputs = [(p.communicate(timeout=300)[0], p.returncode) for p in ups]
        added_at = time.monotonic()
        wait_until(lambda: all(_server_states(cluster, n, new).get(1) == "AVAILABLE" for n in serving),
                   timeout=60, what=f"{new} AVAILABLE on every serving node")
        time.sleep(1)
    retried = _stats(entry, r"cluster\.model_server_(rest|grpc)\.upstream_rq_retry$")
    REPORT["model_added_under_load"] = {
        "rest_requests": rest.count(), "grpc_requests": rpc.count(),
        "rest_failed": rest.failures(), "grpc_failed": rpc.failures(),
        "rest_404": len(rest_404), "grpc_not_found": len(grpc_404),
        "requests_after_every_node_had_it": rest.count(added_at) + rpc.count(added_at),
        "retries_by_the_entry_envoy": retried}
    print(json.dumps(REPORT["model_added_under_load"], indent=2))
    assert all(code == 0 for _, code in outputs), outputs
    assert rest.failures() == 0 and rpc.failures() == 0
    assert not rest_404 and not grpc_404
    assert rest.count() > 20 and rpc.count() > 10
    # A model no node has: every node was asked, the client gets TF Serving's own answer.
    resp = requests.post(f"{cluster.rest(entry)}/v1/models/no_such_model:predict",
                         data='{"instances": [1.0]}', timeout=30)
    assert resp.status_code == 404
    assert resp.json() == {"error": "Servable not found for request: Latest(no_such_model)"}
    with pytest.raises(grpc.RpcError) as missing:
        grpc_sender(f"{entry.address}:{cluster.ports['grpc.port']}", "no_such_model")()
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(no_such_model)" in missing.value.details()
    session = requests.Session()
    timings = {}
    for model in (MODEL, "no_such_model"):
        started = time.monotonic()
        for _ in range(20):
            session.post(f"{cluster.rest(entry)}/v1/models/{model}:predict",
                         data='{"instances": [1.0, 2.0]}', timeout=30)
        timings[model] = round((time.monotonic() - started) / 20 * 1000, 1)
    REPORT["model_added_under_load"]["mean_ms_found_vs_no_such_model"] = timings
    print(timings)


def test_a_model_added_to_every_config_file_serves_everywhere_and_no_agent_restarts(
        cluster: Cluster) -> None:
    """Issue 11: a model pushed, then added to model.name in every node's config file -- and
    nothing else: no `up`. Each agent applies its node's edited file, follows the new running
    config and syncs the model within two intervals; no agent restarted to get there."""
    interval = 2.0                     # sync.interval.seconds of this module's cluster
    new = "half_plus_two_by_file"
    nodes = devcluster.load(cluster.base)
    serving = [n for n in nodes if n.role == "serving"]

    def agent_pids() -> dict[str, int]:
        return {n.name: next(p["pid"] for p in cluster.status(n)["processes"] if p["name"] == "agent")
                for n in nodes}
    agents = agent_pids()
    _cli_ok(serving[0], "models", "push", str(_built(cluster)), "--name", new, "--version", "1")
    names = yaml.safe_load((Path(serving[0].root) / "etc/appliance/appliance.yaml").read_text())[
        "model.name"]
    edited_at = time.monotonic()
    for node in nodes:
        _set_in_config(node, "model.name", f"{names},{new}")
    installed_at: list[float] = []

    def served() -> bool:
        if not installed_at and all((Path(n.root) / "data/models" / new / "1").is_dir()
                                    for n in serving):
            installed_at.append(time.monotonic())
        return all(_server_states(cluster, n, new).get(1) == "AVAILABLE" for n in serving)
    wait_until(served, timeout=60, interval=0.05, what=f"{new} AVAILABLE on every serving node")
    seconds = time.monotonic() - edited_at
    installed = (installed_at or [time.monotonic()])[0] - edited_at
    for node in nodes:   # through every node's Envoy
        resp = requests.post(f"{cluster.rest(node)}/v1/models/{new}:predict",
                             data='{"instances": [1.0, 2.0]}', timeout=30)
        assert resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0]}
    REPORT["model_added_by_config_file"] = {
        "installed_everywhere_seconds_after_edit": round(installed, 2),
        "served_everywhere_seconds_after_edit": round(seconds, 2)}
    print(json.dumps(REPORT["model_added_by_config_file"], indent=2))
    assert agent_pids() == agents, "no agent restarted"
    # Every agent sees the edit at its next look and syncs in its next cycle (one may be running
    # when the edit lands); the model is on every node once its files are fetched and installed,
    # which a busy machine stretches: 4.0-7.6 s measured in session 15 (4.0 in session 14's CI).
    # The bound, three intervals and 3 s, still fails the 16 s backoff of old; an agent that had
    # to restart fails the check above. Serving it adds the model server's poll (1 s) and load.
    assert installed <= 3 * interval + 3
    assert seconds <= 3 * interval + 6


def _stats(node: devcluster.DevNode, pattern: str) -> dict[str, int]:
    text = requests.get(f"http://127.0.0.1:{node.admin_port}/stats", timeout=5).text
    return {name: int(value) for name, _, value in
            (line.partition(": ") for line in text.splitlines()) if re.search(pattern, name)}


@pytest.mark.destructive
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
