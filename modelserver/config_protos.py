"""``MonitoringConfig`` and ``BatchingParameters``: TF Serving's text config files, parsed as protos.

The ``tensorflow-serving-api`` wheel ships neither ``monitoring_config_pb2`` nor
``session_bundle_config_pb2``, so the two messages are declared here from their field names and
numbers (``tfserving-api.md`` §3.2/§3.3) and built with ``descriptor_pb2`` + ``message_factory``
on first use. Parsing then goes through protobuf's own ``text_format``: every spelling TF
Serving accepts (``prometheus_config: { ... }``, ``max_batch_size { value: 128 }``, commas
between fields) is accepted here with the same meaning, and a typo fails as it does there.

The messages live in a private descriptor pool, so they can never clash with a real
``tensorflow.serving`` proto registered by another import.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from modelserver.cpus import usable_cpus
from modelserver.model_config import ConfigFileError
from modelserver.core.status import Code, ServingError

_PACKAGE = "tensorflow.serving"


@functools.lru_cache(maxsize=1)
def _classes() -> dict[str, type]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(name="appliance/tfs_config.proto", package=_PACKAGE,
                                               syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label, json_name=field_name)
            if type_name:
                field.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("PrometheusConfig", [("enable", 1, F.TYPE_BOOL, opt, ""), ("path", 2, F.TYPE_STRING, opt, "")])
    message("MonitoringConfig", [("prometheus_config", 1, F.TYPE_MESSAGE, opt, f".{_PACKAGE}.PrometheusConfig")])
    int64, string, boolean = ".google.protobuf.Int64Value", ".google.protobuf.StringValue", ".google.protobuf.BoolValue"
    message("BatchingParameters", [
        ("max_batch_size", 1, F.TYPE_MESSAGE, opt, int64),
        ("batch_timeout_micros", 2, F.TYPE_MESSAGE, opt, int64),
        ("max_enqueued_batches", 3, F.TYPE_MESSAGE, opt, int64),
        ("num_batch_threads", 4, F.TYPE_MESSAGE, opt, int64),
        ("thread_pool_name", 5, F.TYPE_MESSAGE, opt, string),
        ("allowed_batch_sizes", 6, F.TYPE_INT64, rep, ""),
        ("pad_variable_length_inputs", 7, F.TYPE_BOOL, opt, ""),
        ("enable_large_batch_splitting", 8, F.TYPE_MESSAGE, opt, boolean),
        ("max_execution_batch_size", 9, F.TYPE_MESSAGE, opt, int64),
    ])
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in ("PrometheusConfig", "MonitoringConfig", "BatchingParameters")}


def monitoring_config_class() -> type:
    return _classes()["MonitoringConfig"]


def batching_parameters_class() -> type:
    return _classes()["BatchingParameters"]


def _parse(path: str, cls: type) -> Any:
    from google.protobuf import text_format

    message = cls()
    try:
        with open(path, encoding="utf-8") as handle:
            text_format.Parse(handle.read(), message)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        error = ConfigFileError(path, str(exc))
        error.message_type = cls.DESCRIPTOR.full_name  # main prints "Error parsing text-format <type>: ..."
        raise error from None
    return message


# ---------------------------------------------------------------------------- monitoring

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class MonitoringSettings:
    """What ``--monitoring_config_file`` asks for; ``prometheus_path`` is None when disabled."""

    prometheus_path: str | None = None


def read_monitoring_config(path: str) -> MonitoringSettings:
    """Parse a MonitoringConfig text file; an empty ``path`` means the default page path."""
    message = _parse(path, monitoring_config_class())
    prometheus = message.prometheus_config
    if not prometheus.enable:
        return MonitoringSettings()
    return MonitoringSettings(prometheus_path=prometheus.path or DEFAULT_PROMETHEUS_PATH)


# ---------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class BatchingSettings:
    """``BatchingParameters`` with TF's scheduler defaults filled in for unset fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0             # 0: the CPU count, as TF's port::MaxParallelism()
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @property
    def threads(self) -> int:
        return self.num_batch_threads if self.num_batch_threads > 0 else usable_cpus()


# Without a file, TF Serving only names the pool (server.cc); everything else is a default.
FLAG_ONLY_BATCHING = BatchingSettings(thread_pool_name="model_server_batch_threads")


def batching_settings_from_proto(message: Any) -> BatchingSettings:
    """Validate like ``bundle_factory_util.cc`` (:func:`validate_batching`)."""
    defaults = BatchingSettings()

    def value(name: str, default: Any) -> Any:
        return getattr(message, name).value if message.HasField(name) else default

    settings = BatchingSettings(
        max_batch_size=value("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        thread_pool_name=value("thread_pool_name", defaults.thread_pool_name),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
    )
    return validate_batching(settings)


def validate_batching(settings: BatchingSettings) -> BatchingSettings:
    """``settings`` when TF would accept them; else INVALID_ARGUMENT with TF's wording."""
    if settings.max_batch_size <= 0:
        raise ServingError(Code.INVALID_ARGUMENT, "max_batch_size must be positive")
    if settings.max_enqueued_batches <= 0:
        raise ServingError(Code.INVALID_ARGUMENT, "max_enqueued_batches must be positive")
    if settings.batch_timeout_micros < 0:
        raise ServingError(Code.INVALID_ARGUMENT, "batch_timeout_micros must be non-negative")
    sizes = settings.allowed_batch_sizes
    if sizes:
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
            raise ServingError(Code.INVALID_ARGUMENT, "allowed_batch_sizes entries must be monotonically increasing")
        if sizes[-1] != settings.max_batch_size:
            raise ServingError(Code.INVALID_ARGUMENT,
                               "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                               f"{sizes[-1]}; expected {settings.max_batch_size}")
    return settings


def read_batching_parameters(path: str) -> BatchingSettings:
    """Parse and validate a BatchingParameters text file."""
    return batching_settings_from_proto(_parse(path, batching_parameters_class()))
