"""The model server refuses to start, with TF Serving's messages: a bad config file, an unknown
flag, a model that fails to load."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TFS_TESTDATA, venv_bin


def test_server_exits_on_bad_config_and_unknown_flag(tmp_path: Path) -> None:
    path = tmp_path / "bad.config"
    path.write_text("improperly formatted file\n")
    proc = subprocess.run([venv_bin("appliance-model-server"), f"--model_config_file={path}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'" in proc.stderr
    proc = subprocess.run([venv_bin("appliance-model-server"), "--bogus=1"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "unknown argument: --bogus=1" in proc.stderr


def test_server_exits_when_model_fails_to_load(tmp_path: Path) -> None:
    (tmp_path / "m" / "7").mkdir(parents=True)
    proc = subprocess.run([venv_bin("appliance-model-server"), "--port=0", "--model_name=m",
                           f"--model_base_path={tmp_path / 'm'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Failed to start server. Error: UNKNOWN: 1 model(s) did not become available: {{name: m version: 7}" \
        in proc.stderr


@pytest.mark.skipif(not TFS_TESTDATA.is_dir(), reason="TF Serving testdata not present")
def test_official_bad_model_config_fails() -> None:
    proc = subprocess.run([venv_bin("appliance-model-server"),
                           f"--model_config_file={TFS_TESTDATA / 'bad_model_config.txt'}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr
