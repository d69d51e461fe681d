"""gRPC beyond Predict: Classify/Regress/MultiInference, config reload (file poll and
HandleReloadConfigRequest), the health service, the unix socket and TF Serving's error texts.

One server for the module, started with ``tensorflow_model_server``'s own flags; the client is
the official ``tensorflow_serving`` stubs. Tests run in file order: the reload tests change the
model set, so they come last.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import requests

from tests import tfmodels
from tests.conftest import ARTIFACTS, Processes, free_port, wait_until

tf = pytest.importorskip("tensorflow")

LOG = ARTIFACTS / "model_server_grpc_api.log"


def _config(entries: list[str]) -> str:
    return "model_config_list {\n" + "".join(entries) + "}\n"


def _entry(name: str, path: Path, extra: str = "", platform: str = "tensorflow") -> str:
    return f"  config {{ name: '{name}' base_path: '{path}' model_platform: '{platform}' {extra} }}\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> dict:
    root = tmp_path_factory.mktemp("grpc_api")
    paths = tfmodels.build_all(root / "models", only=("half_plus_two", "half_plus"))
    broken = root / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    paths["broken"] = broken.parent
    config = root / "models.config"
    labels = "model_version_policy { all {} } version_labels { key: 'stable' value: 1 } " \
             "version_labels { key: 'canary' value: 2 }"
    config.write_text(_config([_entry("half_plus_two", paths["half_plus_two"]),
                               _entry("half_plus", paths["half_plus"], labels)]))
    ARTIFACTS.mkdir(exist_ok=True)
    LOG.write_bytes(b"")
    port = free_port()
    socket_path = root / "grpc.sock"
    url = tfmodels.start_model_server(session_processes, [
        f"--port={port}", f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
        f"--grpc_socket_path={socket_path}", "--enable_grpc_healthcheck_service",
        "--grpc_channel_arguments=grpc.max_concurrent_streams=1000,grpc.primary_user_agent=appliance-test",
        "--grpc_max_threads=16"], LOG)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield {"url": url, "channel": channel, "socket": socket_path, "config": config, "paths": paths,
           "labels": labels}
    channel.close()


def _prediction(env: dict):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(env["channel"])


def _model_service(env: dict):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(env["channel"])


def _predict_request(name: str, x: float = 1.0, **spec):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], shape=[1]))
    return request


def _rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


def _examples(*values: float):
    from tensorflow_serving.apis import input_pb2

    request_input = input_pb2.Input()
    for value in values:
        request_input.example_list.examples.add().features.feature["x"].float_list.value.append(value)
    return request_input


# ------------------------------------------------------------------ serving


def test_health_service_and_unix_socket(env: dict) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    health = health_pb2_grpc.HealthStub(env["channel"])
    for service in ("", "tensorflow.serving.PredictionService", "ModelService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"unix:{env['socket']}") as unix:
        assert health_pb2_grpc.HealthStub(unix).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        response = prediction_service_pb2_grpc.PredictionServiceStub(unix).Predict(
            _predict_request("half_plus_two", 3.0), timeout=30)
        assert response.outputs["y"].float_val[:] == [3.5]


def test_predict_by_version_and_label(env: dict) -> None:
    stub = _prediction(env)
    assert stub.Predict(_predict_request("half_plus", version=1), timeout=30).outputs["y"].float_val[:] == [2.5]
    assert stub.Predict(_predict_request("half_plus", version_label="canary"), timeout=30) \
        .outputs["y"].float_val[:] == [3.5]
    latest = stub.Predict(_predict_request("half_plus"), timeout=30)
    assert latest.model_spec.version.value == 2 and latest.outputs["y"].float_val[:] == [3.5]
    error = _rpc_error(stub.Predict, _predict_request("half_plus", version_label="nope"))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Unrecognized servable version label: nope")


def test_classify_regress_multi_inference(env: dict) -> None:
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    stub = _prediction(env)
    regress = regression_pb2.RegressionRequest(input=_examples(1.0, 3.0))
    regress.model_spec.name = "half_plus"
    regress.model_spec.version_label = "stable"
    regress.model_spec.signature_name = "regress_x_to_y"
    response = stub.Regress(regress, timeout=30)
    assert [r.value for r in response.result.regressions] == [2.5, 3.5]
    assert response.model_spec.version.value == 1
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    with_context = classify.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(9.0)   # overridden by each example
    with_context.examples.add().features.feature["x"].float_list.value.append(4.0)
    result = stub.Classify(classify, timeout=30)
    assert [(c.label, c.score) for c in result.result.classifications[0].classes] == [("", 4.0)]
    assert result.model_spec.signature_name == "classify_x_to_y"
    multi = inference_pb2.MultiInferenceRequest(input=_examples(2.0))
    for signature, method in [("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")]:
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
    results = stub.MultiInference(multi, timeout=30).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 3.0


def test_multi_inference_signatures_with_their_own_inputs(env: dict) -> None:
    """``half_plus`` gives classify and regress separate placeholders, like a TF2 export: TF Serving
    (since 2020) feeds the same examples to each (its ``testMultiInferenceTf2``)."""
    from tensorflow_serving.apis import inference_pb2

    multi = inference_pb2.MultiInferenceRequest(input=_examples(2.0, 4.0))
    for signature, method in [("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")]:
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "half_plus"
        task.model_spec.version_label = "stable"
        task.model_spec.signature_name = signature
    results = _prediction(env).MultiInference(multi, timeout=30).results
    assert [r.value for r in results[0].regression_result.regressions] == [3.0, 4.0]
    assert [row.classes[0].score for row in results[1].classification_result.classifications] == [3.0, 4.0]
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in results] == \
        [("regress_x_to_y", 1), ("classify_x_to_y", 1)]


@pytest.mark.parametrize("method,build,code,message", [
    ("Regress", lambda r: (r.model_spec.__setattr__("signature_name", "nope"), r.input.CopyFrom(_examples(1.0))),
     grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope"),
    ("Regress", lambda r: r.model_spec.__setattr__("signature_name", "regress_x_to_y"),
     grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
    ("Classify", lambda r: r.input.CopyFrom(_examples(1.0)), grpc.StatusCode.FAILED_PRECONDITION,
     "No classification inputs found in SignatureDef: "),
])
def test_classify_regress_errors(env: dict, method: str, build, code, message: str) -> None:
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = (regression_pb2.RegressionRequest() if method == "Regress"
               else classification_pb2.ClassificationRequest())
    request.model_spec.name = "half_plus_two"
    build(request)
    error = _rpc_error(getattr(_prediction(env), method), request)
    assert error.code() == code and error.details().startswith(message), error.details()


@pytest.mark.parametrize("tasks,code,message", [
    ([("half_plus_two", "regress_x_to_y", "tensorflow/serving/regress"),
      ("half_plus", "regress_x_to_y", "tensorflow/serving/regress")],
     grpc.StatusCode.INVALID_ARGUMENT, "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ([("half_plus_two", "regress_x_to_y", "tensorflow/serving/regress")] * 2,
     grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
    ([("half_plus_two", "nope", "tensorflow/serving/regress")],
     grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
    ([("half_plus_two", "regress_x_to_y", "tensorflow/serving/predict")],
     grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
])
def test_multi_inference_errors(env: dict, tasks: list, code, message: str) -> None:
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest(input=_examples(1.0))
    for name, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = name
        task.model_spec.signature_name = signature
    error = _rpc_error(_prediction(env).MultiInference, request)
    assert (error.code(), error.details()) == (code, message)


def test_long_error_messages_are_truncated(env: dict) -> None:
    error = _rpc_error(_prediction(env).Predict, _predict_request("m" * 2000))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == ("Servable not found for request: Latest(" + "m" * 2000)[:1024] + "...TRUNCATED"


# ------------------------------------------------------------------ config reload (changes the model set)


def _status(env: dict, name: str) -> list[tuple[int, str]]:
    r = requests.get(f"{env['url']}/v1/models/{name}", timeout=10)
    return [(int(s["version"]), s["state"]) for s in r.json().get("model_version_status", [])]


def test_reload_by_config_file_poll(env: dict) -> None:
    """Declarative: half_plus_two disappears from the file and is unloaded; labels move."""
    paths = env["paths"]
    moved = env["labels"].replace("value: 1", "value: 2")
    env["config"].write_text(_config([_entry("half_plus", paths["half_plus"], moved)]))
    wait_until(lambda: _status(env, "half_plus_two") == [(1, "END")], timeout=60, what="half_plus_two unloaded")
    stub = _prediction(env)
    error = _rpc_error(stub.Predict, _predict_request("half_plus_two"))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Servable not found for request: Latest(half_plus_two)")
    wait_until(lambda: stub.Predict(_predict_request("half_plus", version_label="stable"), timeout=30)
               .outputs["y"].float_val[:] == [3.5], timeout=30, what="label 'stable' moved to version 2")


def test_bad_config_file_on_reload_is_rejected_and_old_config_kept(env: dict) -> None:
    env["config"].write_text("model_config_list { config { name: 'x' ")
    wait_until(lambda: "Error parsing text-format tensorflow.serving.ModelServerConfig" in LOG.read_text(),
               timeout=30, what="the parse error in the log")
    assert _prediction(env).Predict(_predict_request("half_plus"), timeout=30).outputs["y"].float_val[:] == [3.5]


def _reload(env: dict, text: str):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return _model_service(env).HandleReloadConfigRequest(request, timeout=120)


def test_handle_reload_config_request(env: dict) -> None:
    paths = env["paths"]
    response = _reload(env, _config([_entry("half_plus_two", paths["half_plus_two"])]))
    assert response.status.error_code == 0 and response.status.error_message == ""
    # The call returned only once the newly added model was AVAILABLE: it answers at once.
    assert _prediction(env).Predict(_predict_request("half_plus_two", 2.0), timeout=30) \
        .outputs["y"].float_val[:] == [3.0]
    wait_until(lambda: _status(env, "half_plus") == [(2, "END"), (1, "END")], timeout=30,
               what="half_plus unloaded")


@pytest.mark.parametrize("text,code,message", [
    ("custom_model_config { }", grpc.StatusCode.INVALID_ARGUMENT,
     "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently "
     "supported"),
    ("model_config_list { config { name: 'r' base_path: 'relative/path' model_platform: 'tensorflow' } }",
     grpc.StatusCode.INVALID_ARGUMENT, "Expected model r to have an absolute path or URI; got base_path()=relative/path"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
     "config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } }",
     grpc.StatusCode.INVALID_ARGUMENT, "Illegal to list model a multiple times in config list"),
])
def test_reload_config_errors(env: dict, text: str, code, message: str) -> None:
    error = _rpc_error(lambda request, timeout: _reload(env, text), None)
    assert (error.code(), error.details()) == (code, message)
    assert _prediction(env).Predict(_predict_request("half_plus_two"), timeout=30).outputs["y"].float_val[:] == [2.5]


def test_reload_with_a_model_that_fails_to_load(env: dict) -> None:
    paths = env["paths"]
    text = _config([_entry("half_plus_two", paths["half_plus_two"]), _entry("broken", paths["broken"])])
    error = _rpc_error(lambda request, timeout: _reload(env, text), None)
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith("1 model(s) did not become available: {{name: broken version: 1} due to error: ")
    status = requests.get(f"{env['url']}/v1/models/broken", timeout=10).json()["model_version_status"]
    assert status[0]["state"] == "END" and status[0]["status"]["error_code"] != "OK"
    assert status[0]["status"]["error_message"]
    assert _prediction(env).Predict(_predict_request("half_plus_two"), timeout=30).outputs["y"].float_val[:] == [2.5]


def test_reload_label_onto_unavailable_version(env: dict) -> None:
    paths = env["paths"]
    text = _config([_entry("half_plus_two", paths["half_plus_two"], "version_labels { key: 'x' value: 7 }")])
    error = _rpc_error(lambda request, timeout: _reload(env, text), None)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "Request to assign label to version 7 of model half_plus_two, which is not currently available for inference")
    assert json.loads(requests.get(f"{env['url']}/v1/models/half_plus_two", timeout=10).text)[
        "model_version_status"][0]["state"] == "AVAILABLE"
