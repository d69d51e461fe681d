"""Availability-preserving version transitions, warmup, and versions that fail to load.

A client keeps sending Predict over REST and gRPC while a new version directory is renamed into
place and the old one is removed: no request may fail, and each client sees the answers switch
from the old version's outputs to the new one's exactly once. Then broken versions appear (a
corrupt SavedModel, an unparsable warmup file): they are reported END with their error while the
serving version keeps answering.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import tfmodels
from tests.conftest import ARTIFACTS, Processes, free_port, wait_until

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow


def _predict_log(x: float) -> bytes:
    return tfmodels.predict_log("switch", {"x": np.array([x], dtype=np.float32)})


def _stage(staging: Path, base: Path, version: int, bias: float, warmup: list[bytes] | None = None) -> None:
    """Export a version into ``staging`` and rename it into ``base`` (atomic on one filesystem)."""
    tmp = staging / f"v{version}"
    tfmodels.save_version(tmp, tfmodels.half_plus(bias))
    if warmup is not None:
        tfmodels.write_warmup(tmp, warmup)
    os.rename(tmp, base / str(version))


class Client(threading.Thread):
    """Sends Predict(x=1) in a loop; records every answer and every failure."""

    def __init__(self, send) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.stop = threading.Event()
        self.answers: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(self.send())
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                self.failures.append(repr(exc))


def _switches(answers: list[float]) -> int:
    return sum(1 for a, b in zip(answers, answers[1:]) if a != b)


def test_version_switch_under_load_then_failed_versions(tmp_path: Path, processes: Processes) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base, staging = tmp_path / "switch", tmp_path / "staging"
    base.mkdir()
    staging.mkdir()
    _stage(staging, base, 1, 2.0)                       # y = 0.5x + 2 -> 2.5 at x=1
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "model_server_transitions.log"
    log.write_bytes(b"")
    port = free_port()
    url = tfmodels.start_model_server(processes, [f"--port={port}", "--model_name=switch", f"--model_base_path={base}",
                                                  "--file_system_poll_wait_seconds=1"], log)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = "switch"
    grpc_request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], shape=[1]))
    session = requests.Session()

    def rest() -> float:
        r = session.post(f"{url}/v1/models/switch:predict", data=b'{"instances": [1.0]}', timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    clients = [Client(rest), Client(lambda: stub.Predict(grpc_request, timeout=30).outputs["y"].float_val[0])]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: all(c.answers for c in clients), timeout=30, what="first answers")
        _stage(staging, base, 2, 3.0, warmup=[_predict_log(1.0), _predict_log(2.0)])   # 3.5 at x=1
        wait_until(lambda: all(c.answers[-1] == 3.5 for c in clients), timeout=90, what="answers from version 2")
        shutil.rmtree(base / "1")
        wait_until(lambda: _states(url) == [(2, "AVAILABLE"), (1, "END")], timeout=30, what="version 1 unloaded")
        counts = [len(c.answers) for c in clients]
        wait_until(lambda: all(len(c.answers) > n + 20 for c, n in zip(clients, counts)), timeout=30,
                   what="more answers after the switch")
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(30)
    for client in clients:
        assert client.failures == []
        assert set(client.answers) == {2.5, 3.5} and client.answers[0] == 2.5 and client.answers[-1] == 3.5
        assert _switches(client.answers) == 1
    text = log.read_text()
    assert "Number of warmup records read: 2" in text and str(base / "2") in text

    # A corrupt SavedModel: reported END with its error, never replaces version 2.
    broken = staging / "v3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(broken, base / "3")
    wait_until(lambda: _states(url)[0] == (3, "END"), timeout=60, what="version 3 failed")
    row = _rows(url)[0]
    assert row["status"]["error_code"] != "OK" and row["status"]["error_message"]
    assert rest() == 3.5 and _states(url)[1] == (2, "AVAILABLE")

    # A good SavedModel whose warmup file does not parse: the load fails with TF Serving's message.
    _stage(staging, base, 4, 9.0, warmup=[b"malformed_record"])
    wait_until(lambda: _states(url)[0] == (4, "END"), timeout=90, what="version 4 failed")
    row = _rows(url)[0]
    assert row["status"]["error_code"] == "INVALID_ARGUMENT"
    assert row["status"]["error_message"].startswith("Failed to parse warmup record: ")
    assert rest() == 3.5 and stub.Predict(grpc_request, timeout=30).model_spec.version.value == 2
    channel.close()


def _rows(url: str) -> list[dict]:
    return requests.get(f"{url}/v1/models/switch", timeout=10).json()["model_version_status"]


def _states(url: str) -> list[tuple[int, str]]:
    return [(int(row["version"]), row["state"]) for row in _rows(url)]
