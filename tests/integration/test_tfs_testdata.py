"""The official TF Serving test models (``TFS_TESTDATA``), read in place, never copied."""

from __future__ import annotations

import json

import pytest
import requests

from tests import tfmodels
from tests.conftest import ARTIFACTS, TFS_TESTDATA, Processes

if not TFS_TESTDATA.is_dir():
    pytest.skip(f"TF Serving testdata not found at {TFS_TESTDATA}", allow_module_level=True)

MODELS = {
    "half_plus_two": "saved_model_half_plus_two_cpu",
    "half_plus_two_tf2": "saved_model_half_plus_two_tf2_cpu",
    "half_plus_three": "saved_model_half_plus_three",
    "two_versions": "saved_model_half_plus_two_2_versions",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> str:
    config = tmp_path_factory.mktemp("tfs_testdata") / "models.config"
    entries = "".join(f"  config {{ name: '{name}' base_path: '{TFS_TESTDATA / folder}' model_platform: 'tensorflow' }}\n"
                      for name, folder in MODELS.items())
    config.write_text("model_config_list {\n" + entries + "}\n")
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "model_server_tfs_testdata.log"
    log.write_bytes(b"")
    return tfmodels.start_model_server(session_processes, [f"--model_config_file={config}"], log)


def predict(server: str, model: str, body: dict) -> requests.Response:
    return requests.post(f"{server}/v1/models/{model}:predict", data=json.dumps(body), timeout=30)


@pytest.mark.parametrize("model,expected", [
    ("half_plus_two", [3.0, 3.5, 4.0]),
    ("half_plus_two_tf2", [3.0, 3.5, 4.0]),
    ("half_plus_three", [4.0, 4.5, 5.0]),
    ("two_versions", [3.0, 3.5, 4.0]),
])
def test_predict(server: str, model: str, expected: list[float]) -> None:
    # Shape [3] fed to a [-1,1] placeholder: TF Serving does not check shapes, nor do we.
    row = predict(server, model, {"instances": [2.0, 3.0, 4.0]})
    assert row.status_code == 200, row.text
    assert row.json() == {"predictions": expected}
    columnar = predict(server, model, {"inputs": [2.0, 3.0, 4.0]})
    assert columnar.json() == {"outputs": expected}


def test_metadata_matches_official_file(server: str) -> None:
    expected = json.loads((TFS_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    expected["model_spec"]["name"] = "half_plus_two"
    got = requests.get(f"{server}/v1/models/half_plus_two/metadata", timeout=10).json()
    assert got == expected


def test_two_versions_serves_latest(server: str) -> None:
    status = requests.get(f"{server}/v1/models/two_versions", timeout=10).json()
    assert [s["version"] for s in status["model_version_status"]] == ["124"]
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    expected = json.loads((TFS_TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    got = requests.get(f"{server}/v1/models/two_versions/metadata", timeout=10).json()
    # The official file was written for version 123; latest{1} serves 124, with the same signatures.
    assert got["model_spec"] == {"name": "two_versions", "signature_name": "", "version": "124"}
    assert got["metadata"] == expected["metadata"]
    missing = predict(server, "two_versions/versions/123", {"instances": [1.0]})
    assert missing.status_code == 404
    assert missing.json() == {"error": "Servable not found for request: Specific(two_versions, 123)"}


@pytest.mark.parametrize("model,verb,body,expected", [
    ("half_plus_two", "regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}, [3.0]),
    ("half_plus_two", "classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}, [[["", 3.0]]]),
    ("half_plus_two_tf2", "regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}, [3.0]),
    ("half_plus_two_tf2", "classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     [[["", 3.0]]]),
    ("half_plus_three", "regress", {"signature_name": "tensorflow/serving/regress",
                                    "examples": [{"x": 1.0}, {"x": 2.0}]}, [3.5, 4.0]),
])
def test_classify_regress(server: str, model: str, verb: str, body: dict, expected: list) -> None:
    r = requests.post(f"{server}/v1/models/{model}:{verb}", data=json.dumps(body), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"results": expected}
