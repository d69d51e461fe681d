"""Shadow traffic on one model server (modelserver/shadow.py): copies of unversioned requests
go to a candidate version and to the primary again, and the report says how the answers compare.

One server, two models built with TensorFlow (tests/tfmodels.py ``classifier``):

* ``cls``: version 1 serves (``specific: 1``); version 2 answers 1e-7 off (below tolerance),
  version 3 moves the top class of every row whose ``x[0]`` is negative; each test request
  holds 20 rows, one of them negative, so exactly 5 % of the inputs change class;
* ``noisy``: versions 1 and 2 are the same model with dropout at inference, so its answers vary
  from run to run; the secondary run shows that noise and the report does not call it a regression.

REST and gRPC requests without a version are copied; requests naming a version never are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from modelserver.shadow import DETERMINISTIC_AFTER, SECONDARY_EVERY
from tests.conftest import Processes, wait_until
from tests.tfmodels import classifier, save_version, send_classifier, serve_config

ROWS = 20
SHADOW_PATH = "/appliance/v1/shadow"


def _config(models: Path) -> str:
    parts = [f"  config {{ name: '{name}' base_path: '{models / name}' model_platform: 'tensorflow' "
             "model_version_policy { specific { versions: 1 } } }\n" for name in ("cls", "noisy")]
    return "model_config_list {\n" + "".join(parts) + "}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shadow")
    models = root / "models"
    builds = {("cls", 1): classifier(), ("cls", 2): classifier(perturb=1e-7), ("cls", 3): classifier(flip=True),
              ("noisy", 1): classifier(dropout=0.3), ("noisy", 2): classifier(dropout=0.3)}
    for (name, version), build in builds.items():
        save_version(models / name / str(version), build)
    (root / "models.config").write_text(_config(models))
    _write_settings(root, {})
    processes = Processes()
    try:
        url, grpc_port = serve_config(processes, root / "models.config", "shadow-model-server.log",
                                      extra=[f"--model_settings_file={root / 'model-settings.json'}",
                                             "--model_config_file_poll_wait_seconds=1"])
        yield root, url, grpc_port
    finally:
        processes.stop_all()


def _write_settings(root: Path, shadows: dict[str, dict]) -> str:
    data = json.dumps({"models": {name: {"shadow": shadow} for name, shadow in shadows.items()}}).encode()
    (root / "model-settings.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _apply(root: Path, url: str, shadows: dict[str, dict], loaded: dict[str, set[int]]) -> None:
    """Set the shadows; return once the server follows them and has exactly ``loaded`` available."""
    digest = _write_settings(root, shadows)
    wait_until(lambda: requests.get(url + "/appliance/v1/applied-config", timeout=5).json()
               ["model_settings_file"] == digest, timeout=30, what="the settings applied")
    for name, versions in loaded.items():
        wait_until(lambda: _available(url, name) == versions, timeout=120, what=f"{name} versions {versions}")


def _available(url: str, name: str) -> set[int]:
    rows = requests.get(f"{url}/v1/models/{name}", timeout=5).json()["model_version_status"]
    return {int(row["version"]) for row in rows if row["state"] == "AVAILABLE"}


def _report(url: str, name: str) -> dict:
    return requests.get(url + SHADOW_PATH, timeout=5).json()["models"][name]


def _drained(url: str, name: str, sampled: int) -> dict:
    """The report once every copy taken so far was compared, skipped or dropped."""
    def done() -> dict | None:
        report = _report(url, name)
        counts = report["requests"]
        handled = counts["compared"] + counts["skipped"] + counts["dropped"]
        return report if counts["sampled"] >= sampled and handled == counts["sampled"] else None
    return wait_until(done, timeout=120, what=f"the shadow of {name} to compare what it took")


def test_candidates_within_tolerance_differing_and_noisy(server) -> None:
    root, url, grpc_port = server
    _apply(root, url, {"cls": {"version": 2, "sample": 100}, "noisy": {"version": 2, "sample": 100}},
           {"cls": {1, 2}, "noisy": {1, 2}})

    send_classifier(url, f"127.0.0.1:{grpc_port}", "cls", 30, seed=1)
    send_classifier(url, f"127.0.0.1:{grpc_port}", "noisy", 30, seed=2, check=False)
    for version in (1, 2):   # explicit versions are never copied
        requests.post(f"{url}/v1/models/cls/versions/{version}:predict", json={"instances": [[1, 0, 0, 0]]},
                      timeout=30).raise_for_status()
    close = _drained(url, "cls", 20)
    assert close["requests"]["seen"] == 30 and close["primary"] == [1] and close["candidate"] == 2
    assert close["verdict"] == "agrees" and close["agreement_percent"] == 100.0, close
    scores = close["outputs"]["scores"]
    assert scores["differing_rows"] == 0 and scores["classifier"]["top1_agreement_percent"] == 100.0
    assert scores["rows"] == ROWS * close["requests"]["compared"]
    assert close["cpu_seconds"] > 0            # what the copies' runs and comparisons took

    noisy = _drained(url, "noisy", 20)
    assert noisy["verdict"] == "agrees", noisy
    noise = noisy["outputs"]["scores"]
    assert noise["differing_percent"] > 50 and noise["noise_percent"] > 50      # dropout: every run differs
    assert noise["classifier"]["top1_changed_percent"] > 5                     # ...and so does its top class
    assert not noise["regression"] and not noise["classifier"]["regression"] and noisy["noisy"] == ["scores"]
    assert not noisy["deterministic"] and noisy["requests"]["secondary_runs"] == noisy["requests"]["compared"]

    # The candidate now flips the top class of 1 row in 20: a new report for the new candidate.
    _apply(root, url, {"cls": {"version": 3, "sample": 100}}, {"cls": {1, 3}, "noisy": {1}})
    send_classifier(url, f"127.0.0.1:{grpc_port}", "cls", 60, seed=3)
    flipped = _drained(url, "cls", 40)
    assert flipped["candidate"] == 3 and flipped["requests"]["seen"] == 60 and flipped["verdict"] == "differs"
    top1 = flipped["outputs"]["scores"]["classifier"]
    assert abs(top1["top1_changed_percent"] - 5.0) <= 1.0 and top1["top1_noise"] == 0 and top1["regression"]
    assert flipped["regressions"] == ["scores"] and flipped["agreement_percent"] == 95.0
    # Version 1 answered its secondary runs bit for bit alike: after DETERMINISTIC_AFTER copies
    # its secondary runs on one copy in SECONDARY_EVERY only.
    compared = flipped["requests"]["compared"]
    assert compared == 60 and flipped["deterministic"], flipped["requests"]
    assert flipped["requests"]["secondary_runs"] == DETERMINISTIC_AFTER + -(-(compared - DETERMINISTIC_AFTER) // SECONDARY_EVERY)
    examples = flipped["examples"]
    assert examples and {example["api"] for example in examples} <= {"REST", "gRPC"}
    for example in examples:
        row = example["outputs"]["scores"]["top1"][0]["row"]
        assert example["inputs"]["x"][row][0] == -1.0        # the request, with the input that flipped
        assert example["rows"] == [row]
    stopped = _report(url, "noisy")
    assert not stopped["running"] and stopped["stopped"] is not None   # its last report stays

    _apply(root, url, {}, {"cls": {1}})
    assert not _report(url, "cls")["running"]


def test_a_sample_of_the_requests_is_copied(server) -> None:
    root, url, grpc_port = server
    _apply(root, url, {"cls": {"version": 2, "sample": 25}}, {"cls": {1, 2}})
    try:
        send_classifier(url, f"127.0.0.1:{grpc_port}", "cls", 200, seed=4)
        report = _drained(url, "cls", 1)
        counts = report["requests"]
        assert counts["seen"] == 200 and 20 <= counts["sampled"] <= 80
        assert counts["compared"] + counts["dropped"] + counts["skipped"] == counts["sampled"]
    finally:
        _apply(root, url, {}, {"cls": {1}})
