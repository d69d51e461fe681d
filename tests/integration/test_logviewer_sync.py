"""The models pages with a real repository: `appliance agent` (a real process) syncs from a real
SeaweedFS on loopback and writes its state file; the logviewer (Flask's test client) shows the
repository's versions, a refused one with its reason, and the agent's state -- and once the
agent is stopped, that it is gone. No credential in the state file or on a page."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Iterator

import pytest

from appliance import runconfig
from appliance.agent.state import read_state, state_path
from appliance.config import NodePaths, load_config
from logviewer import create_app, credentials
from tests.conftest import Processes, free_port, wait_until
from tests.integration.node_harness import CLI
from tests.integration.objectstore_harness import ObjectStore, objectstore_for_module
from tests.integration.test_sync import Node, make_model
from tests.unit.test_logviewer_app import login, text

pytestmark = pytest.mark.slow
MODEL = "lv_synced"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    yield from objectstore_for_module(tmp_path_factory)


def test_the_models_pages_show_the_repository_as_the_agent_reports_it(
        store: ObjectStore, tmp_path: Path, processes: Processes) -> None:
    node = Node(tmp_path / "node", store, MODEL)
    node.overrides += ["--set", "node.address=127.0.0.1",
                       "--set", f"serving.rest.port={free_port()}"]   # no model server there
    for number, seed in ((1, 21), (2, 22)):
        pushed = node.cli("models", "push", str(make_model(tmp_path / f"src/{number}", seed)),
                          "--name", MODEL)
        assert pushed.returncode == 0, pushed.stderr
    store.boto3().delete_object(Bucket=store.bucket, Key=f"{MODEL}/2/saved_model.pb")

    paths = NodePaths(node.root)
    pairs = [a for a in node.overrides if a != "--set"]
    # The agent follows the node's running config (what `up` records): no node runs here.
    runconfig.publish(paths, load_config(None, pairs), None, pairs)
    log = tmp_path / "agent.log"
    agent = processes.start(CLI + ["--root", str(node.root), "agent"], log=log, env=store.env())
    path = state_path(paths)
    doc = wait_until(lambda: (d := read_state(path)) and d["models_cycle"]
                     and d["models"][MODEL]["local"] == ["1"] and d, 180,
                     what=f"the agent's first cycle (log {log})")
    raw = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.secret_key not in raw and store.access_key not in raw
    assert doc["source"] == f"seaweedfs s3://{store.bucket}/ at {store.endpoint}"
    assert [(v["version"], v["status"]) for v in doc["models"][MODEL]["repository"]] in (
        [(2, "refused"), (1, "installed")], [(2, "refused"), (1, "in store")])

    app = create_app(paths, load_config(None, pairs), rest_base=f"http://127.0.0.1:{free_port()}")
    app.config["TESTING"] = True
    client = app.test_client()
    login(client, credentials.set_password(paths.etc))
    listing = text(client.get("/models"))
    assert f"<code>seaweedfs s3://{store.bucket}/ at {store.endpoint}</code>" in listing
    assert "refused a version" in listing and "<code>127.0.0.1</code>" in listing
    row = listing[listing.index(f'href="/models/{MODEL}"'):].split("</tr>")[0]
    assert ">2 refused</span>" in row and "saved_model.pb: missing from the repository" in row
    page = text(client.get(f"/models/{MODEL}"))
    assert f'href="/models/{MODEL}/1"' in page, "the synced version is in the local store"
    table = page[page.index('id="repo-versions"'):].split("</table>")[0]
    assert "saved_model.pb: missing from the repository" in table
    assert "12.0 MiB" in table and 'class="ok">' in table
    for body in (listing, page):
        assert store.secret_key not in body and store.access_key not in body
        assert "agent process that wrote this report" not in body

    processes.stop(agent)
    gone = text(client.get("/models"))
    assert f"The agent process that wrote this report (pid {agent.pid}) is not running" in gone
    assert store.secret_key not in log.read_text()
