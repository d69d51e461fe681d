"""`appliance up --foreground` tells systemd the truth: a node that stops serving exits non-zero.

Real supervisord, Envoy and model server under a temp root: supervisord killed (its programs
must not run on unsupervised), a model that never loads (the start timeout), a program that
keeps crashing (FATAL within seconds, reported with its log)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from appliance.supervision import pid_alive
from tests.conftest import Processes, wait_until
from tests.integration.node_harness import CLI, NodeUnderTest, new_node, wait_gone

pytestmark = pytest.mark.slow
MODEL = "saved_model_half_plus_two_mkl"


def _foreground(node: NodeUnderTest, processes: Processes, log: Path,
                *extra: str) -> subprocess.Popen:
    return processes.start(CLI + ["--root", str(node.root), "up", "--foreground",
                                  "--set", f"model.name={MODEL}", "--set", "logviewer.enabled=false",
                                  *extra, *node.overrides], log=log)


def _serves(node: NodeUnderTest) -> bool:
    resp = requests.post(f"{node.url}/v1/models/{MODEL}:predict",
                         data='{"instances": [1.0]}', timeout=5)
    return resp.status_code == 200


def _serving(models: Path, tmp_path: Path,
             processes: Processes) -> tuple[NodeUnderTest, Path, subprocess.Popen]:
    """A node started by `up --foreground`, once it answers through Envoy."""
    node = new_node(tmp_path, models, [MODEL])
    log = tmp_path / "foreground.log"
    proc = _foreground(node, processes, log)
    wait_until(lambda: _serves(node), timeout=240, what="the node to serve")
    return node, log, proc


def test_killing_supervisord_fails_up_and_stops_its_programs(builtin_models: Path, tmp_path: Path,
                                                             processes: Processes) -> None:
    node, log, proc = _serving(builtin_models, tmp_path, processes)
    pids = node.pids()
    supervisord, programs = pids[0], pids[1:]
    assert len(programs) >= 3      # agent, model server, envoy
    os.kill(supervisord, signal.SIGKILL)
    try:
        code = proc.wait(90)
        left = wait_gone(programs, 5)
    finally:
        node.kill_all(wait_gone(programs, 0))
    assert code != 0, log.read_text()
    assert left == [], "supervisord's programs ran on unsupervised"
    text = log.read_text()
    assert "supervisord exited on its own" in text
    assert "left behind" in text
    with pytest.raises(OSError):
        socket.create_connection((node.address, node.http_port), timeout=1)


def test_appliance_down_is_a_clean_stop(builtin_models: Path, tmp_path: Path,
                                        processes: Processes) -> None:
    node, log, proc = _serving(builtin_models, tmp_path, processes)
    pids = node.pids()
    assert node.cli("down", timeout=120).returncode == 0
    assert proc.wait(90) == 0, log.read_text()
    assert wait_gone(pids, 5) == []


def test_a_model_that_never_loads_fails_up_after_the_start_timeout(tmp_path: Path,
                                                                   processes: Processes) -> None:
    node = new_node(tmp_path, tmp_path, [])
    version = tmp_path / "data/models" / MODEL / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    log = tmp_path / "foreground.log"
    # Long enough for the model server to start twice on a loaded CI machine (~8 s each: the
    # first start exits on the bad model as TF Serving's does, the second quarantines it).
    proc = _foreground(node, processes, log, "--set", "startup.timeout.seconds=45")
    try:
        code = proc.wait(180)
    finally:
        pids = [p for p in node.pids() if pid_alive(p)]
    text = log.read_text()
    assert code != 0, text
    assert f"timed out after 45s waiting for model {MODEL} AVAILABLE" in text
    assert pids == [] or wait_gone(pids, 5) == []


def test_a_program_that_keeps_crashing_is_fatal_in_seconds_with_its_log(
        builtin_models: Path, tmp_path: Path, processes: Processes) -> None:
    node = new_node(tmp_path, builtin_models, [MODEL])
    log = tmp_path / "foreground.log"
    with socket.socket() as taken:     # Envoy cannot bind its REST port: it exits at each start
        taken.bind((node.address, node.http_port))
        taken.listen()
        proc = _foreground(node, processes, log)
        code = proc.wait(180)
    text = log.read_text()
    assert code != 0, text
    assert "envoy failed to start" in text
    assert "last lines of" in text and "envoy.log" in text
    assert "Address already in use" in text or "cannot bind" in text
