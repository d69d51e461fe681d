"""``--enable_batching`` and ``--monitoring_config_file`` on one real server.

Batching parameters make merging deterministic without any timing: ``max_batch_size`` 32 and a
30 s ``batch_timeout_micros``, so an open batch is processed only once it holds 32 rows; and
``max_enqueued_batches`` 1, so a call that does not fit in the open batch is refused. Every
request of this module therefore sends rows adding up to 32, or expects the refusal. The
Prometheus page proves the merging (batch-size histograms, wrapped run count) and shows the
request counters moving.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import grpc
import numpy as np
import pytest
import requests

from tests import onnxmodels, tfmodels
from tests.conftest import ARTIFACTS, Processes, free_port

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

BATCH = 32
METRICS_PATH = "/metrics/custom"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory, session_processes: Processes) -> tuple[str, int, str]:
    root = tmp_path_factory.mktemp("batching")
    paths = onnxmodels.build(root / "models", {"half_plus_two": {1: onnxmodels.half_plus(2.0, ["batch", 1])}})
    config = root / "models.config"
    config.write_text(onnxmodels.model_config(paths))
    batching = root / "batching.config"
    batching.write_text(f"max_batch_size {{ value: {BATCH} }}\nbatch_timeout_micros {{ value: 30000000 }}\n"
                        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 2 }\n")
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n')
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "model_server_batching.log"
    log.write_bytes(b"")
    grpc_port = free_port()
    url = tfmodels.start_model_server(session_processes, [
        f"--model_config_file={config}", f"--port={grpc_port}", "--enable_batching",
        f"--batching_parameters_file={batching}", f"--monitoring_config_file={monitoring}"], log)
    return url, grpc_port, str(paths["half_plus_two"] / "1")


@pytest.fixture(scope="module")
def server(ports: tuple[str, int, str]) -> str:
    return ports[0]


def metrics(server: str) -> tuple[dict[tuple[str, frozenset], float], dict[str, str]]:
    """The Prometheus page parsed: samples by (name, labels), and the ``# TYPE`` of each family."""
    r = requests.get(server + METRICS_PATH, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.endswith("\n")
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value.replace("+Inf", "inf"))
    return samples, types


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def predict_rest(server: str, rows: list[float]) -> requests.Response:
    body = json.dumps({"instances": [[x] for x in rows]})
    return requests.post(server + "/v1/models/half_plus_two:predict", data=body, timeout=60)


def predict_grpc(port: int, rows: list[float]) -> list[float]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x] for x in rows], np.float32)))
        return list(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
                    .outputs["y"].float_val)


def test_concurrent_callers_are_merged_and_get_their_own_rows(ports: tuple[str, int, str]) -> None:
    server, grpc_port, _ = ports
    import tensorflow  # noqa: F401 - imported once here, not inside 16 racing client threads

    before, _ = metrics(server)

    def rest_client(i: int) -> list[float]:
        r = predict_rest(server, [float(i)])
        assert r.status_code == 200, r.text
        return [row[0] for row in r.json()["predictions"]]

    with ThreadPoolExecutor(BATCH) as pool:
        futures = {i: pool.submit(rest_client, i) if i % 2 else pool.submit(predict_grpc, grpc_port, [float(i)])
                   for i in range(BATCH)}
        results = {i: f.result(timeout=120) for i, f in futures.items()}
    assert results == {i: [0.5 * i + 2.0] for i in range(BATCH)}

    after, _ = metrics(server)
    delta = {name: sample(after, name) - sample(before, name) for name in (
        ":tensorflow:serving:batching_session:wrapped_run_count",
        ":tensorflow:serving:batching_session:processed_batch_size_count",
        ":tensorflow:serving:batching_session:processed_batch_size_sum",
        ":tensorflow:serving:batching_session:input_batch_size_sum")}
    # 32 one-row callers, one runtime call of 32 rows.
    assert delta == {":tensorflow:serving:batching_session:wrapped_run_count": 1,
                     ":tensorflow:serving:batching_session:processed_batch_size_count": 1,
                     ":tensorflow:serving:batching_session:processed_batch_size_sum": BATCH,
                     ":tensorflow:serving:batching_session:input_batch_size_sum": BATCH}
    assert sample(after, ":tensorflow:serving:batching_session:queuing_latency_count",
                  thread_pool_name="batch_threads") >= BATCH
    # Both front ends count their requests: 16 over REST, 16 over gRPC.
    ok = dict(model_name="half_plus_two", status="OK")
    assert sample(after, ":tensorflow:serving:request_count", **ok) - \
        sample(before, ":tensorflow:serving:request_count", **ok) == BATCH
    grpc_latency = dict(model_name="half_plus_two", API="Predict", entrypoint="GRPC")
    assert sample(after, ":tensorflow:serving:request_latency_count", **grpc_latency) - \
        sample(before, ":tensorflow:serving:request_latency_count", **grpc_latency) == BATCH // 2


def test_full_queue_is_unavailable(server: str) -> None:
    """Two 20-row calls cannot share a 32-row batch and only one batch may wait: one is refused."""
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(predict_rest, server, [1.0] * 20), pool.submit(predict_rest, server, [2.0] * 20)
        # Whichever came second is answered at once; the other waits in the open batch for more rows.
        done, _ = wait([first, second], timeout=60, return_when=FIRST_COMPLETED)
        assert len(done) == 1
        refused = done.pop()
        waiting = second if refused is first else first
        r = refused.result()
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "The batch scheduling queue to which this task was submitted is full"}
        filler = predict_rest(server, [float(i) for i in range(12)])  # 20 + 12 rows: the batch is full and runs
        assert filler.json() == {"predictions": [[0.5 * i + 2.0] for i in range(12)]}
        value = 1.0 if waiting is first else 2.0
        assert waiting.result(timeout=60).json() == {"predictions": [[0.5 * value + 2.0]] * 20}


def test_calls_that_cannot_be_merged_run_alone(server: str) -> None:
    """A rank-0 input has no rows to batch on: it bypasses the queue (and gets the runtime's error)."""
    r = requests.post(server + "/v1/models/half_plus_two:predict", data=json.dumps({"inputs": 1.0}), timeout=30)
    assert r.status_code == 400
    assert r.json()["error"].startswith("Invalid rank for input: x Got: 0 Expected: 2")
    full = predict_rest(server, [float(i) for i in range(BATCH + 8)])  # more rows than max_batch_size
    assert full.json() == {"predictions": [[0.5 * i + 2.0] for i in range(BATCH + 8)]}


def test_prometheus_page(ports: tuple[str, int, str]) -> None:
    server, _, version_dir = ports
    before, _ = metrics(server)
    assert predict_rest(server, [1.0] * BATCH).status_code == 200
    assert requests.get(server + "/v1/models/half_plus_two", timeout=10).status_code == 200
    assert requests.get(server + "/v1/models/nope", timeout=10).status_code == 404
    after, types = metrics(server)

    assert types[":tensorflow:serving:request_count"] == "counter"
    assert types[":tensorflow:serving:request_latency"] == "histogram"
    assert types[":tensorflow:serving:runtime_latency"] == "histogram"
    assert types[":tensorflow:serving:batching_session:processed_batch_size"] == "histogram"
    assert types[":tensorflow:cc:saved_model:load_attempt_count"] == "counter"
    count = ":tensorflow:serving:request_count"
    assert sample(after, count, model_name="half_plus_two", status="OK") - \
        sample(before, count, model_name="half_plus_two", status="OK") == 2
    # A model the server does not serve is no series of its own (bounded labels): model_name="".
    assert sample(after, count, model_name="", status="NOT_FOUND") - \
        sample(before, count, model_name="", status="NOT_FOUND") == 1
    assert not [key for key in after if ("model_name", "nope") in key[1]]

    latency = ":tensorflow:serving:request_latency"
    labels = dict(model_name="half_plus_two", API="predict", entrypoint="REST")
    buckets = sorted(((dict(lbl)["le"], value) for (name, lbl), value in after.items()
                      if name == latency + "_bucket" and set(labels.items()) <= lbl), key=lambda b: float(b[0]))
    assert len(buckets) == 34 and buckets[0][0] == "10" and buckets[1][0] == "18" and buckets[-1][0] == "+Inf"
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)   # cumulative
    assert buckets[-1][1] == sample(after, latency + "_count", **labels) >= 1
    assert sample(after, ":tensorflow:serving:runtime_latency_count", model_name="half_plus_two", API="Predict",
                  runtime="ONNX") >= 1
    assert sample(after, ":tensorflow:cc:saved_model:load_attempt_count", model_path=version_dir,
                  status="success") == 1
    assert sample(after, ":appliance:serving:available_versions", model_name="half_plus_two") == 1


def test_prometheus_page_only_answers_get(server: str) -> None:
    assert requests.post(server + METRICS_PATH, data=b"", timeout=10).status_code == 405
    assert requests.get(server + "/monitoring/prometheus/metrics", timeout=10).status_code == 404


@pytest.mark.parametrize("flags,expected", [
    (["--monitoring_config_file={bad}"], "Error parsing text-format tensorflow.serving.MonitoringConfig: "),
    (["--enable_batching", "--batching_parameters_file={bad}"],
     "Error parsing text-format tensorflow.serving.BatchingParameters: "),
    (["--batching_parameters_file={good}"],
     "Failed to start server. Error: INVALID_ARGUMENT: server_options.batching_parameters_file is set without "
     "setting server_options.enable_batching to true."),
])
def test_bad_config_files_stop_the_server(tmp_path, flags: list[str], expected: str) -> None:
    import subprocess

    from tests.conftest import venv_bin

    bad, good = tmp_path / "bad.config", tmp_path / "good.config"
    bad.write_text("prometheus_config { enable: yes please }\nmax_batch_size: 3\n")
    good.write_text("max_batch_size { value: 8 }\n")
    args = [flag.format(bad=bad, good=good) for flag in flags]
    result = subprocess.run([venv_bin("appliance-model-server"), "--port=0", f"--model_base_path={tmp_path}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    if "parsing" in expected:
        assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{bad}'" in result.stderr
