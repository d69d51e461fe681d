"""A serving node whose models live in a real SeaweedFS repository, served through Envoy.

`appliance up` with s3.type seaweedfs starts the agent under supervisord (credentials from the
aws-style environment only). Pushes with `appliance models push` and with the user guide's
`s3cmd sync` appear in the node's store and are served through Envoy; replacing v1 by v2 in the
repository under client load fails no request, and v1 leaves the store only after v2 is AVAILABLE.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from appliance import runconfig
from appliance.config import NodePaths
from tests.conftest import wait_until
from tests.integration.node_harness import CLI, NodeUnderTest, new_node, node_running
from tests.integration.objectstore_harness import ObjectStore, objectstore_for_module

pytestmark = pytest.mark.slow
HALF = "saved_model_half_plus_two_mkl"
BODY = '{"instances": [1.0, 2.0, 5.0]}'
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    yield from objectstore_for_module(tmp_path_factory)


def half_plus_two(builtin_models: Path) -> Path:
    (version,) = [p for p in (builtin_models / HALF).iterdir() if p.name.isdigit()]
    return version


def cli(root: Path, repo: ObjectStore, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["--root", str(root), *args, *repo.client_overrides()],
                          capture_output=True, text=True, timeout=timeout, env=repo.env())


@pytest.fixture(scope="module")
def node(repo: ObjectStore, builtin_models: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    work = tmp_path_factory.mktemp("serving")
    node = new_node(work / "root", builtin_models, [])
    # Before the node starts: one model pushed with the CLI, one with s3cmd.
    pushed = cli(node.root, repo, "models", "push", str(half_plus_two(builtin_models)),
                 "--name", "half", "--version", "1")
    assert pushed.returncode == 0, pushed.stderr
    shutil.copytree(half_plus_two(builtin_models), work / "half_s3cmd/1")
    synced = repo.s3cmd("sync", str(work / "half_s3cmd"), f"s3://{repo.bucket}/")
    assert synced.returncode == 0, synced.stderr
    started = cli(node.root, repo, "up", "--timeout", "300", *node.overrides,
                  "--set", "model.name=half,half_s3cmd", "--set", "sync.interval.seconds=2",
                  "--set", "serving.poll.seconds=1")
    with node_running(node, started):
        yield node


def served_versions(node: NodeUnderTest, name: str) -> dict[int, str]:
    """What the model server reports, asked through Envoy."""
    resp = requests.get(f"{node.url}/v1/models/{name}", timeout=10)
    if resp.status_code != 200:
        return {}
    return {int(v["version"]): v["state"] for v in resp.json()["model_version_status"]}


def predict(node: NodeUnderTest, name: str, version: int | None = None) -> requests.Response:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(node.url + path, data=BODY, timeout=30)


def test_the_agent_runs_under_supervisord_with_env_credentials_only(
        node: NodeUnderTest, repo: ObjectStore) -> None:
    status = node.status()
    assert {p["name"]: p["state"] for p in status["processes"]}["agent"] == "RUNNING"
    log = node.root / "var/log/appliance/agent.log"
    wait_until(lambda: "cycle" in log.read_text(), timeout=60, what="a status line in agent.log")
    text = "".join(p.read_text(errors="replace") for p in (node.root / "var").rglob("*.log"))
    assert repo.secret_key not in text
    assert repo.secret_key not in runconfig.path(NodePaths(node.root)).read_text()


def test_cli_and_s3cmd_pushes_are_served_through_envoy(
        node: NodeUnderTest, repo: ObjectStore, builtin_models: Path, tmp_path: Path) -> None:
    assert predict(node, "half").json() == EXPECTED
    assert predict(node, "half_s3cmd").json() == EXPECTED
    pushed = cli(node.root, repo, "models", "push", str(half_plus_two(builtin_models)),
                 "--name", "half", "--version", "2")
    assert pushed.returncode == 0, pushed.stderr
    shutil.copytree(half_plus_two(builtin_models), tmp_path / "half_s3cmd/2")
    synced = repo.s3cmd("sync", str(tmp_path / "half_s3cmd"), f"s3://{repo.bucket}/")
    assert synced.returncode == 0, synced.stderr
    for name in ("half", "half_s3cmd"):
        wait_until(lambda n=name: served_versions(node, n).get(2) == "AVAILABLE", timeout=180,
                   interval=0.5, what=f"{name} v2 AVAILABLE through Envoy")
        resp = predict(node, name, version=2)
        assert resp.status_code == 200 and resp.json() == EXPECTED, resp.text
        assert (node.root / f"data/models/{name}/2/saved_model.pb").exists()


def test_replacing_v1_by_v2_under_load_fails_no_request(
        node: NodeUnderTest, repo: ObjectStore, builtin_models: Path) -> None:
    store = node.root / "data/models/half"
    before = max(served_versions(node, "half"))
    new = before + 1
    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal sent
        session = requests.Session()
        deadline = time.monotonic() + 300   # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline and sent < 20000:
            try:
                resp = session.post(f"{node.url}/v1/models/half:predict", data=BODY, timeout=30)
                if resp.status_code != 200 or resp.json() != EXPECTED:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            sent += 1

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        pushed = cli(node.root, repo, "models", "push", str(half_plus_two(builtin_models)),
                     "--name", "half", "--version", str(new))
        assert pushed.returncode == 0, pushed.stderr
        s3 = repo.boto3()
        old_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=repo.bucket, Prefix="half/")["Contents"]
                    if not o["Key"].startswith(f"half/{new}")]
        s3.delete_objects(Bucket=repo.bucket, Delete={"Objects": [{"Key": k} for k in old_keys]})
        # Watch: an old version dir may only disappear after the new one was seen AVAILABLE.
        seen_available = False
        order_ok = True

        def retired() -> bool:
            nonlocal seen_available, order_ok
            # The dirs first: read after the states, they could be gone because the new version
            # became AVAILABLE (and the agent retired the old ones) in between.
            gone = not any((store / str(v)).exists() for v in range(1, new))
            states = served_versions(node, "half")
            seen_available = seen_available or states.get(new) == "AVAILABLE"
            if gone and not seen_available:
                order_ok = False
            return gone
        wait_until(retired, timeout=240, interval=0.05, what=f"versions below {new} retired")
        assert order_ok, "an old version left the store before the new one was AVAILABLE"
        wait_until(lambda: sent > 50, timeout=60, what="some requests after the switch")
    finally:
        stop.set()
        thread.join(60)
    assert sent > 50
    assert failures == [], f"{len(failures)} of {sent} requests failed: {failures[:5]}"
    # The agent logs each retirement right after removing the dir: wait for the line itself.
    line = f"retired half v{before}: it left the repository and v{new} is AVAILABLE"
    wait_until(lambda: line in (node.root / "var/log/appliance/agent.log").read_text(),
               timeout=30, what="the retirement log line")
    listing = cli(node.root, repo, "models", "ls", "--set", "model.name=half,half_s3cmd",
                  *node.overrides)
    assert listing.returncode == 0, listing.stderr
    row = [line.split() for line in listing.stdout.splitlines() if line.startswith("half ")]
    rows = {r[1]: r[-2:] for r in row}
    assert rows[str(new)] == ["yes", "AVAILABLE"], listing.stdout
    assert all(rows[str(v)] == ["-", "END"] for v in range(1, new)), listing.stdout
