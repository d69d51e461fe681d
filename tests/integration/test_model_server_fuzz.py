"""Malformed requests, REST and gRPC, from a seeded generator: each one gets a client error.

Random bytes, wrong JSON and proto types, huge shapes (that must be refused cheaply, not
allocated), 100k-deep nesting, missing keys. Every REST answer must be 4xx and every gRPC answer
a non-OK status other than INTERNAL/UNKNOWN/UNAVAILABLE, except INTERNAL for bytes that do not
deserialize as the request message at all: gRPC itself answers those before any servicer runs,
in TF Serving's C++ server as here. Afterwards the server still answers correctly.

Then a fixed corpus of requests that once got a 5xx, INTERNAL, no answer at all, or (on the
inline fast path) a 400 from the HTTP parser that closed the connection: each gets TF Serving's
400 / INVALID_ARGUMENT and text, and a valid request pipelined behind it is answered.
"""

from __future__ import annotations

import json
import random
import socket
from typing import Any, Callable, Iterator

import grpc
import pytest
import requests

from tests import tfmodels
from tests.conftest import Processes, free_port

tf = pytest.importorskip("tensorflow")

SEED = 20261122
COUNT = 240
MODELS = ("half_plus_two", "two_inputs", "strings", "ints", "numbers", "conv")
BAD_GRPC = {grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> tuple[str, int]:
    port = free_port()
    url = tfmodels.serve_test_models(tmp_path_factory.mktemp("fuzz"), session_processes,
                                     "model_server_fuzz.log", [f"--port={port}"], only=MODELS)
    return url, port


# ------------------------------------------------------------------ REST bodies


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2 ** 63, 2 ** 64 + 5, -(2 ** 70), 1e308, -1e-300])
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return "".join(rng.choice("ab\u00e9\U0001f600\"\\/\n") for _ in range(rng.randrange(6)))
    if kind == 4:
        return {"b64": rng.choice(["!!notbase64", "", 5, "YWJj"])}
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["x", "a", "b", "s", "inputs", "instances", "examples", "context"]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _rest_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    deep = b"[" * 100_000 + b"]" * 100_000
    fixed = [
        ("half_plus_two:predict", b""),
        ("half_plus_two:predict", b"{"),
        ("half_plus_two:predict", b'{"instances": ' + deep + b"}"),
        ("half_plus_two:predict", b'{"inputs": ' + b"[" * 5000 + b"1.0" + b"]" * 5000 + b"}"),
        ("half_plus_two:classify", b'{"examples": [' + b'{"x": ' * 3000 + b"1" + b"}" * 3000 + b"]}"),
        ("half_plus_two:predict", b'{"instances": {"x": 1}}'),
        ("half_plus_two:predict", b'{"instances": [], "inputs": []}'),
        ("half_plus_two:predict", b'{"signature_name": 5, "instances": [1.0]}'),
        ("half_plus_two:predict", b'{"instances": [[1.0], [1.0, 2.0]]}'),
        ("two_inputs:predict", b'{"inputs": {"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}}'),
        ("two_inputs:predict", b'{"instances": [{"a": 1.0}]}'),
        ("two_inputs:predict", b'{"inputs": [1.0, 2.0]}'),
        ("strings:predict", b'{"instances": [{"b64": "%%%"}]}'),
        ("ints:predict", b'{"instances": [1.5]}'),
        ("ints:predict", b'{"instances": [true]}'),
        ("half_plus_two:regress", b'{"signature_name": "regress_x_to_y"}'),
        ("half_plus_two:regress", b'{"signature_name": "regress_x_to_y", "examples": [{"x": [[1]]}]}'),
        ("half_plus_two:classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x": "text"}]}'),
        ("nope:predict", b'{"instances": [1.0]}'),
        ("half_plus_two/versions/99999999999999999999:predict", b'{"instances": [1.0]}'),
        # an image without its batch dimension, and other ranks: TF's oneDNN convolution aborts
        # the process on them unless they are refused first
        ("conv:predict", json.dumps({"inputs": {"x": [[[1.0]] * 4] * 4}}).encode()),
        ("conv:predict", json.dumps({"instances": [[1.0] * 4] * 4}).encode()),
        ("conv:predict", b'{"inputs": {"x": 1.0}}'),
    ]
    yield from fixed
    verbs = ["half_plus_two:predict", "two_inputs:predict", "strings:predict", "ints:predict",
             "half_plus_two:classify", "half_plus_two:regress", "half_plus_two/labels/none:predict"]
    for i in range(COUNT - len(fixed)):
        path = rng.choice(verbs)
        mode = i % 4
        if mode == 0:
            body = rng.randbytes(rng.randrange(1, 200))
        elif mode == 1:   # structurally plausible, wrong types (a null no dtype accepts, after a random value)
            key = "examples" if ":predict" not in path else rng.choice(["instances", "inputs"])
            body = json.dumps({key: [_random_json(rng), None]}).encode()
        elif mode == 2:   # missing keys, extra keys
            body = json.dumps({rng.choice(["signature_name", "context", "foo"]): _random_json(rng)}).encode()
        else:             # truncated valid request
            valid = b'{"instances": [1.0, 2.0, 5.0], "signature_name": "serving_default"}'
            body = valid[:rng.randrange(1, len(valid) - 1)]
        yield path, body


def test_malformed_rest_bodies(servers: tuple[str, int]) -> None:
    url = servers[0]
    rng = random.Random(SEED)
    session = requests.Session()
    seen = 0
    for path, body in _rest_cases(rng):
        r = session.post(f"{url}/v1/models/{path}", data=body, timeout=60)
        assert 400 <= r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
        assert "error" in r.json(), (path, body[:200], r.text[:300])
        seen += 1
    assert seen >= 200
    ok = session.post(f"{url}/v1/models/half_plus_two:predict", data=b'{"instances": [1.0, 2.0, 5.0]}', timeout=30)
    assert ok.status_code == 200 and ok.json() == {"predictions": [2.5, 3.0, 4.5]}


# ------------------------------------------------------------------ gRPC requests


_VALUES = {1: ("float_val", 1.5), 2: ("double_val", 2.5), 3: ("int_val", 3), 9: ("int64_val", 4),
           7: ("string_val", b"abc"), 10: ("bool_val", True)}


def _tensor(rng: random.Random, expected_dtype: int) -> Any:
    """A TensorProto that is wrong for an input of ``expected_dtype`` in one way or another."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    kind = rng.randrange(5)
    if kind == 0:     # huge shape, one value: must be refused, not broadcast into terabytes
        proto.dtype = expected_dtype
        for size in rng.choice([[1 << 40], [1 << 20, 1 << 20], [1 << 62, 4], [65536, 65536, 16]]):
            proto.tensor_shape.dim.add().size = size
        field, value = _VALUES[expected_dtype]
        getattr(proto, field).append(value)
    elif kind == 1:   # negative dimension
        proto.dtype = expected_dtype
        proto.tensor_shape.dim.add().size = -rng.randrange(1, 9)
    elif kind == 2:   # tensor_content of the wrong length
        proto.dtype = 1
        proto.tensor_shape.dim.add().size = 4
        proto.tensor_content = rng.randbytes(rng.choice([1, 3, 15, 17]))
    elif kind == 3:   # invalid or unsupported dtype enum
        proto.dtype = rng.choice([0, 20, 21, 14, 8, 999])
        proto.tensor_shape.dim.add().size = 1
    else:             # a valid tensor of the wrong dtype for the signature
        proto.dtype = rng.choice([d for d in _VALUES if d != expected_dtype])
        field, value = _VALUES[proto.dtype]
        for size in rng.choice([[2], [2, 3], []]):
            proto.tensor_shape.dim.add().size = size
        getattr(proto, field).append(value)
    return proto


def _grpc_cases(rng: random.Random) -> Iterator[tuple[str, Callable[[], Any] | bytes]]:
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                         inference_pb2, predict_pb2, regression_pb2)

    for shape in ([4, 4, 1], [4, 4], [1, 4, 4, 1, 1]):     # see the conv cases of _rest_cases
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "conv"
        request.inputs["x"].dtype = 1
        for size in shape:
            request.inputs["x"].tensor_shape.dim.add().size = size
        request.inputs["x"].float_val.append(1.0)
        yield "Predict", request
    for i in range(COUNT):
        mode = i % 8
        if mode == 0:
            yield "Predict", rng.randbytes(rng.randrange(1, 120))
        elif mode in (1, 2, 3):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = rng.choice(["half_plus_two", "ints", "two_inputs", "strings"])
            alias, dtype = {"half_plus_two": ("x", 1), "ints": ("x", 3), "two_inputs": ("a", 1),
                            "strings": ("s", 7)}[request.model_spec.name]
            request.inputs[alias].CopyFrom(_tensor(rng, dtype))
            if rng.random() < 0.2:
                request.output_filter.append(rng.choice(["y", "nope", "y"]))
            if rng.random() < 0.1:
                request.model_spec.signature_name = "nope"
            yield "Predict", request
        elif mode == 4:   # missing keys
            request = predict_pb2.PredictRequest()
            if rng.random() < 0.5:
                request.model_spec.name = "half_plus_two"
                request.inputs["zzz"].CopyFrom(_tensor(rng, 1))
            yield "Predict", request
        elif mode == 5:
            request = (regression_pb2.RegressionRequest() if rng.random() < 0.5
                       else classification_pb2.ClassificationRequest())
            request.model_spec.name = "half_plus_two"
            request.model_spec.signature_name = rng.choice(["regress_x_to_y", "classify_x_to_y", "serving_default", ""])
            if rng.random() < 0.8:
                example = request.input.example_list.examples.add()
                feature = example.features.feature[rng.choice(["x", "y"])]
                rng.choice([lambda: feature.bytes_list.value.append(b"a"),
                            lambda: feature.int64_list.value.extend([1, 2, 3]),
                            lambda: feature.float_list.value.extend([1.0, 2.0])])()
            yield ("Regress" if isinstance(request, regression_pb2.RegressionRequest) else "Classify"), request
        elif mode == 6:
            request = inference_pb2.MultiInferenceRequest()
            for _ in range(rng.randrange(3)):
                task = request.tasks.add(method_name=rng.choice(["tensorflow/serving/regress", "bogus", ""]))
                task.model_spec.name = rng.choice(["half_plus_two", "ints", ""])
                task.model_spec.signature_name = rng.choice(["regress_x_to_y", "serving_default", ""])
            yield "MultiInference", request
        else:
            if rng.random() < 0.5:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=rng.choice([[], ["nope"], ["signature_def"]]))
                if rng.random() < 0.7:
                    request.model_spec.name = rng.choice(["nope", ""])
                yield "GetModelMetadata", request
            else:
                request = get_model_status_pb2.GetModelStatusRequest()
                if rng.random() < 0.5:
                    request.model_spec.name = "nope"
                yield "GetModelStatus", request


def test_malformed_grpc_requests(servers: tuple[str, int]) -> None:
    from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

    rng = random.Random(SEED)
    with grpc.insecure_channel(f"127.0.0.1:{servers[1]}") as channel:
        stubs = {"Predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
                 "GetModelStatus": model_service_pb2_grpc.ModelServiceStub(channel)}
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        seen = 0
        for method, request in _grpc_cases(rng):
            with pytest.raises(grpc.RpcError) as info:
                if isinstance(request, bytes):
                    raw(request, timeout=60)
                else:
                    stub = stubs["GetModelStatus" if method == "GetModelStatus" else "Predict"]
                    getattr(stub, method)(request, timeout=60)
            code = info.value.code()
            undeserializable = isinstance(request, bytes) and code == grpc.StatusCode.INTERNAL
            assert undeserializable or code not in BAD_GRPC, (method, str(request)[:300], code, info.value.details())
            seen += 1
        assert seen >= 200
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], shape=[3]))
        assert stubs["Predict"].Predict(request, timeout=30).outputs["y"].float_val[:] == [2.5, 3.0, 4.5]


# ------------------------------------------------------------------ fixed corpus: once 5xx or no answer


BIG = "1" * 5000                                 # an integer Python refuses to convert (4,300 digits)
DEEP = b"[" * 65 + b"1.0" + b"]" * 65             # rank 65: numpy holds 64 dimensions
TOO_BIG = "JSON Parse error: Number too big to be stored in double. at offset: {}"
SURROGATE = "JSON Parse error: The surrogate pair in string is invalid. at offset: {}"
VALID = ("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}')

HOSTILE_REST = [  # (method, path, body, TF Serving's error; "..." ends a prefix)
    ("POST", "/v1/models/half_plus_two:predict", b'{"instances": [' + BIG.encode() + b"]}", TOO_BIG.format(15)),
    ("POST", "/v1/models/ints:predict", b'{"instances": [-' + BIG.encode() + b"]}", TOO_BIG.format(15)),
    ("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1e999]}', TOO_BIG.format(15)),
    ("POST", "/v1/models/half_plus_two:regress",
     b'{"signature_name": "regress_x_to_y", "examples": [{"x": ' + BIG.encode() + b"}]}", TOO_BIG.format(56)),
    ("POST", f"/v1/models/half_plus_two/versions/{BIG}:predict", VALID[2],
     f"Failed to convert version: {BIG} to numeric."),
    ("GET", f"/v1/models/half_plus_two/versions/{BIG}", b"", f"Failed to convert version: {BIG} to numeric."),
    ("GET", f"/v1/models/half_plus_two/versions/{BIG}/metadata", b"", f"Failed to convert version: {BIG} to numeric."),
    ("POST", "/v1/models/half_plus_two:predict", b'{"signature_name": "\\ud800", "instances": [1.0]}',
     SURROGATE.format(20)),
    ("POST", "/v1/models/strings:predict", b'{"instances": ["a\\ud800\\u0041"]}', SURROGATE.format(17)),
    ("POST", "/v1/models/half_plus_two:classify", b'{"examples": [{"\\udbff": 1.0}]}', SURROGATE.format(16)),
    ("POST", "/v1/models/half_plus_two:predict", b'{"signature_name": "\\udc00", "instances": [1.0]}',
     'Serving signature name: "\ufffd" not found in signature def'),
    ("POST", "/v1/models/half_plus_two:predict", b'{"signature_name": "\xff\xfe", "instances": [1.0]}',
     'Serving signature name: "\ufffd\ufffd" not found in signature def'),
    ("POST", "/v1/models/half_plus_two:predict", b'{"instances": ["\xff"]}',
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"\ufffd\" Type: "
     "String is not of expected type: float"),
    ("POST", "/v1/models/ints:predict", b'{"instances": ["\\udc80x"]}',
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"\ufffdx\" Type: "
     "String is not of expected type: int32"),
    ("POST", "/v1/models/two_inputs:predict", b'{"instances": [{"a": 1.0, "b": 1.0, "\xff": 2.0}]}',
     "Failed to process element: 0 key: \ufffd of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does "
     "not have named input: \ufffd"),
    ("POST", "/v1/models/half_plus_two:classify",
     b'{"signature_name": "classify_x_to_y", "examples": [{"\xff": 1.0}]}',
     "Name: <unknown>, Feature: x (data type: float) is required but could not be found...."),
    ("POST", "/v1/models/numbers:predict", b'{"instances": ["\xff\xfe"]}',
     "StringToNumberOp could not correctly convert string: \ufffd\ufffd..."),
    ("POST", "/v1/models/half_plus_two:predict", b'{"instances": ' + DEEP + b"}", "tensor parsing error: x"),
    ("POST", "/v1/models/half_plus_two:predict", b'{"inputs": ' + DEEP + b"}", "tensor parsing error: x"),
    ("POST", "/v1/models/strings:predict", b'{"inputs": ' + DEEP.replace(b"1.0", b'"a"') + b"}",
     "tensor parsing error: s"),
    ("POST", "/v1/models/two_inputs:predict", b'{"instances": [{"a": ' + DEEP[1:-1] + b', "b": ' + DEEP[1:-1] + b"}]}",
     "tensor parsing error: a"),
]


def _request(method: str, path: str, body: bytes) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def _answers(sock: socket.socket, count: int) -> list[tuple[int, bytes, bytes]]:
    """``count`` answers read off ``sock``: (status, head, body)."""
    data, answers = b"", []
    while len(answers) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None) if sep else None
        if length is not None and len(rest) >= length:
            answers.append((int(head.split()[1]), head, rest[:length]))
            data = rest[length:]
            continue
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {len(answers)} answers"
        data += chunk
    return answers


def _matches(message: str, expected: str) -> bool:
    return message.startswith(expected[:-3]) if expected.endswith("...") else message == expected


@pytest.mark.parametrize("method,path,body,message", HOSTILE_REST,
                         ids=[f"{i}-{case[1].split('/')[3][:20]}" for i, case in enumerate(HOSTILE_REST)])
def test_hostile_rest_requests_get_400_and_the_connection_goes_on(servers: tuple[str, int], method: str,
                                                                  path: str, body: bytes, message: str) -> None:
    """Sent first on a fresh connection, so a warm cheap model answers it inline (handle_now); the
    valid request pipelined behind it must be answered on the same connection."""
    url = servers[0]
    for _ in range(20):                                     # past inline.MIN_SAMPLES: predicts run inline
        requests.post(url + VALID[1], data=VALID[2], timeout=30)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(_request(method, path, body) + _request(*VALID))
        (status, head, answer), (ok_status, _, ok_body) = _answers(sock, 2)
    assert status == 400 and b"connection: close" not in head.lower(), (status, head, answer[:300])
    error = json.loads(answer)["error"]
    assert _matches(error, message), error[:300]
    assert (ok_status, ok_body) == (200, b'{"predictions": [2.5]}')


def _predict_request(model: str, alias: str, dtype: int, dims: list[int], field: str = "", values: list = ()):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs[alias]
    tensor.dtype = dtype
    for size in dims:
        tensor.tensor_shape.dim.add().size = size
    if field:
        getattr(tensor, field).extend(values)
    return request


def _hostile_grpc() -> list[tuple[Any, str]]:
    rank65 = _predict_request("half_plus_two", "x", 1, [1] * 65)
    rank65.inputs["x"].tensor_content = b"\0\0\x80?"
    return [
        (_predict_request("half_plus_two", "x", 1, [0, 2 ** 62]), "tensor parsing error: x"),
        (_predict_request("half_plus_two", "x", 1, [2 ** 62, 0], "float_val", [1.0]), "tensor parsing error: x"),
        (_predict_request("strings", "s", 7, [0, 2 ** 62, 2 ** 62]), "tensor parsing error: s"),
        (_predict_request("half_plus_two", "x", 1, [1] * 65, "float_val", [1.0]), "tensor parsing error: x"),
        (_predict_request("strings", "s", 7, [1] * 65, "string_val", [b"a"]), "tensor parsing error: s"),
        (rank65, "tensor parsing error: x"),
        (_predict_request("numbers", "s", 7, [1], "string_val", [b"\xff\xfe"]),
         "StringToNumberOp could not correctly convert string: \ufffd\ufffd..."),
    ]


def test_hostile_grpc_requests_get_invalid_argument(servers: tuple[str, int]) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{servers[1]}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for request, message in _hostile_grpc():
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, info.value.details())
            assert _matches(info.value.details(), message), info.value.details()
        # A unary call whose request stream ends without a message: C++ gRPC's answer, at once.
        empty = channel.stream_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as info:
            empty(iter(()), timeout=60)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INTERNAL,
                                                             "Couldn't initialize byte buffer reader")
        ok = _predict_request("half_plus_two", "x", 1, [1, 1], "float_val", [1.0])
        assert stub.Predict(ok, timeout=30).outputs["y"].float_val[:] == [2.5]
