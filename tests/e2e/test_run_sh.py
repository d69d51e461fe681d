"""The README's first command, end to end: scripts/run.sh installs (already done: seconds),
builds the built-in models, serves the user guide's request through Envoy, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, Processes, wait_until
from tests.integration.node_harness import new_node, wait_gone
from tests.jpeg import make_jpeg

pytestmark = pytest.mark.slow


def test_run_sh_serves_the_user_guide_requests(builtin_models: Path, tmp_path: Path,
                                               processes: Processes) -> None:
    # The models the install step builds, linked in so this test does not build them twice;
    # run.sh's `appliance builtin-models` must see them as complete and skip them.
    node = new_node(tmp_path / "root", builtin_models, ["saved_model_half_plus_two_mkl", "resnet"])
    log = tmp_path / "run.log"
    env = dict(os.environ, APPLIANCE_ROOT=str(node.root))
    proc = processes.start([str(REPO / "scripts/run.sh"), *node.overrides], log=log, env=env,
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

    pids = node.pids()
    assert len(pids) >= 3  # supervisord, envoy, model server (and the logviewer)
    processes.stop(proc, sig=signal.SIGINT, timeout=90)
    assert wait_gone(pids, 30) == []
    text = log.read_text()
    assert "[install]" in text  # run.sh always runs the (idempotent) install step first
    assert "stopped" in text
