"""The official TF Serving test models (``TFS_TESTDATA``), read in place, never copied.

One server, started like ``tensorflow_model_server`` (``--port``, ``--rest_api_port``,
``--model_config_file``), driven over plain HTTP and the official ``tensorflow_serving`` stubs.
"""

from __future__ import annotations

import json

import grpc
import pytest
import requests

from tests import tfmodels
from tests.conftest import ARTIFACTS, TFS_TESTDATA, Processes, free_port

if not TFS_TESTDATA.is_dir():
    pytest.skip(f"TF Serving testdata not found at {TFS_TESTDATA}", allow_module_level=True)

MODELS = {
    "half_plus_two": "saved_model_half_plus_two_cpu",
    "half_plus_two_tf2": "saved_model_half_plus_two_tf2_cpu",
    "half_plus_three": "saved_model_half_plus_three",
    "two_versions": "saved_model_half_plus_two_2_versions",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> tuple[str, int]:
    """(REST base URL, gRPC port) of one server for the module."""
    config = tmp_path_factory.mktemp("tfs_testdata") / "models.config"
    entries = "".join(f"  config {{ name: '{name}' base_path: '{TFS_TESTDATA / folder}' model_platform: 'tensorflow' }}\n"
                      for name, folder in MODELS.items())
    config.write_text("model_config_list {\n" + entries + "}\n")
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "model_server_tfs_testdata.log"
    log.write_bytes(b"")
    port = free_port()
    url = tfmodels.start_model_server(session_processes, [f"--model_config_file={config}", f"--port={port}"], log)
    return url, port


@pytest.fixture(scope="module")
def server(servers: tuple[str, int]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def stub(servers: tuple[str, int]):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{servers[1]}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


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


def test_tf2_metadata_matches_official_file(server: str) -> None:
    """TF2 exports also list ``__saved_model_init_op``; compared with the official TF2 file.

    That file was written for a TF2 two-versions model that is not in the testdata; the TF2 model
    that is (``saved_model_half_plus_two_tf2_cpu``) has the same signatures, inputs, outputs and
    method names, but its ``serving_default`` also declares a default value for ``x``. So
    ``defaults`` is compared with the model's own, everything else with the official file.
    """
    expected = json.loads((TFS_TESTDATA / "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text())
    got = requests.get(f"{server}/v1/models/half_plus_two_tf2/versions/123/metadata", timeout=10).json()
    assert got["model_spec"] == {"name": "half_plus_two_tf2", "signature_name": "", "version": "123"}
    want_sigs = expected["metadata"]["signature_def"]["signature_def"]
    got_sigs = got["metadata"]["signature_def"]["signature_def"]
    assert set(got_sigs) == set(want_sigs) and "__saved_model_init_op" in got_sigs
    for name, want in want_sigs.items():
        assert {k: v for k, v in got_sigs[name].items() if k != "defaults"} == \
            {k: v for k, v in want.items() if k != "defaults"}, name
    assert set(got_sigs["serving_default"]["defaults"]) == {"x"}
    assert all(got_sigs[name]["defaults"] == {} for name in got_sigs if name != "serving_default")


# ------------------------------------------------------------------ gRPC, official stubs


def _examples(*values: float):
    from tensorflow_serving.apis import input_pb2

    request_input = input_pb2.Input()
    for value in values:
        request_input.example_list.examples.add().features.feature["x"].float_list.value.append(value)
    return request_input


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2", "two_versions"])
def test_grpc_predict_with_and_without_output_filter(stub, model: str) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))  # TF Serving's own test request
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["y"] and response.outputs["y"].float_val[:] == [3.0]
    assert response.model_spec.signature_name == "serving_default"
    request.output_filter.append("y")
    assert stub.Predict(request, timeout=30).outputs["y"].float_val[:] == [3.0]


def test_grpc_predict_by_version_and_errors(stub) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two_versions"
    request.model_spec.version.value = 124
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0, 4.0], shape=[2]))
    response = stub.Predict(request, timeout=30)
    assert response.outputs["y"].float_val[:] == [3.0, 4.0] and response.model_spec.version.value == 124
    request.model_spec.version.value = 123
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Servable not found for request: Specific(two_versions, 123)"
    request.model_spec.version.value = 124
    request.output_filter.append("z")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "output tensor alias not found in signature: z Outputs expected to be in the set {y}."


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_grpc_classify_regress_multi_inference(stub, model: str) -> None:
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    regress = regression_pb2.RegressionRequest(input=_examples(2.0, 4.0))
    regress.model_spec.name = model
    regress.model_spec.signature_name = "regress_x_to_y"
    response = stub.Regress(regress, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.0, 4.0]
    assert (response.model_spec.name, response.model_spec.signature_name, response.model_spec.version.value) == \
        (model, "regress_x_to_y", 123)
    classify = classification_pb2.ClassificationRequest(input=_examples(2.0))
    classify.model_spec.name = model
    classify.model_spec.signature_name = "classify_x_to_y"
    result = stub.Classify(classify, timeout=30).result
    assert [[(c.label, c.score) for c in row.classes] for row in result.classifications] == [[("", 3.0)]]
    multi = inference_pb2.MultiInferenceRequest(input=_examples(2.0))
    for signature, method in [("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")]:
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    # TF2 exports give every signature its own input placeholder: TF Serving feeds the examples to
    # each (testMultiInferenceTf2), as for TF1's shared one.
    results = stub.MultiInference(multi, timeout=30).results
    assert results[0].regression_result.regressions[0].value == 3.0
    assert results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in results] == ["regress_x_to_y", "classify_x_to_y"]


def test_grpc_half_plus_three_regress_signature(stub) -> None:
    from tensorflow_serving.apis import regression_pb2

    request = regression_pb2.RegressionRequest(input=_examples(1.0, 2.0))
    request.model_spec.name = "half_plus_three"
    request.model_spec.signature_name = "tensorflow/serving/regress"
    assert [r.value for r in stub.Regress(request, timeout=30).result.regressions] == [3.5, 4.0]


def test_grpc_metadata_matches_official_file(stub) -> None:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = stub.GetModelMetadata(request, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    expected = json.loads((TFS_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert json.loads(json_format.MessageToJson(sigs, **options)) == expected["metadata"]["signature_def"]
    assert response.model_spec.version.value == 123
