"""``model_platform: auto`` in the real model server: measured, checked, reported, cached.

Four SavedModels, each with a warmup set (``assets.extra/tf_serving_warmup_requests``), under
``auto``; TensorFlow f32 is their reference:

* ``special`` (``bessel_i0e``): OpenVINO has no conversion rule for it: TensorFlow serves, the
  report says why OpenVINO was not chosen.
* ``altered``: half_plus_two whose OpenVINO copy has its weights scaled by 1.05 (the settings'
  test-only ``openvino.perturb_weights``): it disagrees, TensorFlow serves, the disagreement is
  reported with its size.
* ``agrees``: half_plus_two allowed only OpenVINO (``auto.runtimes``): it agrees and serves.
* ``plain``: half_plus_two without a warmup set: not measured, TensorFlow serves.

A second server on the same runtime cache does not measure again ("measured earlier"). The
report reaches the appliance's readers: its model server client and the log viewer's pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

from appliance.config import NodePaths, load_config
from appliance.modelstatus import ModelServerClient
from tests import tfmodels
from tests.conftest import ARTIFACTS, Processes

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow

RUNTIMES = "/appliance/v1/runtimes"
X = np.array([[1.0], [2.0], [5.0]], np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node root whose store holds the models (the log viewer reads it); models.config and the
    settings file next to it. Returns the store."""
    root = NodePaths(tmp_path_factory.mktemp("auto")).models
    builds = {"special": tfmodels.special, "altered": tfmodels.half_plus(2.0), "agrees": tfmodels.half_plus(2.0),
              "plain": tfmodels.half_plus(2.0)}
    for name, build in builds.items():
        tfmodels.save_version(root / name / "1", build)
        if name != "plain":
            tfmodels.write_warmup(root / name / "1", [tfmodels.predict_log(name, {"x": X})])
    (root / "models.config").write_text("model_config_list {\n" + "".join(
        f"  config {{ name: '{name}' base_path: '{root / name}' model_platform: 'auto' }}\n" for name in builds) + "}\n")
    (root / "settings.json").write_text(json.dumps({"models": {
        "altered": {"openvino": {"perturb_weights": 0.05}},
        "agrees": {"auto": {"runtimes": ["openvino"]}}}}))
    return root


def _serve(processes: Processes, root: Path, log_name: str) -> str:
    log = ARTIFACTS / log_name
    ARTIFACTS.mkdir(exist_ok=True)
    log.write_bytes(b"")
    return tfmodels.start_model_server(processes, [f"--model_config_file={root / 'models.config'}",
                                                   f"--model_settings_file={root / 'settings.json'}",
                                                   f"--runtime_cache_dir={root / 'cache'}"], log, timeout=600)


@pytest.fixture(scope="module")
def report(setup: Path, session_processes: Processes) -> tuple[str, dict]:
    server = _serve(session_processes, setup, "model_server_auto.log")
    return server, requests.get(server + RUNTIMES, timeout=10).json()["models"]


def _candidates(choice: dict) -> dict[str, dict]:
    return {f"{c['runtime']} {c['precision']}": c for c in choice["candidates"]}


def test_a_model_openvino_cannot_convert_falls_back_to_tensorflow(report: tuple[str, dict]) -> None:
    server, models = report
    choice = models["special"]["versions"]["1"]
    assert (choice["platform"], choice["precision"], choice["how"]) == ("tensorflow", "f32", "measured")
    openvino = _candidates(choice)["openvino f32"]
    assert openvino["verdict"] == "failed"
    assert "No conversion rule found for operations: BesselI0e" in openvino["reason"]
    answer = requests.post(server + "/v1/models/special:predict", json={"instances": [[1.0]]}, timeout=30)
    assert answer.json()["predictions"][0][0] == pytest.approx(0.4657596)


def test_a_disagreeing_openvino_copy_is_reported_and_never_chosen(report: tuple[str, dict]) -> None:
    server, models = report
    choice = models["altered"]["versions"]["1"]
    assert (choice["platform"], choice["how"]) == ("tensorflow", "measured")
    openvino = _candidates(choice)["openvino f32"]
    assert openvino["verdict"] == "disagrees"
    assert openvino["reason"].startswith("output y: 3 of 3 values outside atol 0.0001 + rtol 0.001")
    assert openvino["max_abs_diff"] == pytest.approx(0.05 * 4.5, rel=1e-3)   # 1.05 * (0.5 * 5 + 2) - 4.5
    assert _candidates(choice)["tensorflow f32"]["verdict"] == "reference"
    answer = requests.post(server + "/v1/models/altered:predict", json={"instances": [[5.0]]}, timeout=30)
    assert answer.json() == {"predictions": [[4.5]]}


def test_an_agreeing_runtime_serves_and_a_model_without_warmup_is_not_measured(report: tuple[str, dict]) -> None:
    server, models = report
    agrees = models["agrees"]["versions"]["1"]
    assert (agrees["platform"], agrees["precision"], agrees["how"]) == ("openvino", "f32", "measured")
    assert _candidates(agrees)["openvino f32"]["verdict"] == "agrees"
    assert all(c["seconds_per_pass"] > 0 for c in agrees["candidates"])
    plain = models["plain"]["versions"]["1"]
    assert plain["platform"] == "tensorflow" and plain["how"].startswith("not measured: no warmup requests")
    for name in ("agrees", "plain"):
        answer = requests.post(server + f"/v1/models/{name}:predict", json={"instances": [[1.0]]}, timeout=30)
        assert answer.json() == {"predictions": [[2.5]]}


def test_a_restart_neither_measures_nor_converts_again(report: tuple[str, dict], setup: Path,
                                                       session_processes: Processes) -> None:
    server = _serve(session_processes, setup, "model_server_auto_restart.log")
    models = requests.get(server + RUNTIMES, timeout=10).json()["models"]
    for name, platform in (("special", "tensorflow"), ("altered", "tensorflow"), ("agrees", "openvino")):
        choice = models[name]["versions"]["1"]
        assert (choice["platform"], choice["how"]) == (platform, "measured earlier"), name
        assert choice["candidates"] == report[1][name]["versions"]["1"]["candidates"]
    log = (ARTIFACTS / "model_server_auto_restart.log").read_text()
    assert "converted network read from the cache" in log and "on OpenVINO" not in log


def test_the_choice_reaches_the_client_and_the_log_viewer(report: tuple[str, dict], setup: Path) -> None:
    from logviewer import create_app, credentials
    from tests.unit.test_logviewer_app import login

    server, _ = report
    choices = ModelServerClient(server).runtimes()
    assert choices["altered"][1].describe().startswith(
        "tensorflow f32 (measured); tensorflow f32: reference, ")
    assert "openvino f32: disagrees, " in choices["altered"][1].describe()
    paths = NodePaths(setup.parent.parent)
    assert paths.models == setup
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    (paths.etc / "appliance.yaml").write_text("model.name: special,altered,agrees,plain\n")
    app = create_app(paths, load_config(paths.etc / "appliance.yaml"), rest_base=server)
    client = app.test_client()
    login(client, credentials.set_password(paths.etc))
    page = client.get("/models/altered").get_data(as_text=True)
    assert "tensorflow f32 <span class=\"muted\">(measured)</span>" in page
    page = client.get("/models/special/1").get_data(as_text=True)
    assert 'id="runtime-candidates"' in page and "No conversion rule found for operations: BesselI0e" in page
