"""The agent's state file (agent-state.json) as the real daemon writes it: a real Syncer over a
local-directory repository, the real membership refresh, cycles run by AgentDaemon in a thread."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from appliance.agent.cycle import ModelServerClient, Syncer
from appliance.agent.daemon import AgentDaemon
from appliance.agent.state import FORMAT, StateFile, read_state, state_path
from appliance.agent.store import LocalStore
from appliance.agent.transfer import Downloader
from appliance import runconfig
from appliance.config import NodePaths, load_config
from appliance.membership import MembershipWatch
from appliance.sources.base import MANIFEST_FORMAT, MANIFEST_SUFFIX
from appliance.sources.local import LocalSource
from tests.conftest import free_port, wait_until
from tests.tfmodels import saved_model_bytes


def make_version(path: Path, seed: int) -> Path:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(saved_model_bytes(500, seed))
    (path / "variables/variables.index").write_bytes(bytes([seed]) * 300)
    return path


class Running:
    """An AgentDaemon running in a thread until the test ends."""

    def __init__(self, paths: NodePaths, syncer: Syncer | None, interval: float) -> None:
        self.path = state_path(paths)
        self.daemon = AgentDaemon(lambda: (syncer, interval), tick=MembershipWatch(paths).refresh,
                                  state=StateFile(self.path))
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()

    def state_when(self, check: Callable[[dict], object], what: str) -> dict:
        return wait_until(lambda: (doc := read_state(self.path)) and check(doc) and doc, 60,
                          what=what)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(60)


@pytest.fixture
def node(tmp_path: Path) -> NodePaths:
    paths = NodePaths(tmp_path / "node")
    paths.etc.mkdir(parents=True)
    paths.config_file.write_text("node.address: 127.0.0.1\nmodel.name: m,empty\n")
    runconfig.publish(paths, load_config(paths.config_file), paths.config_file, [])
    return paths


@pytest.fixture
def agent(tmp_path: Path, node: NodePaths) -> Iterator[tuple[Running, LocalSource]]:
    repo = LocalSource(tmp_path / "repo")
    repo.root.mkdir()
    repo.push(make_version(tmp_path / "src/1", 1), "m", "1")
    pushed = repo.push(make_version(tmp_path / "src/2", 2), "m", "2")
    # A push manifest as `models push` leaves in an S3 repository (a local push is atomic and
    # needs none); then v2 changes after its push: it no longer matches, the agent refuses it.
    (repo.root / f"m/2{MANIFEST_SUFFIX}").write_text(json.dumps({
        "format": MANIFEST_FORMAT, "name": "m", "version": "2",
        "objects": [{"path": o.path, "size": o.size, "etag": o.etag} for o in pushed.objects]}))
    (repo.root / "m/2/saved_model.pb").write_bytes(b"tampered")
    store = LocalStore(node.models)
    store.root.mkdir(parents=True)
    # Nothing answers here: retirement waits for a model server that never says AVAILABLE.
    server = ModelServerClient(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    syncer = Syncer(("m", "empty"), repo, store, Downloader(repo, 2), server, settle_seconds=0.01)
    running = Running(node, syncer, 0.2)
    try:
        yield running, repo
    finally:
        running.stop()


def test_a_cycle_leaves_what_it_saw_and_did_in_the_state_file(agent, node: NodePaths) -> None:
    running, repo = agent
    doc = running.state_when(lambda d: d["models_cycle"], "a completed cycle")
    assert running.path == node.root / "var/lib/appliance/run/agent-state.json"
    assert stat.S_IMODE(running.path.stat().st_mode) == 0o644
    assert doc["format"] == FORMAT and doc["pid"] == os.getpid()
    assert doc["source"] == f"local directory {repo.root}"
    assert doc["interval_seconds"] == 0.2 and doc["next_cycle_at"] > doc["last_cycle"]["finished_at"]
    last = doc["last_cycle"]
    assert last["result"] == "refused" and last["cause"] == "" and last["failures_in_a_row"] == 0
    assert doc["last_ok_at"] >= last["finished_at"]
    m = doc["models"]["m"]
    assert [(v["version"], v["status"]) for v in m["repository"]] in (
        [(2, "refused"), (1, "installed")], [(2, "refused"), (1, "in store")])
    refused = m["repository"][0]
    assert "saved_model.pb: size 8 in the repository, 500 when pushed" in refused["reason"]
    assert refused["manifest"] is True and refused["files"] == 2 and refused["size"] == 308
    assert m["refused"] == {"2": refused["reason"]} and m["local"] == ["1"]
    assert doc["models"]["empty"] == {"repository": [], "local": [], "installed": [],
                                      "refused": {}, "retired": [], "waiting": []}
    assert doc["membership"]["members"] == ["127.0.0.1"] and doc["membership"]["error"] == ""
    # A refused version keeps its reason in later cycles (it is not downloaded again).
    later = running.state_when(lambda d: d["models_cycle"] > doc["models_cycle"], "another cycle")
    assert later["models"]["m"]["refused"] == {"2": refused["reason"]}
    assert later["models"]["m"]["repository"][1]["status"] == "in store"


def test_retirement_waits_and_a_failed_cycle_keeps_the_last_picture(agent, tmp_path: Path) -> None:
    running, repo = agent
    running.state_when(lambda d: d["models"].get("m", {}).get("local") == ["1"], "v1 installed")
    repo.push(make_version(tmp_path / "src/3", 3), "m", "3")
    repo.delete_version("m", "1")
    doc = running.state_when(lambda d: d["models"]["m"]["local"] == ["3", "1"]
                             and d["models"]["m"]["waiting"], "v3 installed")
    assert doc["models"]["m"]["waiting"] == ["retire 1 after 3"]
    assert [v["version"] for v in doc["models"]["m"]["repository"]] == [3, 2]
    # The model's directory becomes a link out of the repository: the cycle fails.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(repo.root / "m", elsewhere)
    (repo.root / "m").symlink_to(elsewhere, target_is_directory=True)
    failed = running.state_when(lambda d: d["last_cycle"]["result"] == "failed", "a failed cycle")
    assert "outside the repository" in failed["last_cycle"]["cause"]
    assert failed["last_cycle"]["failures_in_a_row"] >= 1
    assert failed["models_cycle"] < failed["last_cycle"]["number"]
    assert failed["models"]["m"]["local"] == ["3", "1"], "the last completed cycle's picture"
    assert failed["last_ok_at"] < failed["last_cycle"]["finished_at"]


def test_a_node_without_a_repository_reports_membership_only(node: NodePaths) -> None:
    running = Running(node, None, 0.2)
    try:
        doc = running.state_when(lambda d: d["cycle"] >= 1, "a cycle")
    finally:
        running.stop()
    assert doc["source"] is None and doc["models"] == {} and doc["last_cycle"] is None
    assert doc["membership"]["members"] == ["127.0.0.1"]


def test_read_state_tells_absent_from_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "agent-state.json"
    assert read_state(path) is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_state(path)
    path.write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(ValueError, match="format"):
        read_state(path)
