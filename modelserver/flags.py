"""tensorflow_model_server's command line: the same flag names, defaults and syntax.

Accepted forms: ``--flag=value``, ``--flag value``, and for booleans ``--flag``,
``--flag=true|false`` (or ``--flag true|false``). An unknown flag is an error, as in TF
Serving. Flags we accept for drop-in compatibility but do not implement yet are listed in
:data:`IGNORED` and produce one warning each when given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelserver.cpus import usable_cpus

log = logging.getLogger(__name__)


class FlagError(Exception):
    """The command line is invalid; the message says which argument."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type
    default: Any
    help: str


def _cpus() -> int:
    return usable_cpus()


FLAGS: dict[str, Flag] = {f.name: f for f in [
    Flag("port", int, 8500, "TCP port of the gRPC API"),
    Flag("rest_api_port", int, 0, "TCP port of the HTTP/REST API; 0 disables it"),
    Flag("listen_address", str, "0.0.0.0", "address both ports bind (appliance extension)"),
    Flag("rest_api_num_threads", int, 0, "size of the inference thread pool; 0 means the CPUs this process may use"),
    Flag("rest_api_timeout_in_ms", int, 30000, "timeout of one REST inference (TF RunOptions)"),
    Flag("rest_api_enable_cors_support", bool, False, "add CORS headers to REST responses"),
    Flag("rest_api_max_body_bytes", int, 2 ** 31 - 1,
         "largest REST request body; a bigger Content-Length gets 413 at once (appliance extension)"),
    Flag("rest_api_body_budget_bytes", int, 2 ** 30,
         "request body bytes held across all REST connections; past it a request gets 429, and a "
         "body bigger than it 413 (appliance extension)"),
    Flag("rest_api_idle_timeout_seconds", float, 50.0,
         "close a REST connection idle (or not reading its answers) this long; libevent's default "
         "in TF Serving (appliance extension)"),
    Flag("rest_api_read_timeout_seconds", float, 50.0,
         "close a REST connection whose request headers take this long, or whose body stops arriving "
         "this long, with 408 (appliance extension)"),
    Flag("model_name", str, "default", "name of the model in single-model mode"),
    Flag("model_base_path", str, "", "directory of the model's version directories (single-model mode)"),
    Flag("model_config_file", str, "", "ModelServerConfig text proto; overrides --model_name/--model_base_path"),
    Flag("file_system_poll_wait_seconds", int, 1,
         "seconds between scans for new/removed versions; 0 scans once, negative never rescans"),
    Flag("tensorflow_session_parallelism", int, 0, "intra- and inter-op threads; 0 lets TF choose"),
    Flag("tensorflow_intra_op_parallelism", int, 0, "intra-op threads; 0 lets TF choose"),
    Flag("tensorflow_inter_op_parallelism", int, 0, "inter-op threads; 0 lets TF choose"),
    Flag("saved_model_tags", str, "serve", "comma-separated SavedModel tag set to load"),
    Flag("version", bool, False, "print the version and exit"),
    Flag("model_config_file_poll_wait_seconds", int, 0,
         "seconds between re-reads of --model_config_file (declarative reload); 0 reads it once"),
    Flag("grpc_channel_arguments", str, "",
         "comma-separated gRPC server channel arguments k=v; integer values are passed as ints"),
    Flag("grpc_socket_path", str, "", "also serve gRPC on this unix socket"),
    Flag("grpc_max_threads", int, 0, "cap on concurrent gRPC RPCs; 0 means 4 x CPUs"),
    Flag("enable_grpc_healthcheck_service", bool, False,
         "serve grpc.health.v1.Health (SERVING once every model is loaded)"),
    Flag("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests before serving"),
    Flag("num_request_iterations_for_warmup", int, 0, "times each warmup record is replayed; 0 means once"),
    Flag("monitoring_config_file", str, "", "MonitoringConfig text proto; prometheus_config serves metrics on REST"),
    Flag("enable_batching", bool, False, "merge concurrent requests to a signature into one runtime call"),
    Flag("batching_parameters_file", str, "", "BatchingParameters text proto (needs --enable_batching)"),
    Flag("model_platform", str, "tensorflow",
         "model_platform of --model_name/--model_base_path: tensorflow, onnx, or auto (each version's "
         "platform from its files) (appliance extension)"),
    Flag("model_settings_file", str, "",
         "JSON file of per-model settings (batching, warmup, metrics, precision, runtime options); a "
         "model listed there has them instead of --enable_batching/--batching_parameters_file/"
         "--enable_model_warmup; re-read with --model_config_file on its poll (appliance extension)"),
    Flag("api_keys_file", str, "",
         "JSON file of API key digests, per-model and per-key rate limits (modelserver/access.py); "
         "re-read within a second of a change; empty: no keys, no limits (appliance extension)"),
    Flag("quarantine_dir", str, "",
         "keep the record of versions that failed to load here, so they stay skipped after a restart "
         "until their files change; empty keeps it in memory (appliance extension)"),
    Flag("runtime_cache_dir", str, "",
         "keep converted models (OpenVINO) and model_platform auto's measurements here, by the version's "
         "content, so a restart neither converts nor measures again; empty keeps nothing (appliance extension)"),
    Flag("runtime_cache_bytes", int, 4 << 30,
         "the runtime cache's size limit; least recently used entries go first (appliance extension)"),
]}

# Accepted for compatibility, not implemented yet: a warning when given.
IGNORED: dict[str, Flag] = {f.name: f for f in [
    Flag("enable_per_model_batching_parameters", bool, False, ""),
    Flag("allow_version_labels", bool, True, ""),
    Flag("allow_version_labels_for_unavailable_models", bool, False, ""),
    Flag("platform_config_file", str, "", ""),
    Flag("ssl_config_file", str, "", ""),
    Flag("use_alts_credentials", bool, False, ""),
    Flag("tensorflow_session_config_file", str, "", ""),
    Flag("per_process_gpu_memory_fraction", float, 0.0, ""),
    Flag("enable_signature_method_name_check", bool, False, ""),
    Flag("enable_profiler", bool, True, ""),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, ""),
    Flag("prefer_tflite_model", bool, False, ""),
    Flag("num_tflite_pools", int, 1, ""),
    Flag("num_tflite_interpreters_per_pool", int, 1, ""),
    Flag("enable_serialization_as_tensor_content", bool, False, ""),
    Flag("xla_cpu_compilation_enabled", bool, False, ""),
    Flag("num_load_threads", int, 0, ""),
    Flag("num_unload_threads", int, 0, ""),
    Flag("max_num_load_retries", int, 5, ""),
    Flag("load_retry_interval_micros", int, 60_000_000, ""),
    Flag("flush_filesystem_caches", bool, True, ""),
    Flag("mixed_precision", str, "", ""),
    Flag("skip_initialize_tpu", bool, False, ""),
]}

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass
class Options:
    """Parsed flags: every known flag as an attribute, plus which ignored ones were given."""

    values: dict[str, Any]
    ignored_given: list[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _convert(flag: Flag, text: str) -> Any:
    if flag.kind is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise FlagError(f"Illegal value '{text}' for boolean flag --{flag.name}")
    try:
        return flag.kind(text)
    except ValueError:
        raise FlagError(f"Illegal value '{text}' for {flag.kind.__name__} flag --{flag.name}") from None


def parse_flags(argv: list[str]) -> Options:
    """Parse ``argv`` (without the program name)."""
    values = {f.name: f.default for f in (*FLAGS.values(), *IGNORED.values())}
    given: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unknown argument: {arg}")
        name, has_value, text = arg.lstrip("-").partition("=")
        flag = FLAGS.get(name) or IGNORED.get(name)
        if flag is None:
            raise FlagError(f"unknown argument: {arg}")
        if not has_value:
            if flag.kind is bool:
                if i < len(argv) and argv[i].lower() in _TRUE | _FALSE:
                    text = argv[i]
                    i += 1
                else:
                    text = "true"
            elif i < len(argv):
                text = argv[i]
                i += 1
            else:
                raise FlagError(f"flag --{name} needs a value")
        values[name] = _convert(flag, text)
        if name in IGNORED and name not in given:
            given.append(name)
    if values["rest_api_num_threads"] <= 0:
        values["rest_api_num_threads"] = _cpus()
    return Options(values, given)


def usage() -> str:
    lines = ["usage: appliance-model-server [--flag=value ...]", "Flags:"]
    for flag in FLAGS.values():
        lines.append(f"\t--{flag.name}={flag.default!r}\t{flag.kind.__name__}\t{flag.help}")
    lines.append("Accepted for compatibility, not implemented yet: "
                 + " ".join(f"--{name}" for name in IGNORED))
    return "\n".join(lines)


def warn_ignored(options: Options) -> None:
    for name in options.ignored_given:
        log.warning("--%s is not implemented yet, ignored (value %r)", name, options.values[name])
