"""The gRPC port with the official tensorflow_serving stubs (Predict, GetModelMetadata, GetModelStatus)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests import tfmodels
from tests.conftest import Processes, free_port

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes):
    port = free_port()
    tfmodels.serve_test_models(tmp_path_factory.mktemp("grpc_models"), session_processes,
                               "model_server_grpc.log", [f"--port={port}"])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=30)
        yield chan


def test_predict(channel) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))   # shape [1] to a [-1,1] placeholder
    response, call = stub.Predict.with_call(request, timeout=10)
    assert response.outputs["y"].float_val[0] == 3.0
    # Which model and version answered, for Envoy's access log (it does not read gRPC bodies).
    assert {"x-appliance-model": "half_plus_two", "x-appliance-version": "1"}.items() <= dict(
        call.initial_metadata()).items()
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1
    request.model_spec.version_label = "canary"
    request.model_spec.name = "half_plus"
    assert stub.Predict(request, timeout=10).outputs["y"].float_val[0] == 4.0
    strings = predict_pb2.PredictRequest()
    strings.model_spec.name = "strings"
    strings.inputs["s"].CopyFrom(tf.make_tensor_proto([b"ab"]))
    strings.output_filter.append("length")
    out = stub.Predict(strings, timeout=10).outputs
    assert list(out) == ["length"] and out["length"].int_val[:] == [2]


@pytest.mark.parametrize("name,signature,code,message", [
    ("nope", "", grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ("half_plus_two", "nope", grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
])
def test_predict_errors(channel, name: str, signature: str, code, message: str) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == code and info.value.details() == message
    assert ("x-appliance-model", name) in info.value.trailing_metadata()


def test_metadata_and_status(channel) -> None:
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         prediction_service_pb2_grpc)

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = stub.GetModelMetadata(request, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert "serving_default" in sigs.signature_def
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "half_plus"}), timeout=10)
    assert [s.version for s in status.model_version_status] == [2, 1]
    assert all(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in status.model_version_status)


@pytest.mark.parametrize("arr", [
    np.array([2.5, 3.0, 4.5], np.float32), np.arange(6, dtype=np.float64).reshape(2, 3),
    np.float32(1.5).reshape(()), np.zeros((2, 0, 3), np.float32), np.arange(300, dtype=np.float32),
    np.arange(4, dtype=np.int64), np.array([b"a", b""], dtype=object)])
def test_serialized_tensor_is_the_tensor_proto(arr: np.ndarray) -> None:
    """Predict's outputs are written without a TensorProto object: the bytes must parse as one."""
    from tensorflow.core.framework import tensor_pb2

    from modelserver.tensor_proto import proto_from_ndarray, serialized_tensor

    parsed = tensor_pb2.TensorProto.FromString(serialized_tensor(arr))
    assert parsed == proto_from_ndarray(arr)
