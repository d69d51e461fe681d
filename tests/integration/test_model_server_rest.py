"""The real ``appliance-model-server`` over HTTP, serving SavedModels built by ``tests/tfmodels.py``.

One server for the whole module; every case checks TF Serving's exact status code and body.
"""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import pytest
import requests

from tests import tfmodels
from tests.conftest import Processes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> str:
    return tfmodels.serve_test_models(tmp_path_factory.mktemp("rest_models"), session_processes,
                                      "model_server_rest.log")


def post(server: str, path: str, body: bytes | str | dict, **kw) -> requests.Response:
    data = json.dumps(body) if isinstance(body, dict) else body
    return requests.post(server + path, data=data, timeout=30, **kw)


def assert_error(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": message}


# ------------------------------------------------------------------ happy paths


def test_demo_predict_bytes(server: str) -> None:
    r = post(server, "/v1/models/half_plus_two:predict", b'{"instances": [1.0, 2.0, 5.0]}')
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == b'{"predictions": [2.5, 3.0, 4.5]}'


def test_columnar_predict(server: str) -> None:
    r = post(server, "/v1/models/half_plus_two:predict", {"inputs": [[2.0], [3.0], [4.0]]})
    assert r.json() == {"outputs": [[3.0], [3.5], [4.0]]}


def test_model_status(server: str) -> None:
    r = requests.get(server + "/v1/models/half_plus_two", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    both = requests.get(server + "/v1/models/half_plus", timeout=10).json()
    assert [s["version"] for s in both["model_version_status"]] == ["2", "1"]
    one = requests.get(server + "/v1/models/half_plus/versions/1", timeout=10).json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    # TF Serving quirk: the label is ignored for status and every version comes back.
    labelled = requests.get(server + "/v1/models/half_plus/labels/stable", timeout=10).json()
    assert len(labelled["model_version_status"]) == 2


def test_metadata(server: str) -> None:
    r = requests.get(server + "/v1/models/half_plus_two/metadata", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    assert sigs["serving_default"]["inputs"]["x"] == {
        "dtype": "DT_FLOAT", "name": "x:0",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    v1 = requests.get(server + "/v1/models/half_plus/versions/1/metadata", timeout=10).json()
    assert v1["model_spec"]["version"] == "1"
    canary = requests.get(server + "/v1/models/half_plus/labels/canary/metadata", timeout=10).json()
    assert canary["model_spec"]["version"] == "2"


def test_version_and_label_routes(server: str) -> None:
    body = {"instances": [1.0, 2.0]}
    assert post(server, "/v1/models/half_plus:predict", body).json() == {"predictions": [3.5, 4.0]}
    assert post(server, "/v1/models/half_plus/versions/1:predict", body).json() == {"predictions": [2.5, 3.0]}
    assert post(server, "/v1/models/half_plus/labels/stable:predict", body).json() == {"predictions": [2.5, 3.0]}
    assert post(server, "/v1/models/half_plus/labels/canary:predict", body).json() == {"predictions": [3.5, 4.0]}
    assert post(server, "/V1/MODELS/half_plus/VERSIONS/1:PREDICT", body).json() == {"predictions": [2.5, 3.0]}


def test_two_inputs_row_and_columnar(server: str) -> None:
    rows = post(server, "/v1/models/two_inputs:predict", {"instances": [{"a": 1.0, "b": 2}, {"a": 3, "b": 0.5}]})
    assert rows.json() == {"predictions": [{"diff": -1.0, "sum": 3.0}, {"diff": 2.5, "sum": 3.5}]}
    cols = post(server, "/v1/models/two_inputs:predict", {"inputs": {"a": [1.0], "b": [2.0]}})
    assert cols.json() == {"outputs": {"diff": [-1.0], "sum": [3.0]}}


def test_strings_b64_and_bytes_outputs(server: str) -> None:
    r = post(server, "/v1/models/strings:predict", {"instances": ["héllo", {"b64": "AP8="}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0] == {"echo": "héllo", "echo_bytes": {"b64": "aMOpbGxv"}, "length": 6}
    assert r.json()["predictions"][1]["echo_bytes"] == {"b64": "AP8="}


def test_string_bytes_reach_the_model_as_sent(server: str) -> None:
    """rapidjson does not validate UTF-8: TF gets the 2 bytes ``\\xff\\xfe``; a lone low surrogate
    escape is its 3-byte form, as rapidjson 1.1.0 encodes it."""
    r = post(server, "/v1/models/strings:predict", b'{"instances": ["\xff\xfe", "\\udc00", "\xc3\xa9"]}')
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["length"] for p in predictions] == [2, 3, 2]
    assert [p["echo_bytes"]["b64"] for p in predictions] == ["//4=", "7bCA", "w6k="]
    assert predictions[2]["echo"] == "\u00e9"


def test_scalar_string_output(server: str) -> None:
    """A 0-d string output comes back from the session as plain bytes (it used to be a 500)."""
    r = post(server, "/v1/models/strings:predict", b'{"inputs": "a:b"}')
    assert r.json() == {"outputs": {"echo": "a:b", "echo_bytes": {"b64": "YTpi"}, "length": 3}}


def test_repeated_keys_first_wins(server: str) -> None:
    """rapidjson's FindMember finds the first of a repeated key, so TF Serving uses that one."""
    r = post(server, "/v1/models/half_plus_two:predict", b'{"instances": [1.0], "instances": [2.0]}')
    assert r.json() == {"predictions": [2.5]}
    r = post(server, "/v1/models/two_inputs:predict", b'{"inputs": {"a": [1.0], "b": [2.0], "a": [5.0]}}')
    assert r.json() == {"outputs": {"diff": [-1.0], "sum": [3.0]}}


def test_ints(server: str) -> None:
    assert post(server, "/v1/models/ints:predict", {"instances": [1, 2, 3]}).json() == {"predictions": [2, 4, 6]}


def test_gzip_body_and_no_content_type(server: str) -> None:
    body = gzip.compress(b'{"instances": [1.0]}')
    r = requests.post(server + "/v1/models/half_plus_two:predict", data=body, timeout=10,
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"})
    assert r.json() == {"predictions": [2.5]}


def test_chunked_body(server: str) -> None:
    chunks = iter([b'{"instances": ', b"[1.0, 2.0]}"])
    r = requests.post(server + "/v1/models/half_plus_two:predict", data=chunks, timeout=10)
    assert r.json() == {"predictions": [2.5, 3.0]}


def test_keep_alive_and_pipelining(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    request = (b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
               b'{"instances": [1.0]}')
    status = b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request + status + request)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    first, second, third = data.split(b"HTTP/1.1 200 OK")[1:]
    assert first.endswith(b'{"predictions": [2.5]}') and third.endswith(b'{"predictions": [2.5]}')
    assert b"model_version_status" in second


def test_pipelined_answers_keep_their_order_once_predicts_run_inline(server: str) -> None:
    """A warm cheap model is answered without a task (handle_now); a request that needs one (status,
    classify) in between must not let later inline answers overtake it."""
    for _ in range(30):                                   # past inline.MIN_SAMPLES: runs inline now
        assert post(server, "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}').status_code == 200
    host, port = server.removeprefix("http://").split(":")

    def req(method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
        extra = b"Connection: close\r\n" if close else b""
        return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
                + extra + b"\r\n" + body)
    sent = [req("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}'),
            req("GET", "/v1/models/half_plus_two"),
            req("POST", "/v1/models/half_plus_two:predict", b'{"instances": [3.0]}'),
            req("POST", "/v1/models/half_plus_two:classify",
                b'{"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}'),
            req("POST", "/v1/models/half_plus_two:predict", b"garbage"),
            req("POST", "/v1/models/half_plus_two:predict", b'{"instances": [5.0]}', close=True)]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(sent))
        data = b""
        while chunk := sock.recv(65536):                  # the server closes after the last one
            data += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert len(bodies) == 6, data
    assert bodies[0] == b'{"predictions": [2.5]}' and bodies[2] == b'{"predictions": [3.5]}'
    assert b"model_version_status" in bodies[1] and b"results" in bodies[3]
    assert json.loads(bodies[4]) == {"error": "JSON Parse error: Invalid value. at offset: 0"}
    assert bodies[5] == b'{"predictions": [4.5]}'


# ------------------------------------------------------------------ errors


PREDICT = "/v1/models/half_plus_two:predict"


@pytest.mark.parametrize("path,body,status,message", [
    (PREDICT, b"", 400, "JSON Parse error: The document is empty"),
    (PREDICT, b"garbage", 400, "JSON Parse error: Invalid value. at offset: 0"),
    (PREDICT, b'{"instances": [1.0], "inputs": [1.0]}', 400,
     'JSON Value: {\n    "instances": [\n        1.0\n    ],\n    "inputs": [\n        1.0\n    ]\n} Not formatted '
     "correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    (PREDICT, b'{"foo": 1}', 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/unknown:predict", b'{"instances": [1.0]}', 404, "Servable not found for request: Latest(unknown)"),
    ("/v1/models/half_plus_two/versions/7:predict", b'{"instances": [1.0]}', 404,
     "Servable not found for request: Specific(half_plus_two, 7)"),
    ("/v1/models/half_plus_two/labels/nope:predict", b'{"instances": [1.0]}', 400,
     "Unrecognized servable version label: nope"),
    (PREDICT, b'{"instances": ["a"]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String "
     "is not of expected type: float"),
    (PREDICT, b'{"signature_name": "nope", "instances": [1.0]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/ints:predict", b'{"instances": [1.5]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: Number "
     "is not of expected type: int32"),
    ("/v1/models/two_inputs:predict", b'{"instances": [1.0]}', 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
     "tensorinfo_map"),
    ("/v1/models/half_plus_two/metadata", b"{}", 400, "Malformed request: POST /v1/models/half_plus_two/metadata"),
    ("/v1/models/foo/version/50:predict", b"{}", 400, "Malformed request: POST /v1/models/foo/version/50:predict"),
    ("/v1/models/foo/versions/HELLO:regress", b"{}", 400,
     "Malformed request: POST /v1/models/foo/versions/HELLO:regress"),
])
def test_post_errors(server: str, path: str, body: bytes, status: int, message: str) -> None:
    assert_error(post(server, path, body), status, message)


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", PREDICT, 400, f"Malformed request: GET {PREDICT}"),
    ("PUT", PREDICT, 400, f"Malformed request: PUT {PREDICT}"),
    ("DELETE", "/v1/models/half_plus_two", 400, "Malformed request: DELETE /v1/models/half_plus_two"),
    ("GET", "/v1/foo", 400, "Malformed request: GET /v1/foo"),
    ("GET", "/v1/models", 400, "Missing model name in request."),
    ("GET", "/v1/models/unknown", 404, "Could not find any versions of model unknown"),
    ("GET", "/v1/models/half_plus_two/versions/9", 404, "Could not find version 9 of model half_plus_two"),
    ("GET", "/v1/models/unknown/metadata", 404, "Servable not found for request: Latest(unknown)"),
    ("GET", "/v1/models/half_plus_two/versions/99999999999999999999", 400,
     "Failed to convert version: 99999999999999999999 to numeric."),
])
def test_method_and_route_errors(server: str, method: str, path: str, status: int, message: str) -> None:
    assert_error(requests.request(method, server + path, timeout=10), status, message)


def test_non_v1_path_is_plain_404(server: str) -> None:
    r = requests.get(server + "/statuspage", timeout=10)
    assert r.status_code == 404
    assert r.headers["Content-Type"] != "application/json"


def test_graph_error_is_invalid_argument(server: str) -> None:
    r = post(server, PREDICT, {"inputs": [[1.0, 2.0, 3.0]]})   # [1,3] x [1,1] matmul-free: broadcasting works
    assert r.status_code == 200
    r = post(server, "/v1/models/half_plus_two:predict", {"signature_name": "regress_x_to_y", "inputs": ["junk"]})
    assert r.status_code == 400 and "error" in r.json()


def test_server_still_answers_after_errors(server: str) -> None:
    for body in (b"\xff\xfe", b"{" * 5000, b'{"instances": [' + b"[" * 3000 + b"]}", b"[]" * 100):
        r = post(server, PREDICT, body)
        assert r.status_code in (400, 500), r.text
        assert "error" in r.json()
    assert post(server, PREDICT, {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_garbage_http_gets_400_and_server_survives(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert post(server, PREDICT, {"instances": [1.0]}).status_code == 200


# ------------------------------------------------------------------ classify / regress (§1.4)


def test_regress_and_classify(server: str) -> None:
    r = post(server, "/v1/models/half_plus_two:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [3.0]}
    r = post(server, "/v1/models/half_plus_two:classify",
             {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]})
    assert r.json() == {"results": [[["", 3.0]], [["", 4.0]]]}
    r = post(server, "/v1/models/half_plus_two:regress",
             {"signature_name": "regress_x_to_y", "context": {"x": 1.0}, "examples": [{}, {"x": 4.0}]})
    assert r.json() == {"results": [2.5, 4.0]}


@pytest.mark.parametrize("verb,body,message", [
    ("regress", {"signature_name": "regress_x_to_y"},
     'JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key \'examples\' is '
     "expected and was not found"),
    ("regress", {"examples": []}, "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"),
    ("regress", {"examples": 1}, "JSON Value: {\n    \"examples\": 1\n} Expecting 'examples' value to be an list/array"),
    ("regress", {"examples": [1]}, "Example must be JSON object but got JSON Number"),
    ("regress", {"examples": [{"x": [1.0, 2]}]}, "Unexpected element type in feature: x expecting type: float"),
    ("regress", {"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
    ("regress", {"signature_name": "nope", "examples": [{"x": 1.0}]}, "No signature was found with the name: nope"),
])
def test_classify_regress_errors(server: str, verb: str, body: dict, message: str) -> None:
    assert_error(post(server, f"/v1/models/half_plus_two:{verb}", body), 400, message)


# ------------------------------------------------------------------ lifecycle


def test_version_polling_and_sigterm(tmp_path: Path, processes: Processes) -> None:
    """New version dirs are served within a poll, removed ones unloaded; SIGTERM exits 0 quickly."""
    import shutil
    import signal
    import time

    from tests.conftest import wait_until

    built = tfmodels.build_all(tmp_path / "built")
    base = tmp_path / "served"
    base.mkdir()
    shutil.copytree(built["half_plus"] / "1", base / "1")
    log = tmp_path / "server.log"
    url = tfmodels.start_model_server(processes, ["--model_name=m", f"--model_base_path={base}",
                                                  "--file_system_poll_wait_seconds=1"], log)
    body = {"instances": [1.0]}
    assert post(url, "/v1/models/m:predict", body).json() == {"predictions": [2.5]}
    staging = tmp_path / "staging"
    shutil.copytree(built["half_plus"] / "2", staging)
    staging.rename(base / "2")   # atomic, as the sync agent does
    wait_until(lambda: post(url, "/v1/models/m:predict", body).json() == {"predictions": [3.5]}, timeout=30,
               what="version 2 served")
    wait_until(lambda: [s["state"] for s in requests.get(url + "/v1/models/m", timeout=5).json()
                        ["model_version_status"]] == ["AVAILABLE", "END"], timeout=30, what="version 1 unloaded")
    shutil.rmtree(base / "2")
    shutil.copytree(built["half_plus"] / "1", base / "3")
    wait_until(lambda: post(url, "/v1/models/m:predict", body).json() == {"predictions": [2.5]}, timeout=30,
               what="version 3 served")
    proc = processes.procs[-1]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - started < 10
