"""ONNX models (made here with ``onnx.helper``) served over REST and gRPC like SavedModels.

One server for the module, started as ``tensorflow_model_server`` would be, with a models.config
saying ``model_platform: 'onnx'``; it has no ``--monitoring_config_file``, so the Prometheus
path must be a plain 404. The ``--model_platform`` single-model form gets its own small server.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests

from tests import onnxmodels, tfmodels
from tests.conftest import ARTIFACTS, Processes

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> tuple[str, int]:
    root = tmp_path_factory.mktemp("onnx_models")
    paths = onnxmodels.build(root / "models", {
        "half_plus_two": {1: onnxmodels.half_plus(2.0)},
        "two_io": {1: onnxmodels.two_io()},
    })
    config = root / "models.config"
    config.write_text(onnxmodels.model_config(paths))
    return tfmodels.serve_config(session_processes, config, "model_server_onnx.log")


@pytest.fixture(scope="module")
def server(ports: tuple[str, int]) -> str:
    return ports[0]


@pytest.fixture(scope="module")
def channel(ports: tuple[str, int]):
    with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as chan:
        grpc.channel_ready_future(chan).result(timeout=30)
        yield chan


def post(server: str, path: str, body: dict | bytes) -> requests.Response:
    return requests.post(server + path, data=json.dumps(body) if isinstance(body, dict) else body, timeout=30)


# ------------------------------------------------------------------ REST


def test_rest_predict_rows_and_columns(server: str) -> None:
    r = post(server, "/v1/models/half_plus_two:predict", b'{"instances": [1.0, 2.0, 5.0]}')
    assert r.status_code == 200, r.text
    assert r.content == b'{"predictions": [2.5, 3.0, 4.5]}'
    assert post(server, "/v1/models/half_plus_two/versions/1:predict", {"inputs": [2.0, 3.0]}).json() == \
        {"outputs": [3.0, 3.5]}


def test_rest_two_inputs_two_outputs(server: str) -> None:
    columnar = post(server, "/v1/models/two_io:predict", {"inputs": {"a": [[1, 2], [3, 4]], "n": [5, 6]}})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json() == {"outputs": {"a_plus_1": [[2.0, 3.0], [4.0, 5.0]], "n_times_2": [10, 12]}}
    rows = post(server, "/v1/models/two_io:predict", {"instances": [{"a": [1, 2], "n": 5}, {"a": [0, 0], "n": -1}]})
    assert rows.json() == {"predictions": [{"a_plus_1": [2.0, 3.0], "n_times_2": 10},
                                           {"a_plus_1": [1.0, 1.0], "n_times_2": -2}]}


def test_rest_metadata_is_a_signature_def_map(server: str) -> None:
    r = requests.get(server + "/v1/models/two_io/metadata", timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_spec"] == {"name": "two_io", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["a"] == {"dtype": "DT_FLOAT", "name": "a", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}], "unknown_rank": False}}
    assert sig["inputs"]["n"]["dtype"] == "DT_INT64"
    assert set(sig["outputs"]) == {"a_plus_1", "n_times_2"}
    assert sig["outputs"]["n_times_2"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]


def test_rest_status(server: str) -> None:
    r = requests.get(server + "/v1/models/half_plus_two", timeout=10)
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/models/half_plus_two:predict", {"instances": [1.0], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/two_io:predict", {"inputs": {"a": [1.0, 2.0], "n": [1]}}, 400,
     "Invalid rank for input: a Got: 1 Expected: 2 Please fix either the inputs/outputs or the model."),
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
])
def test_rest_errors(server: str, path: str, body: dict, status: int, message: str) -> None:
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": message}


def test_prometheus_path_is_404_without_monitoring_config(server: str) -> None:
    r = requests.get(server + "/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 404
    assert "application/json" not in r.headers.get("Content-Type", "")


# ------------------------------------------------------------------ gRPC


def test_grpc_predict(channel) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0, 4.0], np.float32)))
    response = stub.Predict(request, timeout=10)
    assert list(response.outputs["y"].float_val) == [3.0, 4.0]
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1

    two = predict_pb2.PredictRequest()
    two.model_spec.name = "two_io"
    two.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2]], np.float32)))
    two.inputs["n"].CopyFrom(tf.make_tensor_proto(np.array([7], np.int64)))
    two.output_filter.append("n_times_2")
    out = stub.Predict(two, timeout=10).outputs
    assert list(out) == ["n_times_2"] and list(out["n_times_2"].int64_val) == [14]


def test_grpc_predict_wrong_dtype(channel) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float64)))
    with pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unexpected input data type" in info.value.details()


def test_grpc_metadata_and_status(channel) -> None:
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         prediction_service_pb2_grpc)

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert list(sigs.signature_def) == ["serving_default"]
    assert sigs.signature_def["serving_default"].inputs["x"].name == "x"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "two_io"}), timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


# ------------------------------------------------------------------ single-model form


@pytest.mark.parametrize("platform", ["onnx", "auto"])
def test_model_platform_flag(tmp_path, processes: Processes, platform: str) -> None:
    """``auto`` (an appliance extension) finds the ONNX model from its ``model.onnx``."""
    paths = onnxmodels.build(tmp_path / "models", {"m": {3: onnxmodels.half_plus(3.0)}})
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"model_server_onnx_single_{platform}.log"
    log.write_bytes(b"")
    url = tfmodels.start_model_server(processes, ["--model_name=m", f"--model_base_path={paths['m']}",
                                                  f"--model_platform={platform}"], log)
    r = post(url, "/v1/models/m:predict", {"instances": [2.0]})
    assert r.json() == {"predictions": [4.0]}
