"""TF Serving's metrics (``tfserving-api.md`` §5), recorded by the request paths and the loader.

Names, label names, kinds and buckets are TF Serving's own (``servables/tensorflow/util.cc``,
``batching/batching_session.cc``, TF's ``cc/saved_model/loader.cc``), so existing dashboards
and alerts built on ``tensorflow_model_server`` keep working.

TF collects metrics always and ``--monitoring_config_file`` only decides whether the page is
served; here nothing else can read them, so requests are counted only when the page is served
(:func:`collect`; recording one costs ~1.5 us, measured with timeit). Load and batching
metrics are always kept. Unlike TF, a failed request for a model name the server
does not serve is counted under ``model_name=""`` (TF's label for a request that named no model):
TF makes each such name a series for good, so a client could grow the page and the memory
without limit (20k names cost +81 MB).

A model whose ``--model_settings_file`` entry says ``"metrics": false`` is muted (:func:`mute`):
its requests, examples, runtime and batching are not recorded, at once and until it says true
again; its loads and available versions still are (they are not requests).

Additions of ours:

* Labels ``version`` and ``signature`` (the version and signature that ran, ``""`` when the request
  failed before it ran one, or ran none: status and metadata calls) on ``request_count``,
  ``request_latency`` and ``runtime_latency``, and ``API`` and ``entrypoint`` on ``request_count``
  too (TF's names and its own labels are all there: queries that select or sum by TF's labels
  keep working). The model run that knows the version and signature is told where to leave them
  by a context variable the request sets at entry (:func:`request_started`), carried into the
  inference pool by :class:`modelserver.features.InferencePool`; about 0.5 us per request. The
  series of a version leave the page once it is unloaded (:func:`forget_unloaded`).
* Computed at scrape time from the manager (zero cost per request):
  ``:appliance:serving:available_versions{model_name}`` (versions AVAILABLE),
  ``:appliance:serving:model_state{model_name,version,state}`` (1 per version, its state:
  LOADING, AVAILABLE, UNLOADING, END), and
  ``:appliance:serving:model_resident_bytes{model_name,version}``: how much the server's resident
  memory grew while the version loaded (RSS after minus before, warmup excluded). That is the
  honest measure a Python process has of one model's memory: it includes what the runtime
  allocated for it and nothing else *unless* another load ran at the same moment (then both
  count the overlap) or the allocator reused memory freed earlier (then it is low). Memory is
  not always returned to the system at unload (tensorflow/serving #1215), so the process total
  (``appliance_process_resident_memory_bytes``) is the figure to alert on.
"""

from __future__ import annotations

import contextvars
import logging
import os
import resource
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from modelserver.metrics import Counter, Gauge, Histogram, Registry, exponential_buckets
from modelserver.core.status import Code
from modelserver.runtimes.base import LoadedModel, Signature

if TYPE_CHECKING:
    from modelserver.manager import ModelManager

log = logging.getLogger(__name__)

REGISTRY = Registry()
_LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)       # µs, ~20 minutes
_BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 15)       # 1, 2, 4, ... 16384

REQUEST_COUNT: Counter = REGISTRY.add(Counter(
    "/tensorflow/serving/request_count", "The total number of requests.",
    ["model_name", "version", "signature", "API", "entrypoint", "status"]))
REQUEST_LATENCY: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ["model_name", "version", "signature", "API", "entrypoint"], _LATENCY_BUCKETS))
RUNTIME_LATENCY: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/runtime_latency", "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ["model_name", "version", "signature", "API", "runtime"], _LATENCY_BUCKETS))
EXAMPLE_COUNTS: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/request_example_counts", "The number of tensorflow.Examples per request.", ["model"],
    _BATCH_SIZE_BUCKETS))
EXAMPLE_COUNT_TOTAL: Counter = REGISTRY.add(Counter(
    "/tensorflow/serving/request_example_count_total", "The total number of tensorflow.Examples.", ["model"]))
LOAD_ATTEMPT_COUNT: Counter = REGISTRY.add(Counter(
    "/tensorflow/cc/saved_model/load_attempt_count", "The number of times a SavedModel was successfully loaded.",
    ["model_path", "status"]))
LOAD_LATENCY: Counter = REGISTRY.add(Counter(
    "/tensorflow/cc/saved_model/load_latency",
    "Latency in microseconds for SavedModels that were successfully loaded.", ["model_path"]))
QUEUING_LATENCY: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/batching_session/queuing_latency",
    "Distribution of wall time spent (in microseconds) in queuing", ["thread_pool_name"],
    exponential_buckets(100, 1.2, 52)))
WRAPPED_RUN_COUNT: Counter = REGISTRY.add(Counter(
    "/tensorflow/serving/batching_session/wrapped_run_count", "Total count of run calls on the wrapped session",
    []))
INPUT_BATCH_SIZE: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/batching_session/input_batch_size", "Input batch size.", [], _BATCH_SIZE_BUCKETS))
PROCESSED_BATCH_SIZE: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/batching_session/processed_batch_size", "Processed batch size.", [], _BATCH_SIZE_BUCKETS))
PADDING_SIZE: Histogram = REGISTRY.add(Histogram(
    "/tensorflow/serving/batching_session/padding_size", "Tracks the padding size.", ["execution_batch_size"],
    _BATCH_SIZE_BUCKETS))
AVAILABLE_VERSIONS: Gauge = REGISTRY.add(Gauge(
    "/appliance/serving/available_versions", "Versions of a model that are AVAILABLE.", ["model_name"]))
MODEL_STATE: Gauge = REGISTRY.add(Gauge(
    "/appliance/serving/model_state", "1 for each version of a model, labelled with its state.",
    ["model_name", "version", "state"]))
MODEL_RESIDENT_BYTES: Gauge = REGISTRY.add(Gauge(
    "/appliance/serving/model_resident_bytes",
    "Growth of the server's resident memory while the version loaded (an estimate).",
    ["model_name", "version"]))

# The runtime label TF Serving uses for a SavedModel session, and ours for other runtimes.
RUNTIME_LABELS = {"tensorflow": "TF1", "onnx": "ONNX", "openvino": "OpenVINO"}
_METHOD_API = {"tensorflow/serving/classify": "Classify", "tensorflow/serving/regress": "Regress"}


_collecting = True
_muted: frozenset[str] = frozenset()
_serves: Callable[[str], bool] = lambda name: True
_PAGE = os.sysconf("SC_PAGE_SIZE")


class RequestSlot:
    """Where the model run of one request leaves the version and signature it ran."""

    __slots__ = ("version", "signature")

    def __init__(self) -> None:
        self.version = ""
        self.signature = ""


_REQUEST: contextvars.ContextVar[RequestSlot | None] = contextvars.ContextVar("request", default=None)


#: When the last request came in and when the last one ended (``time.perf_counter``, REST and
#: gRPC, every model): :func:`idle_seconds`, the moments the shadow (modelserver/shadow.py) uses.
_activity = [0.0, 0.0]


#: Called once, at the next request's end (and then forgotten): the shadow's copy that waits for
#: a busy server (:func:`when_request_ends`). None nearly always: one load and test per request.
_at_request_end: Callable[[], None] | None = None


def when_request_ends(callback: Callable[[], None]) -> None:
    """Call ``callback`` once, when the next request ends (in the thread that ends it)."""
    global _at_request_end
    _at_request_end = callback


def request_started() -> RequestSlot:
    """Called at a request's entry: the slot its model run fills in (see the module doc)."""
    slot = RequestSlot()
    _REQUEST.set(slot)
    _activity[0] = time.perf_counter()
    return slot


def idle_seconds() -> float:
    """How long the server has had no request to answer: 0 while the one that came in last runs.
    A heuristic (one of several overlapping requests may still run; a request still in the
    socket's buffer is not seen), cheap enough for the request path: two stores per request."""
    started, ended = _activity
    return 0.0 if ended < started else time.perf_counter() - ended


def collect(enabled: bool) -> None:
    """Whether requests are recorded (False when no Prometheus page serves them)."""
    global _collecting
    _collecting = enabled


def mute(model_names: frozenset[str]) -> None:
    """Record nothing of these models' requests (their settings say ``"metrics": false``)."""
    global _muted
    _muted = model_names


def recording(model_name: str | None) -> bool:
    """Whether a request of ``model_name`` is recorded now (None: a request of no one model)."""
    return _collecting and model_name not in _muted


def micros_since(start: float) -> int:
    return int((time.perf_counter() - start) * 1_000_000)


def record_request(model_name: str, api: str, entrypoint: str, code: Code, start: float,
                   slot: RequestSlot | None = None) -> None:
    """One finished request: count it by status; its latency only when it succeeded (as TF does).
    ``slot``: what :func:`request_started` returned for it (the version and signature it ran)."""
    global _at_request_end
    _activity[1] = time.perf_counter()
    callback = _at_request_end
    if callback is not None:
        _at_request_end = None
        callback()
    if not _collecting or model_name in _muted:
        return
    if code is not Code.OK and not _serves(model_name):
        model_name = ""
    version, signature = (slot.version, slot.signature) if slot is not None else ("", "")
    REQUEST_COUNT.increment(model_name, version, signature, api, entrypoint, code.name)
    if code is Code.OK:
        REQUEST_LATENCY.observe(model_name, version, signature, api, entrypoint, value=micros_since(start))


def record_examples(model_name: str, count: int) -> None:
    """Classify/Regress/MultiInference: the number of tf.Examples in one request."""
    if not _collecting or model_name in _muted:
        return
    EXAMPLE_COUNTS.observe(model_name, value=count)
    EXAMPLE_COUNT_TOTAL.increment(model_name, by=count)


def record_load(model_path: str, ok: bool, start: float) -> None:
    """One load attempt of one version directory (``loader.cc``: ``success``/``fail``)."""
    LOAD_ATTEMPT_COUNT.increment(model_path, "success" if ok else "fail")
    if ok:
        LOAD_LATENCY.increment(model_path, by=micros_since(start))


def watch_manager(manager: ModelManager) -> None:
    """Compute the available-versions gauge from ``manager`` at each scrape; label failed requests
    with the names of the models it serves only; forget unloaded versions' series at each scrape."""
    global _serves, _before_page

    def versions() -> Iterable[tuple[tuple[str, ...], int]]:
        return [((name, ), len(model.available)) for name, model in sorted(manager.models.items())]

    def states() -> Iterable[tuple[tuple[str, ...], int]]:
        return [((name, str(v.version), v.state), 1) for name, model in sorted(manager.models.items())
                for v in sorted(list(model.versions.values()), key=lambda v: v.version)]

    def resident() -> Iterable[tuple[tuple[str, ...], int]]:
        return [((name, str(v.version)), v.model.resident_bytes)
                for name, model in sorted(manager.models.items())
                for v in sorted(list(model.available.values()), key=lambda v: v.version)
                if isinstance(v.model, InstrumentedModel)]
    AVAILABLE_VERSIONS.collect = versions
    MODEL_STATE.collect = states
    MODEL_RESIDENT_BYTES.collect = resident
    _serves = lambda name: name in manager.models  # noqa: E731
    _before_page = lambda: forget_unloaded(manager)  # noqa: E731


def forget_unloaded(manager: ModelManager) -> None:
    """Drop the series of versions the server no longer has (unloaded, or gone with their
    model): with a new version every day, TF's page grows without end (tensorflow/serving
    #1928). Counts of such a version between the last scrape and its unload are lost."""
    live = {(name, str(v.version)) for name, model in list(manager.models.items())
            for v in list(model.versions.values()) if v.state != "END"}
    for metric in (REQUEST_COUNT, REQUEST_LATENCY, RUNTIME_LATENCY):
        metric.forget(lambda values: values[1] != "" and (values[0], values[1]) not in live)


def resident_bytes() -> int:
    """The server's resident memory now (``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE


_before_page: Callable[[], None] = lambda: None


def prometheus_page() -> bytes:
    _before_page()
    return REGISTRY.prometheus_text().encode("utf-8")


class InstrumentedModel(LoadedModel):
    """Times every run of a loaded model for ``runtime_latency``; everything else is delegated.

    The ``API`` label comes from the signature's method name (prepared once per signature), which
    is what the run is for unless a TF2 model declares every signature as predict.
    """

    def __init__(self, inner: LoadedModel, model_name: str, platform: str, version: str = "",
                 resident: int = 0) -> None:
        super().__init__(inner.path, inner.signatures)
        self.inner = inner
        self.model_name = model_name
        self.version = version
        self.resident_bytes = resident   # RSS growth during its load (see the module doc)
        self.waits_for_batch = inner.waits_for_batch
        self.run_cost = inner.run_cost  # shared: the runtime may run cheap graphs differently
        runtime = RUNTIME_LABELS.get(platform, platform)
        self._cells = {name: RUNTIME_LATENCY.cell(model_name, version, name,
                                                  _METHOD_API.get(sig.method_name, "Predict"), runtime)
                       for name, sig in inner.signatures.items()} if _collecting else {}

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = resource.getrusage(resource.RUSAGE_THREAD)
        start = time.perf_counter()
        result = self.inner.run(signature_name, inputs)
        micros = micros_since(start)
        after = resource.getrusage(resource.RUSAGE_THREAD)
        self.run_cost.observe_run(micros, ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) * 1e6,
                                  after.ru_nvcsw != before.ru_nvcsw)
        cell = self._cells.get(signature_name)
        if cell is not None and self.model_name not in _muted:
            cell.add(micros)
        slot = _REQUEST.get()
        if slot is not None:
            slot.version, slot.signature = self.version, signature_name
        return result

    def swap_inner(self, inner: LoadedModel) -> None:
        """Run through ``inner`` from now on (the same model, batched differently); a run that
        started keeps the one it had. Whether a run may wait for its batch is raised before the
        swap and lowered after it, so no request runs into a batch queue on the event loop."""
        self.waits_for_batch = self.waits_for_batch or inner.waits_for_batch
        self.inner = inner
        self.waits_for_batch = inner.waits_for_batch

    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner._run(signature, inputs)

    def signature_def_map(self) -> Any:
        return self.inner.signature_def_map()

    def close(self) -> None:
        self.inner.close()
