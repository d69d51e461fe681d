"""Monitoring and batching config files, the Prometheus text format, and the batch scheduler in-process."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from modelserver.config_protos import (BatchingSettings, read_batching_parameters,
                                                 read_monitoring_config)
from modelserver.metrics import Counter, Histogram, Registry, exponential_buckets
from modelserver.model_config import ConfigFileError
from modelserver.core.status import Code, ServingError
from tests.conftest import TFS_TESTDATA


def test_monitoring_config_forms(tmp_path) -> None:
    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config {\n  enable: true,\n  path: "/metrics"\n}\n')
    assert read_monitoring_config(str(path)).prometheus_path == "/metrics"
    path.write_text("prometheus_config: { enable: true }")
    assert read_monitoring_config(str(path)).prometheus_path == "/monitoring/prometheus/metrics"
    path.write_text("prometheus_config { enable: false path: '/x' }")
    assert read_monitoring_config(str(path)).prometheus_path is None
    path.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ConfigFileError) as info:
        read_monitoring_config(str(path))
    assert info.value.message_type == "tensorflow.serving.MonitoringConfig"
    assert 'no field named "enabled"' in info.value.details
    assert str(info.value) == f"Invalid protobuf file: '{path}'"


def test_batching_parameters(tmp_path) -> None:
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
                    "max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n"
                    "thread_pool_name { value: 'pool' }\nallowed_batch_sizes: 64\nallowed_batch_sizes: 128\n"
                    "pad_variable_length_inputs: true\n")
    assert read_batching_parameters(str(path)) == BatchingSettings(
        max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1000000, num_batch_threads=8,
        thread_pool_name="pool", allowed_batch_sizes=(64, 128), pad_variable_length_inputs=True)
    path.write_text("")
    assert read_batching_parameters(str(path)) == BatchingSettings()  # TF's scheduler defaults
    path.write_text("max_batch_size { value: 100 }\nallowed_batch_sizes: 10\nallowed_batch_sizes: 50\n")
    with pytest.raises(ServingError) as info:
        read_batching_parameters(str(path))
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == ("Last entry in allowed_batch_sizes must match max_batch_size; last entry was 50; "
                                  "expected 100")
    path.write_text("max_batch_size: 100")   # a wrapper message, not a scalar
    with pytest.raises(ConfigFileError):
        read_batching_parameters(str(path))


def test_batching_flags(tmp_path) -> None:
    from modelserver.features import ServerFeatures
    from modelserver.flags import parse_flags

    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 16 }")
    with pytest.raises(ServingError) as info:
        ServerFeatures.from_options(parse_flags([f"--batching_parameters_file={path}"]))
    assert info.value.message == ("server_options.batching_parameters_file is set without setting "
                                  "server_options.enable_batching to true.")
    features = ServerFeatures.from_options(parse_flags(["--enable_batching"]))
    assert features.batching.thread_pool_name == "model_server_batch_threads" and features.monitoring.prometheus_path \
        is None
    features = ServerFeatures.from_options(parse_flags(["--enable_batching", f"--batching_parameters_file={path}"]))
    assert features.batching.max_batch_size == 16
    assert features.executor_threads(2) == 2 + 32   # room for callers waiting in batch queues


@pytest.mark.skipif(not TFS_TESTDATA.is_dir(), reason="TF Serving testdata not found")
def test_tf_serving_testdata_files_parse() -> None:
    assert read_monitoring_config(str(TFS_TESTDATA / "monitoring_config.txt")).prometheus_path == \
        "/monitoring/prometheus/metrics"
    settings = read_batching_parameters(str(TFS_TESTDATA / "batching_config.txt"))
    assert (settings.max_batch_size, settings.batch_timeout_micros, settings.max_enqueued_batches,
            settings.num_batch_threads) == (128, 0, 1000000, 8)


def test_prometheus_text() -> None:
    registry = Registry()
    counter = registry.add(Counter("/tensorflow/serving/request_count", "", ["model_name", "status"]))
    histogram = registry.add(Histogram("/x/latency", "", ["model-name"], exponential_buckets(10, 1.8, 3)))
    counter.increment('we"ird\\', "OK")
    counter.increment('we"ird\\', "OK", by=2)
    histogram.observe("m", value=5)
    histogram.observe("m", value=18)   # a value equal to a limit goes to the next bucket, as in TF
    histogram.observe("m", value=1e9)
    assert registry.prometheus_text() == (
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="we\\"ird\\\\",status="OK"} 3\n'
        "# TYPE :x:latency histogram\n"
        ':x:latency_bucket{model_name="m",le="10"} 1\n'
        ':x:latency_bucket{model_name="m",le="18"} 1\n'
        ':x:latency_bucket{model_name="m",le="32.4"} 2\n'
        ':x:latency_bucket{model_name="m",le="+Inf"} 3\n'
        ':x:latency_sum{model_name="m"} 1e+09\n'
        ':x:latency_count{model_name="m"} 3\n')
    assert exponential_buckets(10, 1.8, 33)[-1] == pytest.approx(10 * 1.8 ** 32)


# ---------------------------------------------------------------------------- the batch scheduler


@pytest.fixture
def onnx_model(tmp_path_factory: pytest.TempPathFactory):
    """A fresh model per test: closing a batching wrapper closes the model it wraps."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from modelserver.runtimes import LoadOptions, get_runtime
    from tests import onnxmodels

    paths = onnxmodels.build(tmp_path_factory.mktemp("onnx"), {"m": {1: onnxmodels.half_plus(2.0, ["batch", "n"])}})
    return get_runtime("onnx").load(str(paths["m"] / "1"), LoadOptions())


def _concurrently(model, inputs: list[np.ndarray]) -> list:
    results: list = [None] * len(inputs)

    def call(i: int) -> None:
        try:
            results[i] = model.run("serving_default", {"x": inputs[i]})["y"]
        except ServingError as err:
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_batches_group_calls_by_shape(onnx_model) -> None:
    """Calls with different trailing dims share a batch but run as separate groups; all get their rows."""
    from modelserver import monitoring
    from modelserver.batching import BatchScheduler

    scheduler = BatchScheduler(BatchingSettings(max_batch_size=6, batch_timeout_micros=60_000_000,
                                                max_enqueued_batches=1, num_batch_threads=1))
    model = scheduler.wrap(onnx_model)
    inputs = [np.full((1, 2), 1.0, np.float32), np.full((2, 2), 2.0, np.float32), np.full((1, 3), 3.0, np.float32),
              np.full((2, 3), 4.0, np.float32)]   # 6 rows: the batch is full only when all four are in
    runs = monitoring.WRAPPED_RUN_COUNT.value()
    results = _concurrently(model, inputs)
    for given, got in zip(inputs, results):
        np.testing.assert_array_equal(got, given * 0.5 + 2.0)
    assert monitoring.WRAPPED_RUN_COUNT.value() - runs == 2     # one merged run per shape group
    model.close()


def test_batching_with_allowed_sizes_pads_and_trims(onnx_model) -> None:
    from modelserver import monitoring
    from modelserver.batching import BatchScheduler

    scheduler = BatchScheduler(BatchingSettings(max_batch_size=8, batch_timeout_micros=0, max_enqueued_batches=4,
                                                num_batch_threads=1, allowed_batch_sizes=(4, 8)))
    model = scheduler.wrap(onnx_model)
    padded = monitoring.PADDING_SIZE.snapshot("4")[1]
    got = model.run("serving_default", {"x": np.arange(3, dtype=np.float32).reshape(3, 1)})["y"]
    np.testing.assert_array_equal(got, np.array([[2.0], [2.5], [3.0]], np.float32))
    assert monitoring.PADDING_SIZE.snapshot("4")[1] - padded == 1   # 3 rows ran as an allowed batch of 4
    model.close()
    # Closed: calls bypass the (drained) queues and reach the closed runtime, which refuses them.
    with pytest.raises(ServingError):
        model.run("serving_default", {"x": np.zeros((1, 1), np.float32)})


def test_request_count_names_only_served_models() -> None:
    """A failed request for a name the server does not serve counts under model_name="" (bounded
    labels); with no Prometheus page nothing is recorded."""
    from modelserver import monitoring
    from modelserver.manager import ModelConfig, ModelManager
    from modelserver.runtimes.base import LoadOptions

    manager = ModelManager([ModelConfig(name="served", base_path="/nonexistent")], LoadOptions(), 1.0, 1)
    count = monitoring.REQUEST_COUNT
    previous = monitoring._serves
    monitoring.watch_manager(manager)

    def value(name: str, status: str, version: str = "", signature: str = "") -> int:
        return count.value(name, version, signature, "predict", "REST", status)
    try:
        before = value("", "NOT_FOUND"), value("served", "NOT_FOUND")
        for name in ("served", "unknown-1", "unknown-2"):
            monitoring.record_request(name, "predict", "REST", Code.NOT_FOUND, 0.0)
        assert (value("", "NOT_FOUND"), value("served", "NOT_FOUND")) == (before[0] + 2, before[1] + 1)
        assert not [key for key in count._cells if key[0] == "unknown-1"]
        # The version and signature the model run left in the request's slot label the request.
        slot = monitoring.request_started()
        slot.version, slot.signature = "3", "serving_default"
        monitoring.record_request("served", "predict", "REST", Code.OK, 0.0, slot)
        assert value("served", "OK", "3", "serving_default") == 1
        monitoring.collect(False)
        monitoring.record_request("served", "predict", "REST", Code.OK, 0.0)
        monitoring.record_request("unknown-3", "predict", "REST", Code.NOT_FOUND, 0.0)
        assert value("served", "OK") == 0 and value("", "NOT_FOUND") == before[0] + 2
    finally:
        monitoring.collect(True)
        monitoring._serves = previous


def test_a_pool_run_labels_its_request_with_version_and_signature(onnx_model) -> None:
    """The inference pool carries the request's context: the run there fills in its slot."""
    from modelserver import monitoring
    from modelserver.features import InferencePool

    model = monitoring.InstrumentedModel(onnx_model, "m", "onnx", "7", resident=1234)
    slot = monitoring.request_started()
    with InferencePool(1) as pool:
        pool.submit(model.run, "serving_default", {"x": np.zeros((1, 1), np.float32)}).result()
    assert (slot.version, slot.signature, model.resident_bytes) == ("7", "serving_default", 1234)


def test_an_unloaded_version_leaves_the_page() -> None:
    """Series of versions the server no longer has are dropped at the next scrape (a version a
    day must not grow the page for ever); failed requests of no version stay."""
    from modelserver import monitoring
    from modelserver.manager import ModelConfig, ModelManager, VersionState
    from modelserver.runtimes.base import LoadOptions

    manager = ModelManager([ModelConfig(name="kept", base_path="/nonexistent")], LoadOptions(), 1.0, 1)
    model = manager.models["kept"]
    model.versions = {1: VersionState(1, "END"), 2: VersionState(2, "AVAILABLE")}
    for version in ("1", "2", ""):
        monitoring.REQUEST_COUNT.increment("kept", version, "", "predict", "REST", "OK")
    monitoring.forget_unloaded(manager)
    left = {key[1] for key in monitoring.REQUEST_COUNT._cells if key[0] == "kept"}
    assert left == {"2", ""}


def test_a_newline_in_a_label_value_is_escaped() -> None:
    """A signature or path name comes from a model's files: a newline in it must not end the
    sample's line (the node's page, the dashboard and Prometheus would all refuse the page)."""
    from appliance import promtext

    registry = Registry()
    counter = registry.add(Counter("/tensorflow/serving/request_count", "", ["signature", "status"]))
    counter.increment('two\nlines "quoted" \\', "OK")
    [sample] = promtext.parse(registry.prometheus_text())
    assert sample.labels == {"signature": 'two\nlines "quoted" \\', "status": "OK"}


def test_idle_seconds_is_zero_while_the_latest_request_runs() -> None:
    import time

    from modelserver import monitoring

    slot = monitoring.request_started()
    assert monitoring.idle_seconds() == 0.0       # the shadow's copies wait
    monitoring.record_request("idle-test", "predict", "REST", Code.OK, time.perf_counter(), slot)
    assert monitoring.idle_seconds() > 0.0
