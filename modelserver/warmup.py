"""Model warmup: replay ``<version>/assets.extra/tf_serving_warmup_requests`` before serving.

TF Serving (``saved_model_warmup_util.cc``) reads the file as a TFRecord of ``PredictionLog``s
and replays each logged request ``num_request_iterations`` times inside the load, so the first
real request does not pay for lazy initialisation. The version only becomes AVAILABLE after
warmup, and any warmup error fails the load (the previous version keeps serving). Requests go
through :mod:`modelserver.grpc_inference`, the code live gRPC requests take.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterator

from modelserver import grpc_inference
from modelserver.core.status import Code, ServingError, invalid_argument
from modelserver.runtimes import LoadedModel

log = logging.getLogger(__name__)

ASSETS_EXTRA = "assets.extra"
REQUESTS_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000

# PredictionLog.log_type -> the runner of its logged ``request``
RUNNERS: dict[str, Callable[[LoadedModel, int, Any], Any]] = {
    "predict_log": grpc_inference.predict,
    "classify_log": grpc_inference.classify,
    "regress_log": grpc_inference.regress,
    "multi_inference_log": grpc_inference.multi_inference,
}


def warmup_path(version_dir: str) -> str:
    return os.path.join(version_dir, ASSETS_EXTRA, REQUESTS_FILE)


def _records(path: str) -> Any:
    import tensorflow as tf

    try:
        yield from tf.compat.v1.io.tf_record_iterator(path)
    except tf.errors.OpError as exc:
        raise ServingError(Code(exc.error_code), exc.message) from None


def import_protos() -> None:
    """Import what a warmup needs (TF Serving's protos, and so TensorFlow) in the calling thread."""
    from tensorflow_serving.apis import prediction_log_pb2  # noqa: F401


def read_records(version_dir: str) -> Iterator[tuple[str, Any]]:
    """The version's warmup records as (log type, logged request); none without a file. A record
    that does not parse, a log type without a runner, or too many records raise the status TF
    Serving fails the load with."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(version_dir)
    if not os.path.isfile(path):
        return
    count = 0
    for record in _records(path):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(record)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError, a plain Exception subclass
            raise invalid_argument(f"Failed to parse warmup record: {record!r} from {path}") from None
        kind = entry.WhichOneof("log_type")
        if (kind or "") not in RUNNERS:
            number = entry.DESCRIPTOR.fields_by_name[kind].number if kind else 0
            raise ServingError(Code.UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")
        count += 1
        if count > MAX_RECORDS:
            raise invalid_argument(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
        yield kind, getattr(entry, kind).request


def run_warmup(model: LoadedModel, version: int, version_dir: str, iterations: int = 1) -> int:
    """Replay the version's warmup records; returns how many were read (0 without a file)."""
    path = warmup_path(version_dir)
    if not os.path.isfile(path):
        log.info("No warmup data file found at %s", path)
        return 0
    started = time.monotonic()
    count = 0
    for kind, request in read_records(version_dir):
        for _ in range(max(iterations, 1)):
            RUNNERS[kind](model, version, request)
        count += 1
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
             "Elapsed time (microseconds): %d.", path, count, int((time.monotonic() - started) * 1e6))
    return count
