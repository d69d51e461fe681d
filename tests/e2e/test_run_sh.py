"""The README's first command, end to end, from a clean clone: scripts/run.sh installs (already
done: seconds), builds the built-in models, serves the user guide's request through Envoy, says
what to do next in its last lines, stays quiet (no setuptools banner, no TensorFlow cuInit alarm,
no supervisord CRIT), and Ctrl-C stops every process it started."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, Processes, wait_until
from tests.integration.node_harness import new_node, wait_gone
from tests.jpeg import make_jpeg

pytestmark = pytest.mark.slow

# What a first run must not print: setuptools' banner for data directories left out of
# `packages`, TF's red GPU-probe line on a machine without CUDA, supervisord's CRIT lines.
NOISE = re.compile(r"Package would be ignored|cuInit| CRIT ")


def clean_clone(dest: Path) -> Path:
    """The committed checkout, cloned; its .venv is the installed one (run.sh must not reinstall)."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)], check=True,
                   timeout=120)
    # The clone shares the .venv: had it another setup.py than the one the .venv was installed
    # from, run.sh would reinstall the shared .venv from the clone (which the test then deletes).
    want = hashlib.sha256((dest / "setup.py").read_bytes() + (dest / "constraints.txt").read_bytes()).hexdigest()
    stamp = REPO / ".venv/.appliance-installed"
    if not stamp.exists() or stamp.read_text().strip() != want:
        pytest.fail("the .venv was not installed from the committed setup.py and constraints.txt: "
                    "commit them and run scripts/install.sh first")
    (dest / ".venv").symlink_to((REPO / ".venv").resolve(), target_is_directory=True)
    return dest


def test_run_sh_serves_the_user_guide_requests(builtin_models: Path, tmp_path: Path,
                                               processes: Processes) -> None:
    clone = clean_clone(tmp_path / "clone")
    # The models the install step builds, linked in so this test does not build them twice;
    # run.sh's `appliance builtin-models` must see them as complete and skip them.
    node = new_node(tmp_path / "root", builtin_models, ["saved_model_half_plus_two_mkl", "resnet"])
    log = tmp_path / "run.log"
    env = dict(os.environ, APPLIANCE_ROOT=str(node.root))
    proc = processes.start([str(clone / "scripts/run.sh"), *node.overrides], log=log, env=env,
                           cwd=str(tmp_path))

    def answers() -> bool:
        resp = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                             data='{"instances": [1.0, 2.0, 5.0]}', timeout=5)
        return resp.status_code == 200

    wait_until(answers, timeout=400, what=f"run.sh to serve (log: {log})")
    resp = requests.post(f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict",
                         data='{"instances": [1.0, 2.0, 5.0]}', timeout=30)
    assert resp.text == '{"predictions": [2.5, 3.0, 4.5]}'
    image = base64.b64encode(make_jpeg(seed=7)).decode()
    resnet = requests.post(f"{node.url}/v1/models/resnet:predict",
                           json={"instances": [{"b64": image}]}, timeout=120)
    assert resnet.status_code == 200, resnet.text
    assert set(resnet.json()["predictions"][0]) == {"classes", "probabilities"}
    wait_until(lambda: "metrics: http" in log.read_text(), timeout=60, what="the closing lines")

    # The last lines say what to do next: the request to try, TLS on the same ports and the
    # edge certificate's fingerprint, the log browser and its password.
    started = log.read_text().rstrip("\n").splitlines()
    initial = node.root / "etc/appliance/logviewer.initial-password"
    closing = started[-6:]
    tried = next(line for line in closing if line.startswith("try:"))
    assert tried == ("try:  curl -d '{\"instances\": [1.0, 2.0, 5.0]}' -X POST "
                     f"{node.url}/v1/models/saved_model_half_plus_two_mkl:predict")
    assert any(line.startswith("edge certificate (self-signed") and "SHA-256 fingerprint" in line
               for line in closing), closing
    logs_url = f"http://{node.address}:{node.logviewer_port}/"
    assert started[-2].startswith(f"logs: {logs_url}  password: in {initial} (read it, log in, then delete it)")
    token = node.root / "etc/appliance/metrics.token"
    assert started[-1] == (f"metrics: {logs_url}metrics  (Authorization: Bearer <{token}>); "
                           f"dashboard: {logs_url}dashboard")
    assert token.stat().st_mode & 0o777 == 0o600
    assert requests.get(logs_url + "metrics", timeout=30,
                        headers={"Authorization": f"Bearer {token.read_text().strip()}"}).status_code == 200
    assert initial.stat().st_mode & 0o777 == 0o600
    curl = subprocess.run(tried.removeprefix("try:").strip(), shell=True, capture_output=True,
                          text=True, timeout=30)
    assert curl.stdout == '{"predictions": [2.5, 3.0, 4.5]}'

    pids = node.pids()
    assert len(pids) >= 3  # supervisord, envoy, model server (and the logviewer)
    processes.stop(proc, sig=signal.SIGINT, timeout=90)
    assert wait_gone(pids, 30) == []
    text = log.read_text()
    assert "[install] .venv is up to date" in text  # run.sh runs the (idempotent) install step first
    assert "stopped" in text
    assert NOISE.findall(text) == [], text
    logs = node.root / "var/log/appliance"
    assert "cuInit" not in (logs / "model_server.log").read_text()
    supervisord_log = (logs / "supervisord.log").read_text()
    assert "running as root" not in supervisord_log
    # Stopping is orderly: no process reported as killed by a signal it did not expect.
    assert "terminated by SIGTERM" not in supervisord_log, supervisord_log
