"""The agent daemon's schedule: membership on its own thread, reacting to a config edit at once;
failed cycles retried every interval (no growing backoff) and logged without flooding.

Real parts throughout: the real membership refresh writing EDS files, a real Syncer over a
local-directory repository that fails the way a broken repository does.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from appliance.agent.cycle import Syncer
from appliance.agent.daemon import AgentDaemon
from appliance.agent.state import StateFile, read_state, state_path
from appliance.agent.store import LocalStore
from appliance.agent.transfer import Downloader
from appliance import runconfig
from appliance.config import NodePaths, load_config
from appliance.membership import MembershipWatch, eds_path
from appliance.sources.local import LocalSource
from tests.conftest import wait_until
from tests.unit.test_agent_state import make_version, node  # noqa: F401 - the node fixture
from tests.pem import FAKE_CA_OVERRIDES


def _run(daemon: AgentDaemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def stopper() -> Iterator[list[tuple[AgentDaemon, threading.Thread]]]:
    running: list[tuple[AgentDaemon, threading.Thread]] = []
    yield running
    for daemon, thread in running:
        daemon.stop()
        thread.join(30)


def test_a_running_config_change_reaches_envoy_without_waiting_for_an_interval(
        node: NodePaths, stopper) -> None:
    watch = MembershipWatch(node)
    daemon = AgentDaemon(lambda: (None, 3600.0), tick=watch.refresh,
                         state=StateFile(state_path(node)),
                         watch_files=lambda: [runconfig.path(node)])
    stopper.append((daemon, _run(daemon)))
    eds = eds_path(node, "model_server_rest")
    wait_until(lambda: eds.exists() and "127.0.0.1" in eds.read_text(), 10, what="first EDS")
    changed = time.monotonic()
    runconfig.publish(node, load_config(None, ["node.address=127.0.0.1", "model.name=m,empty",
                                               "cluster.members=127.0.0.1,127.0.0.9",
                                               *FAKE_CA_OVERRIDES]), None, [])
    wait_until(lambda: "127.0.0.9" in eds.read_text(), 10, interval=0.02,
               what="the new member in the EDS file")
    assert time.monotonic() - changed < 3.0, "within the watch period, not the hour-long interval"
    # A running config that cannot be read keeps the endpoints and says why, once.
    runconfig.path(node).write_text("values: [not, a, mapping]\n")
    doc = wait_until(lambda: (d := read_state(state_path(node))) and d["membership"]["error"]
                     and d, 10, what="the error in the state file")
    assert doc["membership"]["error"]
    assert "127.0.0.9" in eds.read_text()


def test_failing_cycles_retry_every_interval_and_log_sparingly(tmp_path: Path, node: NodePaths,
                                                               stopper, caplog) -> None:
    repo = LocalSource(tmp_path / "repo")
    repo.root.mkdir()
    repo.push(make_version(tmp_path / "src/1", 1), "m", "1")
    # The model's directory becomes a link out of the repository: every cycle fails.
    shutil.move(repo.root / "m", tmp_path / "elsewhere")
    (repo.root / "m").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    store = LocalStore(node.models)
    store.root.mkdir(parents=True)
    syncer = Syncer(("m",), repo, store, Downloader(repo, 2), None, settle_seconds=0.01)
    interval = 0.05
    daemon = AgentDaemon(lambda: (syncer, interval), state=StateFile(state_path(node)))
    caplog.set_level(logging.INFO, logger="appliance.agent.daemon")
    stopper.append((daemon, _run(daemon)))
    doc = wait_until(lambda: (d := read_state(state_path(node))) and d["last_cycle"]
                     and d["last_cycle"]["failures_in_a_row"] >= 20 and d, 30,
                     what="20 failed cycles")
    last = doc["last_cycle"]
    assert doc["next_cycle_at"] - last["finished_at"] == pytest.approx(interval, abs=1e-3)
    (repo.root / "m").unlink()
    shutil.move(tmp_path / "elsewhere", repo.root / "m")
    wait_until(lambda: read_state(state_path(node))["last_cycle"]["result"] == "ok", 30,
               what="a good cycle once the repository is fixed")
    failed_lines = [r for r in caplog.records if "FAILED" in r.getMessage()]
    numbers = [int(r.getMessage().split("failure ")[1].split(" ")[0]) for r in failed_lines]
    assert numbers[:5] == [1, 2, 4, 8, 16], numbers
    assert all(n & (n - 1) == 0 for n in numbers), "only powers of two: no flood"
    assert "like it not logged" in failed_lines[2].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)
