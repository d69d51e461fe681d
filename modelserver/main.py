"""``appliance-model-server``: a drop-in for ``tensorflow_model_server``.

The composition root: parse flags, configure logging, load every configured model, and only
then open the ports (TF Serving's "port open means ready"). SIGTERM/SIGINT stop accepting and
exit 0 at once; in-flight inference is not waited for.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from modelserver.access import Access
from modelserver.cpus import usable_cpus
from modelserver.features import ServerFeatures
from modelserver.flags import FlagError, Options, parse_flags, usage, warn_ignored
from modelserver.manager import ModelConfig, ModelManager, WarmupOptions
from modelserver.model_config import ConfigFileError, read_model_server_config
from modelserver.model_settings import ModelSettings, SettingsFileError, read_model_settings
from modelserver.core.status import Code, ServingError

log = logging.getLogger("modelserver")

VERSION = "0.1.0"


def configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")


def _model_configs(options: Options) -> list[ModelConfig]:
    if options.model_config_file:
        return read_model_server_config(options.model_config_file)
    if not options.model_base_path:
        raise ServingError(Code.INVALID_ARGUMENT, "Both server_model_config_file and model_base_path are empty!")
    return [ModelConfig(name=options.model_name, base_path=options.model_base_path, platform=options.model_platform)]


def _load_options(options: Options) -> object:
    from modelserver.runtimes import LoadOptions

    intra = options.tensorflow_intra_op_parallelism or options.tensorflow_session_parallelism
    inter = options.tensorflow_inter_op_parallelism or options.tensorflow_session_parallelism
    return LoadOptions(tags=tuple(t for t in options.saved_model_tags.split(",") if t),
                       intra_op_threads=intra, inter_op_threads=inter,
                       run_timeout_ms=max(options.rest_api_timeout_in_ms, 0),
                       cache_dir=options.runtime_cache_dir, cache_bytes=max(options.runtime_cache_bytes, 0))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:  # tensorflow_model_server prints its usage for --help too
        print(usage())
        return 0
    try:
        options = parse_flags(args)
    except FlagError as exc:
        print(f"{exc}\n{usage()}", file=sys.stderr)
        return 1
    if options.version:
        print(f"TensorFlow ModelServer: appliance-{VERSION}\nTensorFlow Library: (loaded on demand)")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    configure_logging()
    warn_ignored(options)
    try:
        configs = _model_configs(options)
        settings = _model_settings(options)
        features = ServerFeatures.from_options(options)
    except SettingsFileError as exc:
        print(f"Failed to start server. Error: INVALID_ARGUMENT: {exc}", file=sys.stderr)
        return 1
    except ConfigFileError as exc:
        message_type = getattr(exc, "message_type", "tensorflow.serving.ModelServerConfig")
        print(f"Error parsing text-format {message_type}: {exc.details}", file=sys.stderr)
        print(f"Failed to start server. Error: INVALID_ARGUMENT: {exc}", file=sys.stderr)
        return 1
    except ServingError as exc:
        print(f"Failed to start server. Error: {exc.to_string()}", file=sys.stderr)
        return 1
    if options.port == options.rest_api_port and options.rest_api_port:
        log.error("--rest_api_port cannot be the same as --port. Please use a different port for HTTP/REST API. "
                  "Skipped exporting HTTP/REST API.")
        options.values["rest_api_port"] = 0
    manager = ModelManager(configs, _load_options(options), options.file_system_poll_wait_seconds,
                           load_threads=4 * usable_cpus(),
                           warmup=WarmupOptions(options.enable_model_warmup,
                                                max(options.num_request_iterations_for_warmup, 1)),
                           quarantine_dir=options.quarantine_dir, settings=settings)
    features.attach(manager)
    try:
        manager.load_initial()
    except ServingError as exc:
        print(f"Failed to start server. Error: {exc.to_string()}", file=sys.stderr)
        return 1
    # Everything TensorFlow and the loaded models hold (~270k objects) leaves the collector's view:
    # a full collection walked them all with the event loop stopped, 40-640 ms on the benchmark VM
    # in the middle of serving (bench/README.md, the REST tail). Objects created later (requests,
    # models loaded later) are collected as before.
    gc.freeze()
    manager.start_polling()
    _watch_config_file(options, manager)
    code = _serve(options, manager, features)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # TF's threads and atexit hooks can stall a normal exit for seconds


def _watch_config_file(options: Options, manager: ModelManager) -> None:
    """``--model_config_file_poll_wait_seconds`` > 0: reload models.config (and the settings file)
    when it changes."""
    if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
        from modelserver.config_watch import ConfigFileWatcher

        ConfigFileWatcher(options.model_config_file, manager, options.model_config_file_poll_wait_seconds,
                          options.model_settings_file).start()


def _model_settings(options: Options) -> dict[str, ModelSettings]:
    """``--model_settings_file``'s per-model settings ({} without the flag)."""
    return read_model_settings(options.model_settings_file) if options.model_settings_file else {}


def _serve(options: Options, manager: ModelManager, features: ServerFeatures) -> int:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        return uvloop.run(_run_servers(options, manager, features))
    return asyncio.run(_run_servers(options, manager, features))


async def _run_servers(options: Options, manager: ModelManager, features: ServerFeatures) -> int:
    from modelserver.handlers import RestApi
    from modelserver.rest import start_rest_server
    from modelserver.rollout import Rollout
    from modelserver.shadow import ShadowTap

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    executor = features.executor(options.rest_api_num_threads)
    access = Access(options.api_keys_file)
    access.start()
    shadow = ShadowTap(manager)
    shadow.attach(loop)     # cheap models' copies run on the loop, in its idle turns
    hooks = Rollout(shadow)
    servers = []
    # One REST API for the REST port and for REST over HTTP/2 on the gRPC port (how Envoy reaches it).
    api = RestApi(manager, executor, enable_cors=options.rest_api_enable_cors_support,
                  metrics_path=features.monitoring.prometheus_path, hooks=hooks, access=access)
    try:
        if options.port > 0 or options.grpc_socket_path:
            servers.append(await _start_grpc(options, manager, executor, hooks, access, api))
        if options.rest_api_port > 0:
            servers.append(await start_rest_server(api, options.listen_address, options.rest_api_port,
                                                   _rest_limits(options)))
            log.info("Exporting HTTP/REST API at:%s:%d ...", options.listen_address, options.rest_api_port)
    except (OSError, ValueError) as exc:
        log.error("Failed to start server. Error: %s", exc)
        return 1
    await stop.wait()
    log.info("Received a termination signal; shutting down")
    manager.stop()
    for server in servers:
        if server is not None:
            await server.stop(0) if hasattr(server, "stop") else server.close()
    executor.shutdown(wait=False, cancel_futures=True)
    return 0


def _rest_limits(options: Options) -> object:
    """The REST limits of the flags; 0 or less means no limit."""
    from modelserver.rest import RestLimits

    def limit(value: float, none: float) -> float:
        return value if value > 0 else none
    return RestLimits(max_body=int(limit(options.rest_api_max_body_bytes, 2 ** 63)),
                      body_budget=int(limit(options.rest_api_body_budget_bytes, 2 ** 63)),
                      idle_timeout=limit(options.rest_api_idle_timeout_seconds, math.inf),
                      read_timeout=limit(options.rest_api_read_timeout_seconds, math.inf))


async def _start_grpc(options: Options, manager: ModelManager, executor: ThreadPoolExecutor,
                      hooks: object, access: Access, rest: object = None) -> object:
    try:
        from modelserver.grpc_server import GrpcOptions, start_grpc_server
    except ImportError:
        log.warning("gRPC is not served yet: --port=%d is not opened", options.port)
        return None
    limits = _rest_limits(options)
    grpc_options = GrpcOptions(host=options.listen_address, port=options.port, socket_path=options.grpc_socket_path,
                               channel_arguments=options.grpc_channel_arguments,
                               enable_health=options.enable_grpc_healthcheck_service,
                               body_budget=limits.body_budget, read_timeout=limits.read_timeout,
                               rest=rest, rest_max_body=limits.max_body)
    if options.grpc_max_threads:
        log.info("--grpc_max_threads=%d: gRPC runs on the event loop here, with no thread per RPC to cap; "
                 "inference concurrency is the runtime pool's size", options.grpc_max_threads)
    server = await start_grpc_server(manager, executor, grpc_options, hooks=hooks, access=access)
    if options.port > 0:
        log.info("Running gRPC ModelServer at %s:%d ...", options.listen_address, options.port)
    if options.grpc_socket_path:
        log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)
    return server


if __name__ == "__main__":
    sys.exit(main())
