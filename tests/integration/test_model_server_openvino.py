"""The OpenVINO runtime (``model_platform: 'openvino'``) in the real model server.

One server for the module serves the same models on OpenVINO and on TensorFlow side by side, so
every answer is compared with TensorFlow's: a SavedModel (``half_plus_two``: predict, classify,
regress), the built-in ``resnet`` (JPEG bytes in: decoding stays in TensorFlow, the network runs
on OpenVINO), an ONNX model and an OpenVINO IR model made here from it. The precision the
networks compiled with is read back from OpenVINO, in the server's log and in-process.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import onnxmodels, tfmodels
from tests.conftest import ARTIFACTS, TFS_TESTDATA, Processes, wait_until
from tests.jpeg import make_jpeg

pytest.importorskip("openvino")
pytest.importorskip("onnx")
pytestmark = pytest.mark.slow

LOG = ARTIFACTS / "model_server_openvino.log"


def _save_ir(onnx_dir: Path, dest: Path) -> None:
    """An OpenVINO IR (model.xml + model.bin) converted from the ONNX model, weights kept in FP32."""
    import openvino as ov

    dest.mkdir(parents=True)
    ov.save_model(ov.convert_model(str(onnx_dir / "model.onnx")), str(dest / "model.xml"), compress_to_fp16=False)


def _config(entries: list[tuple[str, Path, str]]) -> str:
    body = "".join(f"  config {{\n    name: '{name}'\n    base_path: '{path}'\n    model_platform: '{platform}'\n  }}\n"
                   for name, path, platform in entries)
    return "model_config_list {\n" + body + "}\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, builtin_models: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openvino_models")
    tfmodels.save_version(root / "half_plus_two" / "1", tfmodels.half_plus(2.0))
    onnx = onnxmodels.build(root, {"two_io": {1: onnxmodels.two_io()}})
    _save_ir(onnx["two_io"] / "1", root / "two_io_ir" / "1")
    onnxmodels.build(root, {"versioned": {1: onnxmodels.half_plus(2.0)}})
    return {"half_plus_two": root / "half_plus_two", "two_io": onnx["two_io"], "two_io_ir": root / "two_io_ir",
            "resnet": builtin_models / "resnet", "versioned": root / "versioned"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path],
           session_processes: Processes) -> tuple[str, int]:
    """(REST base URL, gRPC port) of the module's server."""
    config = tmp_path_factory.mktemp("openvino_config") / "models.config"
    config.write_text(_config([
        ("half_plus_two", models["half_plus_two"], "openvino"), ("half_plus_two_tf", models["half_plus_two"], "tensorflow"),
        ("resnet", models["resnet"], "openvino"), ("resnet_tf", models["resnet"], "tensorflow"),
        ("two_io", models["two_io"], "openvino"), ("two_io_ir", models["two_io_ir"], "openvino"),
        ("versioned", models["versioned"], "openvino")]))
    return tfmodels.serve_config(session_processes, config, LOG.name, timeout=900)


@pytest.fixture
def server(served: tuple[str, int]) -> str:
    return served[0]


@pytest.fixture
def stub(served: tuple[str, int]):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def post(server: str, path: str, body: dict) -> requests.Response:
    return requests.post(server + path, data=json.dumps(body), timeout=120)


def both(server: str, model: str, verb: str, body: dict) -> tuple[dict, dict]:
    """The same request to the model on OpenVINO and on TensorFlow."""
    on_openvino = post(server, f"/v1/models/{model}:{verb}", body)
    on_tensorflow = post(server, f"/v1/models/{model}_tf:{verb}", body)
    assert on_openvino.status_code == 200, on_openvino.text
    assert on_tensorflow.status_code == 200, on_tensorflow.text
    return on_openvino.json(), on_tensorflow.json()


# ------------------------------------------------------------------ SavedModel: the whole API


def test_predict_matches_tensorflow(server: str) -> None:
    openvino, tensorflow = both(server, "half_plus_two", "predict", {"instances": [[1.0], [2.0], [5.0]]})
    assert openvino == tensorflow == {"predictions": [[2.5], [3.0], [4.5]]}


@pytest.mark.parametrize("instances", [[1.0, 2.0, 5.0], [[1.0, 2.0], [3.0, 4.0]], [[[1.0], [2.0]]]],
                         ids=["rank-1", "rank-2-other-dims", "rank-3"])
def test_shapes_the_placeholder_does_not_declare_answer_as_on_tensorflow(server: str, stub, instances) -> None:
    """x is declared [-1, 1]; TensorFlow takes any shape (TF Serving's own README sends
    ``[1.0, 2.0, 5.0]``), and so does OpenVINO, REST and gRPC (a variant of the network)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    openvino, tensorflow = both(server, "half_plus_two", "predict", {"instances": instances})
    assert openvino == tensorflow == {"predictions": (np.array(instances) * 0.5 + 2).tolist()}
    answers = []
    for model in ("half_plus_two", "half_plus_two_tf"):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(instances, np.float32)))
        answers.append(stub.Predict(request, timeout=60).outputs["y"])
    assert answers[0] == answers[1]


def test_a_shape_the_network_cannot_take_is_a_client_error_and_variants_are_bounded(tmp_path: Path) -> None:
    """A convolution given an image without its batch dimension: refused as on TensorFlow, with
    the declared shape named. Past MAX_SHAPE_VARIANTS other shapes, a network compiles no more."""
    from modelserver.core.status import Code, ServingError
    from modelserver.runtimes import LoadOptions, get_runtime
    from modelserver.runtimes.openvino import MAX_SHAPE_VARIANTS

    for name, build in (("conv", tfmodels.conv), ("half", tfmodels.half_plus(2.0))):
        tfmodels.save_version(tmp_path / name / "1", build)
    on_tf, on_openvino = (get_runtime(p).load(str(tmp_path / "conv" / "1"), LoadOptions())
                          for p in ("tensorflow", "openvino"))
    image = np.ones((4, 4, 1), np.float32)
    with pytest.raises(ServingError) as tf_error:
        on_tf.run("serving_default", {"x": image})
    with pytest.raises(ServingError) as info:
        on_openvino.run("serving_default", {"x": image})
    assert tf_error.value.code == info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == ("Invalid shape for input: x Got: [4, 4, 1] Expected: [?,4,4,1] Please fix "
                                  "either the inputs or the model."), info.value.message
    np.testing.assert_allclose(on_openvino.run("serving_default", {"x": image[None]})["y"],
                               on_tf.run("serving_default", {"x": image[None]})["y"])

    half = get_runtime("openvino").load(str(tmp_path / "half" / "1"), LoadOptions())
    for rank in (0, 1, 3, 4, 5, 6, 7, 8):              # [?, 1] as declared, then 8 other ranks
        x = np.full((2,) * rank, 3.0, np.float32)
        np.testing.assert_array_equal(half.run("serving_default", {"x": x})["y"], x * 0.5 + 2)
    with pytest.raises(ServingError) as info:
        half.run("serving_default", {"x": np.ones((1,) * 9, np.float32)})
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message.endswith(f"(this model compiled {MAX_SHAPE_VARIANTS} other input shapes already)")
    assert half.run("serving_default", {"x": np.ones((1, 1), np.float32)})["y"].tolist() == [[2.5]]


@pytest.mark.parametrize("verb,signature", [("classify", "classify_x_to_y"), ("regress", "regress_x_to_y")])
def test_classify_and_regress_match_tensorflow(server: str, verb: str, signature: str) -> None:
    body = {"signature_name": signature, "examples": [{"x": 1.0}, {"x": 3.0}]}
    openvino, tensorflow = both(server, "half_plus_two", verb, body)
    assert openvino == tensorflow
    assert openvino == ({"results": [[["", 2.5]], [["", 3.5]]]} if verb == "classify" else {"results": [2.5, 3.5]})


def test_multi_inference_over_grpc(stub) -> None:
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = "half_plus_two", signature, method
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(4.0)
    response = stub.MultiInference(request, timeout=60)
    classify, regress = response.results
    assert classify.classification_result.classifications[0].classes[0].score == pytest.approx(4.0)
    assert regress.regression_result.regressions[0].value == pytest.approx(4.0)


def test_metadata_is_the_saved_models(server: str) -> None:
    on_openvino = requests.get(server + "/v1/models/half_plus_two/metadata", timeout=30).json()
    on_tensorflow = requests.get(server + "/v1/models/half_plus_two_tf/metadata", timeout=30).json()
    assert on_openvino["metadata"] == on_tensorflow["metadata"]
    assert set(on_openvino["metadata"]["signature_def"]["signature_def"]) == \
        {"serving_default", "classify_x_to_y", "regress_x_to_y"}


def test_error_bodies_are_client_errors(server: str, stub) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    r = post(server, "/v1/models/two_io:predict", {"inputs": {"a": [1, 2], "n": [5, 6]}})
    assert r.status_code == 400      # an ONNX file declares the shapes it takes, as ONNX Runtime holds them
    assert r.json() == {"error": "Invalid shape for input: a Got: [2] Expected: [?,2] Please fix either the "
                                 "inputs or the model."}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float64)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Expects arg[0] (x) to be float but double is provided"
    r = post(server, "/v1/models/half_plus_two:predict", {"instances": [[1.0]], "signature_name": "nope"})
    assert r.status_code == 400 and r.json() == {"error": 'Serving signature name: "nope" not found in signature def'}


# ------------------------------------------------------------------ JPEG in: the built-in resnet


def test_resnet_jpeg_in_matches_tensorflow(server: str) -> None:
    images = [{"b64": base64.b64encode(make_jpeg(seed, (96, 128))).decode()} for seed in range(3)]
    openvino, tensorflow = both(server, "resnet", "predict", {"instances": images})
    got = [p["classes"] for p in openvino["predictions"]]
    assert got == [p["classes"] for p in tensorflow["predictions"]]
    probabilities = np.array([p["probabilities"] for p in openvino["predictions"]])
    reference = np.array([p["probabilities"] for p in tensorflow["predictions"]])
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)


# ------------------------------------------------------------------ ONNX and IR


@pytest.mark.parametrize("model", ["two_io", "two_io_ir"])
def test_onnx_and_ir_models(server: str, model: str) -> None:
    r = post(server, f"/v1/models/{model}:predict", {"inputs": {"a": [[1, 2], [3, 4]], "n": [5, 6]}})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": {"a_plus_1": [[2.0, 3.0], [4.0, 5.0]], "n_times_2": [10, 12]}}
    sig = requests.get(server + f"/v1/models/{model}/metadata", timeout=30).json()[
        "metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["a"]["dtype"] == "DT_FLOAT" and sig["inputs"]["n"]["dtype"] == "DT_INT64"
    assert sig["inputs"]["a"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "2", "name": ""}]
    assert set(sig["outputs"]) == {"a_plus_1", "n_times_2"}


# ------------------------------------------------------------------ versions


def test_a_new_version_replaces_the_old_and_a_broken_one_is_refused(server: str, models: dict[str, Path]) -> None:
    """The model server's version handling holds for OpenVINO: v2 (an IR) replaces v1 (ONNX); v3, whose
    model.xml is not a model, fails to load and v2 keeps serving."""
    def predict() -> requests.Response:
        return post(server, "/v1/models/versioned:predict", {"instances": [1.0]})

    def status() -> list[dict]:
        return requests.get(server + "/v1/models/versioned", timeout=30).json()["model_version_status"]

    assert predict().json() == {"predictions": [2.5]}
    staging = models["versioned"].parent / "staging"
    onnx = onnxmodels.build(staging, {"v2": {1: onnxmodels.half_plus(3.0)}})
    _save_ir(onnx["v2"] / "1", staging / "ir")
    (staging / "ir").rename(models["versioned"] / "2")
    wait_until(lambda: predict().json() == {"predictions": [3.5]}, timeout=300, what="version 2 serving")
    broken = staging / "broken"
    broken.mkdir()
    (broken / "model.xml").write_text("not a model")
    (broken / "model.bin").write_bytes(b"")
    broken.rename(models["versioned"] / "3")
    wait_until(lambda: any(v["version"] == "3" and v["status"]["error_code"] != "OK" for v in status()),
               timeout=300, what="version 3 refused")
    assert predict().json() == {"predictions": [3.5]}
    assert "Failed to read openvino model" in next(v for v in status() if v["version"] == "3")["status"][
        "error_message"]


# ------------------------------------------------------------------ TF Serving's own test models

OFFICIAL = ("saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu", "saved_model_half_plus_three")


def _official_feed(spec) -> np.ndarray:
    """A request for a signature input: two tf.Examples {x: 1.0}, {x: 3.0}, or 1, 2, ... in its shape."""
    from tensorflow.core.example import example_pb2

    if spec.dtype == "DT_STRING":
        examples = [example_pb2.Example() for _ in range(2)]
        for example, value in zip(examples, (1.0, 3.0)):
            example.features.feature["x"].float_list.value.append(value)
        return np.array([e.SerializeToString() for e in examples], dtype=object)
    shape = [2 if d == -1 else d for d in (spec.shape if spec.shape is not None else (2,))]
    return np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)


@pytest.mark.skipif(not TFS_TESTDATA.is_dir(), reason=f"TF Serving testdata not found at {TFS_TESTDATA}")
@pytest.mark.parametrize("name", OFFICIAL)
def test_official_test_models_answer_as_on_tensorflow(name: str) -> None:
    """Every signature, Predict, Classify and Regress, answers as on TensorFlow; also half_plus_three's,
    whose SignatureDef says ``x`` is a scalar while its graph says [?,1] (a variant of its network)."""
    from modelserver.core.status import ServingError
    from modelserver.runtimes import LoadOptions, get_runtime
    from modelserver.runtimes.tensorflow import servable

    path = str(TFS_TESTDATA / name / "00000123")
    on_tf, on_openvino = (get_runtime(p).load(path, LoadOptions()) for p in ("tensorflow", "openvino"))
    for signature in (s for s in on_tf.signatures.values() if servable(s)):
        inputs = {alias: _official_feed(spec) for alias, spec in signature.inputs.items()}
        try:
            expected = on_tf.run(signature.name, inputs)
        except ServingError as exc:
            with pytest.raises(ServingError) as info:
                on_openvino.run(signature.name, inputs)
            assert (info.value.code, info.value.message) == (exc.code, exc.message)
            continue
        got = on_openvino.run(signature.name, inputs)
        assert got.keys() == expected.keys()
        for alias in expected:
            assert got[alias].shape == expected[alias].shape, (signature.name, alias)
            np.testing.assert_allclose(got[alias], expected[alias], rtol=1e-6, err_msg=f"{signature.name} {alias}")


# ------------------------------------------------------------------ precision


def test_every_network_compiled_in_f32_by_default(server: str) -> None:
    compiled = re.findall(r"openvino: (\S+) signature (\S+): precision (\w+),", LOG.read_text())
    assert {(Path(path).parent.name, signature) for path, signature, _ in compiled} >= {
        ("half_plus_two", "serving_default"), ("resnet", "serving_default"), ("two_io", "serving_default"),
        ("two_io_ir", "serving_default")}
    assert {precision for _, _, precision in compiled} == {"f32"}


def test_precision_read_back_from_the_compiled_network(models: dict[str, Path]) -> None:
    from modelserver.core.status import Code, ServingError
    from modelserver.runtimes import LoadOptions, get_runtime

    runtime = get_runtime("openvino")
    path = str(models["two_io"] / "1")

    def hint(options: LoadOptions) -> str:
        network = runtime.load(path, options).networks["serving_default"][0]
        return network.compiled[0].get_property("INFERENCE_PRECISION_HINT").get_type_name()

    assert hint(LoadOptions()) == "f32"
    if "BF16" in runtime.capabilities:
        assert hint(LoadOptions(precision="bf16")) == "bf16"
    else:
        with pytest.raises(ServingError) as info:
            runtime.load(path, LoadOptions(precision="bf16"))
        assert info.value.code == Code.FAILED_PRECONDITION and "use precision f32" in info.value.message
    latency = runtime.load(path, LoadOptions(runtime_options={"performance_hint": "latency", "streams": 1}))
    compiled = latency.networks["serving_default"][0].compiled[0]
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY" and compiled.get_property("NUM_STREAMS") == 1
