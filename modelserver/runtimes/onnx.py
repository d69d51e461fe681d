"""The ONNX runtime: ``model_platform: "onnx"``, a ``model.onnx`` in each version directory.

An ONNX graph has no SignatureDefs, so the model gets exactly one, ``serving_default``, made from
the graph's inputs and outputs: their names are the aliases (and the "tensor names"), ONNX
element types become ``DT_*`` names, symbolic or unknown dimensions become -1. Clients then see
an ONNX model exactly like a SavedModel with one predict signature, over REST and gRPC alike.

Everything that can be prepared is prepared at load: the session, the output names, the
per-input conversions. ``InferenceSession.run`` is thread-safe, so one session serves all
request threads; the intra/inter-op thread counts come from the server's TensorFlow flags.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Callable, Mapping

import numpy as np

from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import (LoadedModel, LoadOptions, Runtime, Signature, TensorSpec,
                                       build_signature_def_map)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

# ONNX element type names, as onnxruntime spells them in NodeArg.type, to TF DataType names.
DTYPES: dict[str, str] = {
    "tensor(float)": "DT_FLOAT", "tensor(double)": "DT_DOUBLE", "tensor(float16)": "DT_HALF",
    "tensor(bfloat16)": "DT_BFLOAT16", "tensor(int8)": "DT_INT8", "tensor(int16)": "DT_INT16",
    "tensor(int32)": "DT_INT32", "tensor(int64)": "DT_INT64", "tensor(uint8)": "DT_UINT8",
    "tensor(uint16)": "DT_UINT16", "tensor(uint32)": "DT_UINT32", "tensor(uint64)": "DT_UINT64",
    "tensor(bool)": "DT_BOOL", "tensor(string)": "DT_STRING", "tensor(complex64)": "DT_COMPLEX64",
    "tensor(complex128)": "DT_COMPLEX128",
}

# "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : message" -> "message"
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")


def _shape(dims: Any) -> tuple[int, ...] | None:
    if dims is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def _spec(arg: Any) -> TensorSpec | None:
    dtype = DTYPES.get(arg.type)
    if dtype is None:
        return None
    return TensorSpec(alias=arg.name, dtype=dtype, shape=_shape(arg.shape), tensor_name=arg.name)


def _to_str_array(value: np.ndarray) -> np.ndarray:
    """ONNX string tensors are UTF-8 text in onnxruntime's Python API; TF clients send bytes."""
    out = np.empty(value.shape, dtype=object)
    flat_in, flat_out = value.reshape(-1), out.reshape(-1)
    try:
        for i, item in enumerate(flat_in.tolist()):
            flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise ServingError(Code.INVALID_ARGUMENT, "ONNX string inputs must be valid UTF-8") from None
    return out


def _to_bytes_array(value: np.ndarray) -> np.ndarray:
    """String outputs as bytes, the way the TensorFlow runtime returns them."""
    out = np.empty(value.shape, dtype=object)
    out.reshape(-1)[:] = [s.encode("utf-8") if isinstance(s, str) else s for s in value.reshape(-1).tolist()]
    return out


def _serving_error(exc: BaseException) -> ServingError:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    message = _ORT_PREFIX.sub("", str(exc))
    if isinstance(exc, (ort_state.InvalidArgument, ort_state.RuntimeException)):
        # RuntimeException is what a kernel raises on inputs it cannot handle (broadcasts, sizes).
        return ServingError(Code.INVALID_ARGUMENT, message)
    if isinstance(exc, ort_state.NotImplemented):
        return ServingError(Code.UNIMPLEMENTED, message)
    if isinstance(exc, ServingError):
        return exc
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {message}")


class OnnxModel(LoadedModel):
    """One ``model.onnx`` in one onnxruntime session, served as a single predict signature."""

    def __init__(self, path: str, session: Any) -> None:
        inputs: dict[str, TensorSpec] = {}
        for arg in session.get_inputs():
            spec = _spec(arg)
            if spec is None:
                raise ServingError(Code.UNIMPLEMENTED, f"ONNX input {arg.name} has type {arg.type}; only tensor "
                                                       "inputs can be served")
            inputs[arg.name] = spec
        outputs: dict[str, TensorSpec] = {}
        for arg in session.get_outputs():
            spec = _spec(arg)
            if spec is None:
                log.warning("%s: output %s of type %s is not a tensor and is not served", path, arg.name, arg.type)
                continue
            outputs[arg.name] = spec
        if not outputs:
            raise ServingError(Code.INVALID_ARGUMENT, f"ONNX model {path} has no tensor outputs to serve")
        signature = Signature(name=SIGNATURE, method_name=PREDICT_METHOD,
                              inputs={alias: inputs[alias] for alias in sorted(inputs)},
                              outputs={alias: outputs[alias] for alias in sorted(outputs)})
        super().__init__(path, {SIGNATURE: signature})
        self._session = session
        self._output_names = list(signature.outputs)
        self._convert_in: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            alias: _to_str_array for alias, spec in signature.inputs.items() if spec.dtype == "DT_STRING"}
        self._string_outputs = frozenset(a for a, s in signature.outputs.items() if s.dtype == "DT_STRING")
        self._sigdef_map: Any = None
        self._sigdef_lock = threading.Lock()

    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature.name}" not found.')
        convert = self._convert_in
        feed = {alias: (convert[alias](value) if alias in convert else value) for alias, value in inputs.items()}
        try:
            values = session.run(self._output_names, feed)
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a status
            raise _serving_error(exc) from None
        result = dict(zip(self._output_names, values))
        for alias in self._string_outputs:
            result[alias] = _to_bytes_array(result[alias])
        return result

    def signature_def_map(self) -> Any:
        """Built on first use (it needs TF's DataType enum) and then reused."""
        with self._sigdef_lock:
            if self._sigdef_map is None:
                self._sigdef_map = build_signature_def_map(self.signatures)
            return self._sigdef_map

    def close(self) -> None:
        self._session = None  # in-flight runs keep their own reference to the session


class OnnxRuntime(Runtime):
    """``model_platform: "onnx"``: ``<version>/model.onnx`` through onnxruntime on the CPU."""

    platform = "onnx"

    def load(self, path: str, options: LoadOptions) -> LoadedModel:
        import onnxruntime as ort

        model_file = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_file):
            raise ServingError(Code.NOT_FOUND, f"Could not find {MODEL_FILE} at supplied export directory path: "
                                               f"{path}")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = max(options.intra_op_threads, 0)
        session_options.inter_op_num_threads = max(options.inter_op_threads, 0)
        session_options.log_severity_level = 3  # errors only: load warnings are not the user's problem
        try:
            session = ort.InferenceSession(model_file, sess_options=session_options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - report any loader failure as the load status
            message = _ORT_PREFIX.sub("", str(exc))
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to load ONNX model at {model_file}: {message}") \
                from None
        return OnnxModel(path, session)
