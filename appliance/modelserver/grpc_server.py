"""The gRPC port: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus).

Uses the official ``tensorflow_serving.apis`` stubs on ``grpc.aio`` with TF Serving's 2 GiB
message limit. Outputs are written to the typed ``*_val`` fields (TF Serving's default, which
clients such as the official tests read), not ``tensor_content``. Inference runs in the same
runtime pool as REST. Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED for now.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any

import grpc
import numpy as np

from appliance.modelserver.manager import ModelManager, VersionState
from appliance.modelserver.status import Code, ServingError, invalid_argument

log = logging.getLogger(__name__)

MAX_MESSAGE = 2 ** 31 - 1
DEFAULT_SIGNATURE = "serving_default"
_VAL_FIELDS = {"f": "float_val", "d": "double_val", "b": "bool_val", "q": "int64_val", "l": "int64_val",
               "i": "int_val", "h": "int_val", "b8": "int_val", "B": "int_val", "I": "uint32_val",
               "L": "uint64_val", "Q": "uint64_val", "O": "string_val", "S": "string_val", "e": "half_val"}


def _lookup(manager: ModelManager, spec: Any) -> VersionState:
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return manager.lookup(spec.name, version=spec.version.value)
    if choice == "version_label":
        return manager.lookup(spec.name, label=spec.version_label)
    return manager.lookup(spec.name)


def _to_proto(arr: np.ndarray) -> Any:
    """A numpy array as a TensorProto with ``*_val`` fields."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    for size in arr.shape:
        proto.tensor_shape.dim.add().size = size
    flat = arr.ravel()
    if arr.dtype.kind in "OSU":
        proto.dtype = tf.string.as_datatype_enum
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
        return proto
    proto.dtype = tf.as_dtype(arr.dtype).as_datatype_enum
    if arr.dtype == np.float16:
        proto.half_val.extend(flat.view(np.uint16).tolist())
        return proto
    field = _VAL_FIELDS.get("b8" if arr.dtype == np.int8 else arr.dtype.char) or _VAL_FIELDS.get(arr.dtype.kind)
    if field is None:
        raise ServingError(Code.UNIMPLEMENTED, f"Cannot serialize output of dtype {arr.dtype}")
    getattr(proto, field).extend(flat.tolist())
    return proto


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Not implemented yet by appliance-model-server")


class PredictionServicer:
    Classify = Regress = MultiInference = staticmethod(_unimplemented)

    def __init__(self, manager: ModelManager, executor: Executor) -> None:
        self.manager = manager
        self.executor = executor

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _call(context, self.executor, self._predict, request)

    def _predict(self, request: Any) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        state = _lookup(self.manager, request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = state.model.signatures.get(signature_name)
        if signature is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
        wanted = list(request.output_filter)
        for alias in wanted:
            if alias not in signature.outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to "
                                       f"be in the set {{{','.join(signature.outputs)}}}.")
        if len(set(wanted)) != len(wanted):
            duplicate = next(a for a in wanted if wanted.count(a) > 1)
            raise invalid_argument(f"duplicate output tensor alias: {duplicate}")
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        outputs = state.model.run(signature.name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = state.version
        response.model_spec.signature_name = signature.name
        for alias, arr in outputs.items():
            if not wanted or alias in wanted:
                response.outputs[alias].CopyFrom(_to_proto(np.asarray(arr)))
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _call(context, None, self._metadata, request)

    def _metadata(self, request: Any) -> Any:
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
    HandleReloadConfigRequest = staticmethod(_unimplemented)

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _call(context, None, self._status, request)

    def _status(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.manager.version_states(spec.name, version):
            row = response.model_version_status.add()
            row.version = state.version
            row.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            row.status.SetInParent()
            if state.error is not None:
                row.status.error_code = int(state.error.code)
                row.status.error_message = state.error.message
        return response


async def _call(context: grpc.aio.ServicerContext, executor: Executor | None, func: Any, request: Any) -> Any:
    """Run ``func`` (in the pool when ``executor`` is given) and turn failures into gRPC statuses."""
    try:
        if executor is None:
            return func(request)
        return await asyncio.get_running_loop().run_in_executor(executor, func, request)
    except ServingError as err:
        message = err.message if len(err.message) <= 1024 else err.message[:1024] + "...TRUNCATED"
        await context.abort(grpc.StatusCode[err.code.name], message)
    except Exception as exc:  # noqa: BLE001 - a request never takes the server down
        if isinstance(exc, (asyncio.CancelledError, grpc.aio.AbortError)):
            raise
        log.exception("unexpected gRPC error")
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def start_grpc_server(manager: ModelManager, executor: Executor, host: str, port: int) -> grpc.aio.Server:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(manager, executor), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    await server.start()
    return server
