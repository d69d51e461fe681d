"""A canary on one model server under ``versions: latest``, nothing pinned (issue 18).

The rollout's candidate is loaded on top of the version policy, which never picks it while the
rollout names it: a version pushed after the rollout began is the newest on disk yet gets only
its share, and once the rollout is removed (a promotion) ``latest`` serves it alone.
Model ``canary`` (tests/tfmodels.py): v1 answers 0.5x+2, v2 0.5x+3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import Processes, wait_until
from tests.tfmodels import canary, save_version, serve_config

NAME = "canary"


def _answered_by(url: str, path: str = "") -> int:
    answer = requests.post(f"{url}/v1/models/{NAME}{path}:predict", json={"instances": [1.0]}, timeout=30)
    answer.raise_for_status()
    return {2.5: 1, 3.5: 2}[round(answer.json()["predictions"][0], 4)]


def _settings(root: Path, url: str, entry: dict) -> None:
    data = json.dumps({"models": {NAME: entry}}).encode()
    (root / "model-settings.json").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    wait_until(lambda: requests.get(url + "/appliance/v1/applied-config", timeout=5).json()
               ["model_settings_file"] == digest, timeout=30, what="the settings applied")


def _available(url: str) -> set[int]:
    rows = requests.get(f"{url}/v1/models/{NAME}", timeout=5).json()["model_version_status"]
    return {int(row["version"]) for row in rows if row["state"] == "AVAILABLE"}


def test_a_newer_candidate_under_latest_serves_its_share_only_until_promoted(tmp_path: Path) -> None:
    staged, base = tmp_path / "staged", tmp_path / "models" / NAME
    for version, bias in ((1, 2.0), (2, 3.0)):
        save_version(staged / str(version), canary(bias))
    shutil.copytree(staged / "1", base / "1")
    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ config {{ name: '{NAME}' base_path: '{base}' "
                      "model_platform: 'tensorflow' } }\n")
    (tmp_path / "model-settings.json").write_text('{"models": {}}')
    processes = Processes()
    try:
        url, _ = serve_config(processes, config, "rollout-model-server.log",
                              extra=[f"--model_settings_file={tmp_path / 'model-settings.json'}",
                                     "--model_config_file_poll_wait_seconds=1"])
        _settings(tmp_path, url, {"rollout": {"version": 2, "percent": 10}})
        shutil.copytree(staged / "2", base / "2")        # pushed after the rollout began
        wait_until(lambda: _available(url) == {1, 2}, timeout=120, what="v2 loaded on top of v1")
        answers = [_answered_by(url) for _ in range(300)]
        assert 5 <= answers.count(2) <= 60, answers.count(2)   # its share (10 %), not every request
        assert {_answered_by(url, "/versions/2"), _answered_by(url, "/versions/1")} == {1, 2}

        _settings(tmp_path, url, {})                      # promoted: latest picks v2 by itself
        assert {_answered_by(url) for _ in range(20)} == {2}
        wait_until(lambda: _available(url) == {2}, timeout=60, what="v1 unloaded")
    finally:
        processes.stop_all()
