"""``--enable_batching`` and ``--monitoring_config_file`` on one real server.

Batching parameters make merging deterministic without any timing: ``max_batch_size`` 32 and a
30 s ``batch_timeout_micros``, so an open batch is processed only once it holds 32 rows; and
``max_enqueued_batches`` 1, so a call that does not fit in the open batch is refused. Every
request of this module therefore sends rows adding up to 32, or expects the refusal. The
Prometheus page proves the merging (batch-size histograms, wrapped run count) and shows the
request counters moving.

The same server has a ``--model_settings_file`` (re-read on the models.config poll) for three
more models, none of which follows the global flags: ``mixed`` (``model_platform: auto``: an
ONNX version, a SavedModel version, and a version with no model files) with batching off,
``batched`` with batching of its own, and ``muted`` with metrics off. ``half_plus_two`` has no
entry, so it keeps the global flags' batching.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import onnxmodels, tfmodels
from tests.conftest import ARTIFACTS, Processes, free_port, wait_until

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

BATCH = 32
METRICS_PATH = "/metrics/custom"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


LOG = ARTIFACTS / "model_server_batching.log"
SMALL_BATCH = 4
# batched: a batch runs only when full (SMALL_BATCH rows), as the global flags' one does.
BATCHED = {"max_batch_size": SMALL_BATCH, "batch_timeout_micros": 30_000_000, "max_enqueued_batches": 100,
           "num_batch_threads": 1, "allowed_batch_sizes": [], "pad_variable_length_inputs": False}
SETTINGS = {"models": {
    "mixed": {"batching": None},
    "batched": {"batching": BATCHED},
    "muted": {"batching": None, "metrics": False},
}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching")


@pytest.fixture(scope="module")
def ports(root: Path, session_processes: Processes) -> tuple[str, int, str]:
    paths = onnxmodels.build(root / "models", {"half_plus_two": {1: onnxmodels.half_plus(2.0, ["batch", 1])},
                                               "batched": {1: onnxmodels.half_plus(1.0, ["batch", 1])},
                                               "muted": {1: onnxmodels.half_plus(2.0, ["batch", 1])},
                                               "mixed": {1: onnxmodels.half_plus(3.0, ["batch", 1])}})
    tfmodels.save_version(paths["mixed"] / "2", tfmodels.half_plus(2.0))
    (paths["mixed"] / "3").mkdir()
    (paths["mixed"] / "3" / "notes.txt").write_text("no model here")
    text = onnxmodels.model_config(paths).replace(
        f"base_path: '{paths['mixed']}'\n    model_platform: 'onnx'",
        f"base_path: '{paths['mixed']}'\n    model_platform: 'auto'\n    model_version_policy {{ all {{}} }}")
    assert "'auto'" in text
    config = root / "models.config"
    config.write_text(text)
    (root / "model-settings.json").write_text(json.dumps(SETTINGS))
    batching = root / "batching.config"
    batching.write_text(f"max_batch_size {{ value: {BATCH} }}\nbatch_timeout_micros {{ value: 30000000 }}\n"
                        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 2 }\n")
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n')
    ARTIFACTS.mkdir(exist_ok=True)
    LOG.write_bytes(b"")
    grpc_port = free_port()
    url = tfmodels.start_model_server(session_processes, [
        f"--model_config_file={config}", f"--port={grpc_port}", "--enable_batching",
        f"--batching_parameters_file={batching}", f"--monitoring_config_file={monitoring}",
        f"--model_settings_file={root / 'model-settings.json'}", "--model_config_file_poll_wait_seconds=1"], LOG)
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
    """The sum of ``name``'s series that carry ``labels`` (and maybe more: version, signature)."""
    wanted = set(labels.items())
    return sum(value for (key, lbl), value in samples.items() if key == name and wanted <= lbl)


def predict_rest(server: str, rows: list[float], model: str = "half_plus_two") -> requests.Response:
    body = json.dumps({"instances": [[x] for x in rows]})
    return requests.post(server + f"/v1/models/{model}:predict", data=body, timeout=60)


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
    # Ours: the version and signature that ran; each version's state and its memory at load.
    version = str(int(os.path.basename(version_dir)))
    ran = dict(model_name="half_plus_two", version=version, signature="serving_default", API="predict",
               entrypoint="REST")
    assert sample(after, count, status="OK", **ran) - sample(before, count, status="OK", **ran) == 1
    assert sample(after, latency + "_count", **ran) - sample(before, latency + "_count", **ran) == 1
    assert sample(after, count, model_name="half_plus_two", version="", API="", status="OK") - \
        sample(before, count, model_name="half_plus_two", version="", API="", status="OK") == 1
    assert sample(after, ":appliance:serving:model_state", model_name="half_plus_two", version=version,
                  state="AVAILABLE") == 1
    assert sample(after, ":appliance:serving:model_resident_bytes", model_name="half_plus_two",
                  version=version) > 0


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


# ------------------------------------------------------------------ --model_settings_file


def log_count(text: str) -> int:
    return LOG.read_text(errors="replace").count(text)


def write_settings(root: Path, settings: dict | str, logged: str) -> None:
    """Write the settings file; return once the model server logged ``logged`` once more."""
    before = log_count(logged)
    (root / "model-settings.json").write_text(settings if isinstance(settings, str) else json.dumps(settings))
    wait_until(lambda: log_count(logged) > before, timeout=30, what=f"the model server to log {logged!r}")


def test_auto_platform_serves_each_version_with_its_runtime(server: str) -> None:
    status = requests.get(server + "/v1/models/mixed", timeout=10).json()
    rows = {row["version"]: row for row in status["model_version_status"]}
    assert [rows[v]["state"] for v in ("1", "2", "3")] == ["AVAILABLE", "AVAILABLE", "END"]
    assert rows["3"]["status"]["error_code"] == "NOT_FOUND"
    assert rows["3"]["status"]["error_message"].startswith("Could not find a model at ")
    assert "(model_platform auto): a version directory holds saved_model.pb" in rows["3"]["status"]["error_message"]
    before, _ = metrics(server)
    for version, bias in (("1", 3.0), ("2", 2.0)):
        r = requests.post(server + f"/v1/models/mixed/versions/{version}:predict",
                          data=json.dumps({"instances": [[1.0], [3.0]]}), timeout=30)
        assert r.json() == {"predictions": [[0.5 + bias], [1.5 + bias]]}, r.text
        metadata = requests.get(server + f"/v1/models/mixed/versions/{version}/metadata", timeout=10).json()
        assert metadata["model_spec"]["version"] == version
        assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    after, _ = metrics(server)
    for runtime in ("ONNX", "TF1"):
        labels = dict(model_name="mixed", API="Predict", runtime=runtime)
        assert sample(after, ":tensorflow:serving:runtime_latency_count", **labels) - \
            sample(before, ":tensorflow:serving:runtime_latency_count", **labels) == 1
    # batching null overrides the global --enable_batching: nothing of mixed went through a batch.
    assert sample(after, ":tensorflow:serving:batching_session:wrapped_run_count") == \
        sample(before, ":tensorflow:serving:batching_session:wrapped_run_count")


def predict_batched(server: str, count: int) -> list[list[float]]:
    """``count`` one-row predicts on ``batched`` at once; every answer checked."""
    def one(i: int) -> list[float]:
        r = predict_rest(server, [float(i)], "batched")
        assert r.status_code == 200, r.text
        return r.json()["predictions"]
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    assert results == [[[0.5 * i + 1.0]] for i in range(count)]
    return results


def test_a_model_batched_by_its_settings(server: str) -> None:
    before, _ = metrics(server)
    predict_batched(server, SMALL_BATCH)
    after, _ = metrics(server)
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    assert (sample(after, name + "_count") - sample(before, name + "_count"),
            sample(after, name + "_sum") - sample(before, name + "_sum")) == (1, SMALL_BATCH)
    queuing = ":tensorflow:serving:batching_session:queuing_latency_count"
    assert sample(after, queuing, thread_pool_name="batched_batch_threads") - \
        sample(before, queuing, thread_pool_name="batched_batch_threads") == SMALL_BATCH


def test_batching_switched_live_fails_no_request(root: Path, server: str) -> None:
    """Clients keep 2 batches' worth of requests in flight while batching goes off and on again."""
    stop = threading.Event()
    done: list[int] = []
    failures: list[str] = []

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                r = predict_rest(server, [float(i)], "batched")
                if r.status_code != 200 or r.json() != {"predictions": [[0.5 * i + 1.0]]}:
                    failures.append(f"{r.status_code} {r.text}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            done.append(i)

    def more_done(count: int) -> None:
        target = len(done) + count
        wait_until(lambda: len(done) >= target or failures, timeout=60, what=f"{count} more answers")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(2 * SMALL_BATCH)]
    for thread in threads:
        thread.start()
    try:
        more_done(4 * SMALL_BATCH)
        write_settings(root, {"models": {**SETTINGS["models"], "batched": {"batching": None}}},
                       "Model batched version at")
        more_done(4 * SMALL_BATCH)
        quick = {**BATCHED, "batch_timeout_micros": 1000}
        write_settings(root, {"models": {**SETTINGS["models"], "batched": {"batching": quick}}},
                       f"batching on (max_batch_size {SMALL_BATCH})")
        more_done(4 * SMALL_BATCH)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    write_settings(root, SETTINGS, f"batching on (max_batch_size {SMALL_BATCH})")
    predict_batched(server, SMALL_BATCH)      # the 30 s timeout again: only a full batch runs


def test_metrics_off_for_one_model(root: Path, server: str) -> None:
    def counts() -> tuple[float, float, float]:
        samples, _ = metrics(server)
        return (sample(samples, ":tensorflow:serving:request_count", model_name="muted", status="OK"),
                sample(samples, ":tensorflow:serving:runtime_latency_count", model_name="muted", API="Predict",
                       runtime="ONNX"),
                sample(samples, ":tensorflow:serving:request_count", model_name="half_plus_two", status="OK"))

    before = counts()
    assert predict_rest(server, [2.0], "muted").json() == {"predictions": [[3.0]]}
    assert predict_rest(server, [1.0] * BATCH).status_code == 200
    assert counts() == (before[0], before[1], before[2] + 1)   # muted: not recorded; the others are
    # An invalid file on re-read keeps the settings in force: muted stays muted.
    write_settings(root, '{"models": {"muted": {"metrics": "no"}}}', "keeping the current model settings")
    assert predict_rest(server, [2.0], "muted").status_code == 200
    assert counts()[:2] == before[:2]
    write_settings(root, {"models": {**SETTINGS["models"], "muted": {"batching": None, "metrics": True}}},
                   "Model muted: settings changed")
    assert predict_rest(server, [2.0], "muted").status_code == 200
    assert counts()[:2] == (before[0] + 1, before[1] + 1)
    write_settings(root, SETTINGS, "Model muted: settings changed")


def test_a_changed_runtime_option_loads_the_versions_again(root: Path, ports: tuple[str, int, str]) -> None:
    """The old instance serves until the new one is ready; a load the runtime refuses (ONNX in
    bf16) leaves the old one serving."""
    server = ports[0]
    version_dir = str(root / "models" / "muted" / "1")
    attempts = ":tensorflow:cc:saved_model:load_attempt_count"
    before, _ = metrics(server)
    muted = SETTINGS["models"]["muted"]
    write_settings(root, {"models": {**SETTINGS["models"], "muted": {**muted, "openvino": {"streams": 2}}}},
                   "Servable {name: muted version: 1} now serves with its new settings")
    after, _ = metrics(server)
    assert sample(after, attempts, model_path=version_dir, status="success") - \
        sample(before, attempts, model_path=version_dir, status="success") == 1
    assert predict_rest(server, [2.0], "muted").json() == {"predictions": [[3.0]]}
    write_settings(root, {"models": {**SETTINGS["models"], "muted": {**muted, "precision": "bf16"}}},
                   "Loading servable {name: muted version: 1} with its new settings failed: INVALID_ARGUMENT: "
                   "precision bf16 is not supported by the onnx runtime (supported: f32); it keeps serving")
    assert predict_rest(server, [2.0], "muted").json() == {"predictions": [[3.0]]}
    status = requests.get(server + "/v1/models/muted", timeout=10).json()["model_version_status"]
    assert [(row["version"], row["state"]) for row in status] == [("1", "AVAILABLE")]
    write_settings(root, SETTINGS, "Servable {name: muted version: 1} now serves with its new settings")
    assert predict_rest(server, [2.0], "muted").json() == {"predictions": [[3.0]]}
