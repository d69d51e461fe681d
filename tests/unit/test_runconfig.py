"""The running config (one writer, one reader) and what applying a change means for overrides,
for an edited config file and for an invalid one -- the parts decided before any process is
reached (the rest runs against a real node in tests/integration/test_node.py)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from appliance import control, runconfig
from appliance.config import NodePaths, load_config
from appliance.errors import ApplianceError, ConfigError

REPO = Path(__file__).resolve().parents[2]


def _run_dir(paths: NodePaths) -> dict[str, bytes]:
    """What the node runs with: every file of its run dir (the lock of a change is none)."""
    return {str(p.relative_to(paths.run)): p.read_bytes() for p in paths.run.rglob("*")
            if p.is_file() and p.name != "apply.lock"}


@pytest.fixture
def node(tmp_path: Path) -> NodePaths:
    """A node that `up` started from its config file with one --set (nothing runs)."""
    paths = NodePaths(tmp_path / "node")
    paths.etc.mkdir(parents=True)
    paths.config_file.write_text("node.address: 127.0.0.1\nhttp.port: 18080\n")
    overrides = ["http.port=18081"]
    runconfig.publish(paths, load_config(paths.config_file, overrides), paths.config_file, overrides)
    return paths


def test_the_running_config_is_read_back_with_where_it_came_from(node: NodePaths) -> None:
    running = runconfig.read(node)
    assert running.config.http_port == 18081       # the override won over the file
    assert running.config_file == node.config_file
    assert running.overrides == ("http.port=18081",)
    assert stat.S_IMODE(runconfig.path(node).stat().st_mode) == 0o600   # it holds secrets
    assert not runconfig.publish(node, running.config, node.config_file, ["http.port=18081"]), \
        "the same config again rewrites nothing (no watcher wakes up)"


def test_no_running_config_says_no_node_was_started(tmp_path: Path) -> None:
    with pytest.raises(runconfig.NotStarted, match="no node was started under"):
        runconfig.read(NodePaths(tmp_path))


def test_the_follower_rereads_only_a_changed_file_and_keeps_the_last_good_one(node: NodePaths) -> None:
    follow = runconfig.Follower(node)
    first = follow()
    assert follow() is first
    runconfig.publish(node, load_config(None, ["http.port=18082"]), None, ["http.port=18082"])
    second = follow()
    assert second.config.http_port == 18082 and second.config_file is None
    runconfig.path(node).write_text("{not yaml")
    assert follow() is second


def test_an_unchanged_file_is_no_pending_edit_an_edited_one_keeps_the_overrides(node: NodePaths) -> None:
    assert control.pending_edit(node) is None
    node.config_file.write_text("node.address: 127.0.0.1\nhttp.port: 18080\nenable.access.log: true\n")
    edited = control.pending_edit(node)
    assert edited is not None and edited.access_log and edited.http_port == 18081


def test_an_invalid_edit_is_logged_by_key_path_only_and_changes_nothing(
        node: NodePaths, caplog: pytest.LogCaptureFixture) -> None:
    before = _run_dir(node)
    node.config_file.write_text("node.address: 127.0.0.1\nsync.interval.seconds: TOPSECRET\n")
    caplog.set_level(logging.INFO, logger="appliance.control")
    assert control.apply_file_edit(node) is False
    assert "keys: sync.interval.seconds" in caplog.text and "TOPSECRET" not in caplog.text
    assert _run_dir(node) == before


def test_apply_refuses_an_invalid_config_before_anything_changes(node: NodePaths) -> None:
    before = _run_dir(node)
    with pytest.raises(ConfigError, match="http.port"):
        control.apply(node, ["http.port=eighty"], progress=lambda line: None)
    assert _run_dir(node) == before


def test_apply_to_a_node_that_is_not_running_says_so_and_renders_nothing(node: NodePaths) -> None:
    before = _run_dir(node)
    with pytest.raises(ApplianceError, match="is not running: `appliance up` starts it"):
        control.apply(node, None, progress=lambda line: None)
    assert _run_dir(node) == before


def test_one_module_knows_the_running_config_file() -> None:
    """Issue 11's Must-show 4: one writer and one reader; nothing else spells the file's name."""
    name = runconfig.path(NodePaths(Path("/"))).name
    spelled = sorted(str(p.relative_to(REPO)) for top in ("appliance", "logviewer", "modelserver")
                     for p in (REPO / top).rglob("*.py") if name in p.read_text(encoding="utf-8"))
    assert spelled == ["appliance/runconfig.py"]
    gone = [p for top in ("appliance", "logviewer") for p in (REPO / top).rglob("*.py")
            if "effective.yaml" in p.read_text() or "config-sources.yaml" in p.read_text()]
    assert gone == []
