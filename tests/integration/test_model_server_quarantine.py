"""A version that fails to load is quarantined: the newest good version serves, also after a restart.

One real model server on a local model dir with ``--quarantine_dir``: a corrupt v5 above a good
v2 -> v2 serves and v5 is reported END with its error; a restart does not try v5 again (and does
not exit); a good v4 pushed below the corrupt v5 is loaded; v5 replaced by good files under the
same number (as the agent installs a re-push: one rename) is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests import tfmodels
from tests.conftest import ARTIFACTS, Processes, venv_bin, wait_until

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow


def _stage(staging: Path, base: Path, version: int, bias: float) -> None:
    tmp = staging / f"v{version}-{bias}"
    tfmodels.save_version(tmp, tfmodels.half_plus(bias))
    target = base / str(version)
    if target.exists():                    # a re-push: swap in by rename, as agent/store.py does
        os.rename(target, staging / f"old-{version}")
        shutil.rmtree(staging / f"old-{version}")
    os.rename(tmp, target)


def _corrupt(staging: Path, base: Path, version: int) -> None:
    tmp = staging / f"bad{version}"
    tmp.mkdir()
    (tmp / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(tmp, base / str(version))


def _rows(url: str) -> dict[int, dict]:
    rows = requests.get(f"{url}/v1/models/q", timeout=10).json()["model_version_status"]
    return {int(r["version"]): r for r in rows}


def _predict(url: str) -> float:
    r = requests.post(f"{url}/v1/models/q:predict", data=b'{"instances": [1.0]}', timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def test_failed_version_is_quarantined_across_restarts(tmp_path: Path, processes: Processes) -> None:
    base, staging, qdir = tmp_path / "q", tmp_path / "staging", tmp_path / "quarantine"
    base.mkdir()
    staging.mkdir()
    _stage(staging, base, 2, 2.0)                  # 2.5 at x=1
    _corrupt(staging, base, 5)
    ARTIFACTS.mkdir(exist_ok=True)
    args = ["--model_name=q", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
            f"--quarantine_dir={qdir}"]

    # First start: v5 fails, is quarantined, and v2 serves (TF Serving would exit here).
    log1 = ARTIFACTS / "model_server_quarantine_1.log"
    log1.write_bytes(b"")
    url = tfmodels.start_model_server(processes, args, log1)
    rows = _rows(url)
    assert rows[2]["state"] == "AVAILABLE" and rows[5]["state"] == "END"
    assert rows[5]["status"]["error_code"] != "OK" and rows[5]["status"]["error_message"]
    assert _predict(url) == 2.5
    record = json.loads((qdir / "q.json").read_text())
    assert list(record["versions"]) == ["5"]
    assert record["versions"]["5"]["error"] == rows[5]["status"]["error_message"]

    # Restart: v5 is not loaded again, GetModelStatus still reports it END with its error.
    processes.stop_all()
    log2 = ARTIFACTS / "model_server_quarantine_2.log"
    log2.write_bytes(b"")
    url = tfmodels.start_model_server(processes, args, log2)
    rows = _rows(url)
    assert rows[2]["state"] == "AVAILABLE" and rows[5]["state"] == "END"
    assert rows[5]["status"]["error_message"] == record["versions"]["5"]["error"]
    assert _predict(url) == 2.5
    assert "version: 5} from" not in log2.read_text()

    # A newer good version below the quarantined one is loaded (it used to be never aspired).
    _stage(staging, base, 4, 3.0)                  # 3.5 at x=1
    wait_until(lambda: _rows(url)[4]["state"] == "AVAILABLE", timeout=60, what="v4 AVAILABLE")
    wait_until(lambda: _rows(url)[2]["state"] == "END", timeout=30, what="v2 unloaded")
    assert _predict(url) == 3.5

    # The same number re-pushed with good files: it leaves quarantine and serves.
    _stage(staging, base, 5, 4.0)                  # 4.5 at x=1
    wait_until(lambda: _rows(url)[5]["state"] == "AVAILABLE", timeout=60, what="fixed v5 AVAILABLE")
    assert _predict(url) == 4.5
    assert not (qdir / "q.json").exists()
    assert "leaves quarantine: its files changed" in log2.read_text()


def test_every_version_quarantined_before_the_start(tmp_path: Path, processes: Processes) -> None:
    """A model with only a failed version: the first start exits as TF Serving does; the next one
    serves the other models instead of exiting at every start, and loads it once it is fixed."""
    good, bad, staging, qdir = tmp_path / "good", tmp_path / "q", tmp_path / "staging", tmp_path / "quarantine"
    for directory in (good, bad, staging):
        directory.mkdir()
    _stage(staging, good, 1, 2.0)
    _corrupt(staging, bad, 3)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n"
                      f"  config {{ name: 'good' base_path: '{good}' model_platform: 'tensorflow' }}\n"
                      f"  config {{ name: 'q' base_path: '{bad}' model_platform: 'tensorflow' }}\n}}\n")
    args = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=1", f"--quarantine_dir={qdir}"]
    ARTIFACTS.mkdir(exist_ok=True)
    first = ARTIFACTS / "model_server_quarantine_3.log"
    first.write_bytes(b"")
    proc = processes.start([venv_bin("appliance-model-server"), "--listen_address=127.0.0.1", "--port=0",
                            "--rest_api_port=0", *args], log=first)
    assert proc.wait(timeout=120) == 1
    assert "1 model(s) did not become available: {{name: q version: 3}" in first.read_text()
    assert (qdir / "q.json").exists()

    log = ARTIFACTS / "model_server_quarantine_4.log"
    log.write_bytes(b"")
    url = tfmodels.start_model_server(processes, args, log)
    assert requests.get(f"{url}/v1/models/good", timeout=10).json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert _rows(url)[3]["state"] == "END"
    assert "Model q is not served: every version of it on disk is quarantined" in log.read_text()
    _stage(staging, bad, 3, 4.0)
    wait_until(lambda: _rows(url)[3]["state"] == "AVAILABLE", timeout=60, what="fixed v3 AVAILABLE")
    assert _predict(url) == 4.5
