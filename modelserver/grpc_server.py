"""The gRPC port: PredictionService, ModelService and (optionally) grpc.health.v1.Health.

TF Serving's services with its 2 GiB message limit, ``--grpc_channel_arguments`` for the limits
they name, and an optional unix socket (``--grpc_socket_path``) next to the TCP port. The
transport is :mod:`modelserver.grpc_transport` (HTTP/2 on the model server's event loop, not
grpcio's server: see there why). This module is the application behind it: :class:`GrpcApi`
is the one entry every call goes through (method, request parsing, where it runs, status and
metrics), the servicers only resolve the model spec and map errors to TF Serving's status codes
and messages; the inference itself is :mod:`modelserver.grpc_inference`, run in the runtime pool
shared with REST, or on the event loop for a cheap model (inline.py), as REST does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from contextvars import copy_context
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from modelserver import grpc_inference, monitoring, rollout
from modelserver.access import KEY_NAME_HEADER, Access, AccessDenied, model_of_request
from modelserver.core.inline import runs_inline
from modelserver.grpc_transport import GrpcLimits, GrpcServer, Reply, start_server
from modelserver.manager import ModelManager, VersionState
from modelserver.rollout import Rollout
from modelserver.core.status import Code, ServingError, invalid_argument, utf8_text

log = logging.getLogger(__name__)

MAX_MESSAGE = 2 ** 31 - 1
# A connection with no RPC for this long gets GOAWAY and closes (clients reconnect on their next
# call): idle connections must not pile up until the process runs out of file descriptors.
# --grpc_channel_arguments=grpc.max_connection_idle_ms=N overrides it.
MAX_CONNECTION_IDLE_MS = 300_000
MAX_ERROR_MESSAGE = 1024  # grpc_status_util.cc: longer messages are cut and marked
STATUS_READS = ("GetModelStatus", "GetModelMetadata")   # what Envoy's and the agent's own calls may read
HEALTH_SERVICES = ("", "ModelService", "PredictionService",
                   "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService")
# --grpc_channel_arguments that mean something to this server, and the GrpcLimits field each sets.
CHANNEL_LIMITS = {"grpc.max_receive_message_length": "max_receive", "grpc.max_send_message_length": "max_send",
                  "grpc.max_concurrent_streams": "max_streams", "grpc.max_metadata_size": "max_header_list"}


@dataclass(frozen=True)
class GrpcOptions:
    """The gRPC flags of ``tensorflow_model_server``."""

    host: str = "0.0.0.0"
    port: int = 0
    socket_path: str = ""
    channel_arguments: str = ""
    enable_health: bool = False
    body_budget: int = 2 ** 30      # shared with nothing: the REST port has a budget of its own
    read_timeout: float = 50.0
    rest: Any = None                # the REST API answering REST over HTTP/2 on this port (None: 415)
    rest_max_body: int = 2 ** 31 - 1


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """``--grpc_channel_arguments``: ``k=v,k2=v2``; values that parse as int32 are passed as int."""
    result: list[tuple[str, Any]] = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Invalid --grpc_channel_arguments entry {item!r}: expected key=value")
        try:
            number = int(value)
        except ValueError:
            result.append((key, value))
            continue
        result.append((key, number) if -(2 ** 31) <= number < 2 ** 31 else (key, value))
    return result


def grpc_limits(options: GrpcOptions) -> GrpcLimits:
    """The transport's limits: TF Serving's defaults, then what ``--grpc_channel_arguments`` sets.

    gRPC's own arguments that concern its C core (keepalive, buffer pools, user agents...) have
    nothing to set here; they are logged and ignored. A negative size means no limit, as in gRPC.
    """
    limits = GrpcLimits(max_receive=MAX_MESSAGE, max_send=MAX_MESSAGE, body_budget=options.body_budget,
                        idle_timeout=MAX_CONNECTION_IDLE_MS / 1000, read_timeout=options.read_timeout)
    for key, value in parse_channel_arguments(options.channel_arguments):
        if key == "grpc.max_connection_idle_ms" and isinstance(value, int):
            limits = replace(limits, idle_timeout=value / 1000 if value > 0 else float("inf"))
        elif key in CHANNEL_LIMITS and isinstance(value, int):
            limits = replace(limits, **{CHANNEL_LIMITS[key]: value if value >= 0 else MAX_MESSAGE})
        else:
            log.info("--grpc_channel_arguments: %s does not apply to this server; ignored", key)
    return limits


def _lookup(manager: ModelManager, spec: Any) -> VersionState:
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return manager.lookup(spec.name, version=spec.version.value)
    if choice == "version_label":
        return manager.lookup(spec.name, label=spec.version_label)
    return manager.lookup(spec.name)


def _status_message(message: str) -> str:
    message = utf8_text(message)
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[:MAX_ERROR_MESSAGE] + "...TRUNCATED"


def _error_reply(exc: Exception) -> Reply:
    """A call's exception as the status TF Serving answers."""
    if isinstance(exc, ServingError):
        return Reply(exc.code.value, _status_message(exc.message))
    log.error("unexpected gRPC error", exc_info=exc)
    return Reply(Code.INTERNAL.value, _status_message(f"{type(exc).__name__}: {exc}"))


# Where a method runs: on the event loop, in the runtime pool (inference), in a thread of its own
# (a call that blocks for long, outside the pool so inference never waits behind it), or, for
# Predict, on the event loop when inline.py says the model is cheap enough.
LOOP, POOL, THREAD, INLINE_OR_POOL = "loop", "pool", "thread", "inline-or-pool"


@dataclass(frozen=True)
class Method:
    request_class: Any
    run: Callable[[Any], Any]     # request message -> response message (or its bytes); raises ServingError
    where: str
    api: str = ""                 # counted in request_count/request_latency under this API name


class GrpcApi:
    """Every gRPC call's one entry: ``(path, headers, message) -> Reply`` (or an awaitable of one).

    The transport calls it for each complete request; a request-entry check (API keys) or a
    version choice belongs here or in ``_lookup``, shared by every method.
    """

    def __init__(self, manager: ModelManager, executor: Executor, enable_health: bool = False,
                 hooks: Rollout | None = None, access: Access | None = None) -> None:
        self.manager = manager
        self.executor = executor
        self.access = access or Access()   # API keys and per-model / per-key rate limits
        self.methods: dict[str, Method] = {}
        prediction = PredictionServicer(manager, hooks)
        model = ModelServicer(manager)
        self._add("tensorflow.serving.PredictionService", "tensorflow_serving.apis.prediction_service_pb2", {
            "Predict": (prediction.predict, INLINE_OR_POOL, "Predict"),
            "Classify": (prediction.classify, POOL, "Classify"),
            "Regress": (prediction.regress, POOL, "Regress"),
            "MultiInference": (prediction.multi_inference, POOL, ""),
            "GetModelMetadata": (prediction.metadata, LOOP, "")})
        self._add("tensorflow.serving.ModelService", "tensorflow_serving.apis.model_service_pb2", {
            "GetModelStatus": (model.status, LOOP, ""),
            "HandleReloadConfigRequest": (model.reload, THREAD, "")})
        if enable_health:
            self._add("grpc.health.v1.Health", "grpc_health.v1.health_pb2",
                      {"Check": (_health_check, LOOP, ""), "Watch": (_health_check, LOOP, ""),
                       "List": (_health_list, LOOP, "")})

    def _add(self, service: str, module_name: str, methods: dict[str, tuple[Callable[[Any], Any], str, str]]) -> None:
        import importlib

        from google.protobuf import message_factory

        descriptor = importlib.import_module(module_name).DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
        for method in descriptor.methods:
            if method.name not in methods:  # a newer version of the service: UNIMPLEMENTED
                continue
            run, where, api = methods[method.name]
            self.methods[f"/{service}/{method.name}"] = Method(
                message_factory.GetMessageClass(method.input_type), run, where, api)

    def __call__(self, path: str, headers: dict[str, str], raw: bytes) -> Reply | Awaitable[Reply]:
        method = self.methods.get(path)
        if method is None:
            return Reply(Code.UNIMPLEMENTED.value, "Method not found!" if path.count("/") == 2 else "")
        request = method.request_class()
        try:
            request.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError; the body is not this message
            # C++ gRPC's GenericDeserialize answers INTERNAL with the parser's (empty) error.
            return Reply(Code.INTERNAL.value, "")
        key_name = ""
        if not self.access.rules.idle:
            try:
                key_name = self.access.check(model_of_request(request), headers.get,
                                             path.rsplit("/", 1)[-1] in STATUS_READS)
            except AccessDenied as exc:
                retry = (("retry-after", str(exc.retry_after)),) if exc.retry_after else ()
                return Reply(exc.code.value, exc.message, headers=retry)
        reply = self._dispatch(method, request, path, headers, raw)
        # The key's name goes back with the answer, for Envoy's access log.
        return _with_headers(reply, ((KEY_NAME_HEADER, key_name),)) if key_name else reply

    def _dispatch(self, method: Method, request: Any, path: str, headers: dict[str, str],
                  raw: bytes) -> Reply | Awaitable[Reply]:
        # Request entry: the canary draw (rollout.py) and the metrics slot this call's run fills in.
        rollout.set_request_slot(rollout.request_slot(headers.get(rollout.SPLIT_HEADER)))
        slot = monitoring.request_started() if method.api else None
        where = method.where
        if where == INLINE_OR_POOL:
            where = LOOP if self._cheap(request, len(raw)) else POOL
        if where == LOOP:
            return self._run(method, request, path, slot)
        return self._run_in_thread(method, request, path, None if where == THREAD else self.executor, slot)

    def _cheap(self, request: Any, size: int) -> bool:
        try:
            model = _lookup(self.manager, request.model_spec).model
        except ServingError:
            return False  # the pool path reports it
        return runs_inline(model, size)

    def _run(self, method: Method, request: Any, path: str, slot: Any) -> Reply:
        start = time.perf_counter()
        reply = _reply(method, request, path)
        if method.api:
            monitoring.record_request(request.model_spec.name, method.api, "GRPC", Code(reply.code), start, slot)
        return reply

    async def _run_in_thread(self, method: Method, request: Any, path: str, executor: Executor | None,
                             slot: Any) -> Reply:
        start = time.perf_counter()
        code = Code.CANCELLED  # the client went away (or the server stops) while it ran
        try:
            # The canary draw and the metrics slot (context variables) go along to the thread.
            reply = await asyncio.get_running_loop().run_in_executor(executor, copy_context().run, _reply, method,
                                                                     request, path)
            code = Code(reply.code)
            return reply
        finally:
            if method.api:
                monitoring.record_request(request.model_spec.name, method.api, "GRPC", code, start, slot)


def _reply(method: Method, request: Any, path: str) -> Reply:
    """The call's answer. Predict, Classify and Regress also name the model and version that
    answered (``x-appliance-model``, ``x-appliance-version``) for Envoy's access log: a gRPC
    request names its model only in its body, which Envoy does not read."""
    try:
        response = method.run(request)
        version = None
        if method.api:
            response, version = response
        body = response if isinstance(response, bytes) else response.SerializeToString()
        return Reply(0, "", body, more=path.endswith("/Watch"),
                     headers=_served(request, version) if method.api else ())
    except Exception as exc:  # noqa: BLE001 - a request never takes the server down
        reply = _error_reply(exc)
        return reply._replace(headers=_served(request)) if method.api else reply


def _served(request: Any, version: int | None = None) -> tuple[tuple[str, str], ...]:
    name = request.model_spec.name[:200]
    if not name.isprintable() or not name.isascii():  # a header value Envoy would refuse
        return ()
    served = (("x-appliance-model", name),)
    return served + (("x-appliance-version", str(version)),) if version else served



def _with_headers(reply: Reply | Awaitable[Reply], extra: tuple[tuple[str, str], ...]) -> Reply | Awaitable[Reply]:
    """``reply`` with ``extra`` headers added (once it is ready, when it is an awaitable)."""
    if isinstance(reply, Reply):
        return reply._replace(headers=reply.headers + extra)

    async def later() -> Reply:
        ready = await reply
        return ready._replace(headers=ready.headers + extra)
    return later()


def _health_check(request: Any) -> Any:
    """``grpc.health.v1.Health``: the port opens only once every model is loaded, so SERVING."""
    from grpc_health.v1 import health_pb2

    if request.service not in HEALTH_SERVICES:
        raise ServingError(Code.NOT_FOUND, "unknown service")
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _health_list(request: Any) -> Any:
    from grpc_health.v1 import health_pb2

    response = health_pb2.HealthListResponse()
    for name in HEALTH_SERVICES:
        response.statuses[name].status = health_pb2.HealthCheckResponse.SERVING
    return response


class PredictionServicer:
    """``tensorflow.serving.PredictionService``."""

    def __init__(self, manager: ModelManager, hooks: Rollout | None = None) -> None:
        self.manager = manager
        self.hooks = hooks or Rollout()

    def _run(self, spec: Any, run: Callable[..., Any], request: Any, *answered: Any) -> tuple[Any, int]:
        """The response and the version that gave it."""
        state = _lookup(self.manager, spec)
        if answered and spec.WhichOneof("version_choice") is None:   # rollout.py: the shadow's copy
            answered = (lambda signature, inputs, outputs:
                        self.hooks.answered(spec.name, "gRPC", state, signature, inputs, outputs),)
        else:
            answered = ()
        with rollout.COUNTS.timed(spec.name, state.version, self.manager.rollout_of(spec.name) is not None):
            return run(state.model, state.version, request, *answered), state.version

    def predict(self, request: Any) -> tuple[Any, int]:
        return self._run(request.model_spec, grpc_inference.predict, request, True)

    def classify(self, request: Any) -> tuple[Any, int]:
        return self._run(request.model_spec, grpc_inference.classify, request)

    def regress(self, request: Any) -> tuple[Any, int]:
        return self._run(request.model_spec, grpc_inference.regress, request)

    def multi_inference(self, request: Any) -> Any:
        # Every task must name the same model (checked in the core); the first one picks the version.
        # Without tasks the spec is empty, hence "ModelSpec has no name specified." as in TF Serving.
        from tensorflow_serving.apis import model_pb2

        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        return self._run(spec, grpc_inference.multi_inference, request)[0]

    def metadata(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        state = _lookup(self.manager, request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = state.version
        response.metadata["signature_def"].Pack(state.model.signature_def_map())
        return response


class ModelServicer:
    """``tensorflow.serving.ModelService``."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def status(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        return self.manager.status_proto(spec.name, version)

    def reload(self, request: Any) -> Any:
        """Blocks (in a thread of its own, never the pool) until newly added models are AVAILABLE."""
        from tensorflow_serving.apis import model_management_pb2

        from modelserver.model_config import model_configs_from_proto

        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                       "ModelConfigList is currently supported")
            configs = model_configs_from_proto(request.config)
            log.info("Reloading the model config: %s", ", ".join(c.name for c in configs) or "(no models)")
            self.manager.reload(configs)
        except ServingError as err:
            log.error("ReloadConfig failed: %s", err.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


async def start_grpc_server(manager: ModelManager, executor: Executor, host: str | GrpcOptions,
                            port: int = 0, hooks: Rollout | None = None,
                            access: Access | None = None) -> GrpcServer:
    """Serve on ``host:port`` (and the unix socket); ``host`` may be a :class:`GrpcOptions`."""
    options = host if isinstance(host, GrpcOptions) else GrpcOptions(host=host, port=port)
    api = GrpcApi(manager, executor, options.enable_health, hooks, access)
    return await start_server(api, options.host, options.port, options.socket_path, grpc_limits(options),
                              options.rest, options.rest_max_body)
