"""The one model server status client (appliance/modelstatus.py): its URL quoting and how it reads
each kind of answer, against a small HTTP server in a thread that answers as TF Serving does."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Iterator

import pytest

from appliance.modelstatus import ModelServerClient
from tests.conftest import free_port

SERVING = {"model_version_status": [
    {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
]}

# Request path -> (HTTP status, body); any other path gets TF Serving's 404.
ANSWERS = {
    "/v1/models/m": (200, json.dumps(SERVING)),
    "/v1/models/loading": (200, json.dumps({"model_version_status": [{"version": "3", "state": "LOADING"}]})),
    "/v1/models/garbage": (200, "<html>not TF Serving</html>"),
    "/v1/models/my%20model%25%3F%23": (200, json.dumps(SERVING)),
    "/v1/models/m/versions/2/metadata": (200, json.dumps({"metadata": {}})),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServerClient]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            code, body = ANSWERS.get(self.path, (404, json.dumps(
                {"error": f"Servable not found for request: Latest({self.path})"})))
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield ModelServerClient(f"http://127.0.0.1:{httpd.server_address[1]}/", timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_model_name_is_one_quoted_path_segment(server: ModelServerClient) -> None:
    assert server.url("my model%?#").endswith("/v1/models/my%20model%25%3F%23")
    assert server.url("../x").endswith("/v1/models/..%2Fx")
    assert server.states("my model%?#") == {2: "AVAILABLE", 1: "END"}


def test_states_and_availability(server: ModelServerClient) -> None:
    assert server.states("m") == {2: "AVAILABLE", 1: "END"} and server.available("m")
    assert server.states("loading") == {3: "LOADING"} and not server.available("loading")


def test_an_unknown_model_has_no_versions_and_says_why(server: ModelServerClient) -> None:
    answer = server.status("unknown")
    assert (answer.code, answer.reported) == (404, False)
    assert answer.error.startswith("Servable not found")
    assert server.states("unknown") == {} and not server.available("unknown")


def test_an_answer_that_is_not_tf_serving_is_no_answer(server: ModelServerClient) -> None:
    answer = server.status("garbage")
    assert (answer.code, answer.reported) == (200, False) and "not TF Serving" in answer.error
    assert server.states("garbage") is None


def test_a_model_server_that_does_not_answer_is_code_0() -> None:
    silent = ModelServerClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    answer = silent.status("m")
    assert (answer.code, answer.reported) == (0, False) and answer.error
    assert silent.states("m") is None and not silent.available("m")


def test_metadata(server: ModelServerClient) -> None:
    assert server.metadata("m", "2") == (200, {"metadata": {}})
    assert server.metadata("m", "9")[0] == 404
