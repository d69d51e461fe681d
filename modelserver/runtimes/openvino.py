"""The OpenVINO runtime: ``model_platform: "openvino"``, Intel's CPU inference engine.

It serves three kinds of version directory (``modelserver.core.platforms`` says which one it is):

* OpenVINO IR (``model.xml`` + ``model.bin``) and ONNX (``model.onnx``): read as they are, and
  served like the ONNX runtime serves ONNX, as one ``serving_default`` predict signature.
* SavedModels: every signature keeps its SignatureDef (so Classify, Regress, MultiInference and
  metadata behave as on TensorFlow); the network is converted with ``openvino.convert_model``
  in memory, in FP32 (never through ``ov.save_model``, which compresses to FP16 by default).
  What OpenVINO cannot convert (strings: JPEG decoding, tf.Example parsing) stays in TensorFlow,
  in front of the network (``modelserver/runtimes/openvino_tf.py``).

Precision is a visible choice, never a silent one: ``INFERENCE_PRECISION_HINT`` is always set,
``f32`` unless the model asks for ``bf16`` (OpenVINO's own default on a CPU with AVX-512-bf16 or
AMX is bf16, ~1e-2 off f32 on ResNet-50); ``bf16`` on a CPU without it fails the load. The
performance hint, streams and threads come from the model's ``openvino`` settings. Each compiled
network keeps a pool of infer requests, as many as OpenVINO finds optimal: concurrent requests
run on different streams, so every core stays busy under load (a single request runs on one).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from modelserver.core import platforms
from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import (LoadedModel, LoadOptions, Runtime, Signature, TensorSpec,
                                       build_signature_def_map)

log = logging.getLogger(__name__)

DEVICE = "CPU"
SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
PRECISIONS = ("f32", "bf16")
HINTS = ("latency", "throughput")

# OpenVINO element type names (ov.Type.get_type_name()) to TF DataType names.
DTYPES: dict[str, str] = {
    "f32": "DT_FLOAT", "f64": "DT_DOUBLE", "f16": "DT_HALF", "bf16": "DT_BFLOAT16", "i8": "DT_INT8",
    "i16": "DT_INT16", "i32": "DT_INT32", "i64": "DT_INT64", "u8": "DT_UINT8", "u16": "DT_UINT16",
    "u32": "DT_UINT32", "u64": "DT_UINT64", "boolean": "DT_BOOL", "string": "DT_STRING",
}

# pyopenvino can deadlock when two threads reach its first-use initialisations at once (seen: a
# load converting a model while another compiled one, each waiting for the other: a C++ static
# guard and the GIL). Loads and compiles therefore run one at a time; the server loads models
# in parallel threads. Inference does not take it.
_SERIAL = threading.RLock()

# What a stage of a signature's pipeline is: tensors by name in, tensors by name out.
Stage = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def _type_text(ov_type_name: str) -> str:
    """TF's DataTypeString (``float``, ``int64``) of an OpenVINO element type, for TF-worded errors."""
    dtype = DTYPES.get(ov_type_name)
    return dtype[3:].lower() if dtype else ov_type_name


def compile_config(options: LoadOptions, capabilities: list[str]) -> dict[str, str]:
    """The compile properties for the model's precision and ``openvino`` settings; refuses what cannot be honoured."""
    precision = options.precision
    if precision not in PRECISIONS:
        raise ServingError(Code.INVALID_ARGUMENT, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and "BF16" not in capabilities:
        raise ServingError(Code.FAILED_PRECONDITION,
                           "precision bf16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX); this CPU "
                           f"offers {', '.join(capabilities)}: use precision f32")
    settings = options.runtime_options
    hint = str(settings.get("performance_hint", "throughput"))
    if hint not in HINTS:
        raise ServingError(Code.INVALID_ARGUMENT, f"openvino.performance_hint {hint!r} is not one of {', '.join(HINTS)}")
    # No pinning: OpenVINO would pin each inference thread to a core for the length of a request,
    # and its layers split their work evenly between the threads, so a request waits for the
    # core that is busiest with something else (Envoy, the event loop, TensorFlow's decoding,
    # other models, other processes). Unpinned, the kernel moves a waiting thread to the free
    # core: at batch 1 on the 2-core machine under load, +28% images/s and a third lower worst
    # latency, with less CPU per image (bench/README.md, the OpenVINO bench's notes).
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint.upper(), "ENABLE_CPU_PINNING": "False"}
    for key, prop in (("streams", "NUM_STREAMS"), ("threads", "INFERENCE_NUM_THREADS")):
        value = settings.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ServingError(Code.INVALID_ARGUMENT, f"openvino.{key} must be a whole number >= 0, not {value!r}")
        if value:
            config[prop] = str(value)
    return config


class _Compiled:
    """One compiled model and its pool of infer requests, as many as OpenVINO finds optimal."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.size = max(int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")), 1)
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.size):
            self._requests.put(compiled.create_infer_request())

    def infer(self, feed: list[np.ndarray]) -> list[np.ndarray]:
        request = self._requests.get()
        try:
            results = request.infer(feed, share_inputs=True)
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a status
            lines = str(exc).strip().splitlines()
            raise ServingError(Code.INVALID_ARGUMENT, lines[-1] if lines else type(exc).__name__) from None
        finally:
            self._requests.put(request)
        return [results[i] for i in range(len(self.compiled.outputs))]

    def describe(self) -> str:
        """The compiled model's effective settings, read back from OpenVINO (not what was asked)."""
        def get(name: str) -> str:
            value = self.compiled.get_property(name)
            return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        return (f"precision {get('INFERENCE_PRECISION_HINT')}, hint {get('PERFORMANCE_HINT')}, "
                f"streams {get('NUM_STREAMS')}, threads {get('INFERENCE_NUM_THREADS')}, "
                f"pinning {get('ENABLE_CPU_PINNING')}, infer requests {self.size}")


#: Input shapes a network compiles besides its declared one, at most (each costs a conversion,
#: a compile and their memory: a client cannot make a model compile without end).
MAX_SHAPE_VARIANTS = 8


class Network:
    """A converted network: one stage of a signature, compiled with the model's settings.

    ``feeds[i]`` names the tensor fed to input port i, ``fetches[i]`` the name output port i's
    value gets. Requests are checked against the ports' types first, so a bad request is a
    client error with a clear message, never a crash inside the plugin.

    Shapes: the CPU plugin compiles for a rank. An input of no known rank (``ParseExample`` of a
    placeholder of unknown shape: any Classify signature) compiles at the first request of each
    rank. A SavedModel's placeholder shape is a hint TensorFlow does not enforce when it is fed
    (TF Serving's own half_plus_two declares ``x`` as ``[-1, 1]`` and answers the user guide's
    ``{"instances": [1.0, 2.0, 5.0]}``, a ``[3]``), so where ``convert_again`` is given (the
    network of a SavedModel) an input the declared shape does not admit gets a variant: the
    network converted again with that input of no known shape and compiled for its rank, at its
    first request; where its ops cannot take that rank, the request fails as on TensorFlow, an
    INVALID_ARGUMENT naming the declared shape. IR and ONNX files declare the shapes they take
    (as ONNX Runtime holds them): other shapes are refused. At most :data:`MAX_SHAPE_VARIANTS`
    variants, compiled or refused, per network.
    """

    def __init__(self, model: Any, compile_model: Callable[[Any], Any], feeds: list[str], fetches: list[str],
                 aliases: Mapping[str, str], label: str,
                 convert_again: Callable[[frozenset[str]], Any] | None = None) -> None:
        self.feeds = feeds
        self.fetches = fetches
        self.label = label
        self._compile_model = compile_model
        self._convert_again = convert_again
        self._ports = [(port.get_element_type(), port.get_partial_shape()) for port in model.inputs]
        self._numpy_types = [element.to_dtype() for element, _ in self._ports]
        self._open = [shape.rank.is_dynamic for _, shape in self._ports]
        self._model = model if any(self._open) else None  # to compile more ranks of it
        self._aliases = aliases  # tensor name -> the input alias a client knows it by
        # per input: None (as declared) or the rank it is compiled for -> compiled, or why not
        self._variants: dict[tuple[int | None, ...], _Compiled | str] = {}
        self._lock = threading.Lock()
        if not any(self._open):
            self._variants[(None,) * len(self._ports)] = self._compile(model)

    @property
    def compiled(self) -> list[Any]:
        return [c.compiled for c in self._variants.values() if isinstance(c, _Compiled)]

    def __call__(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = [self._checked(i, values[name]) for i, name in enumerate(self.feeds)]
        key = tuple(self._rank_key(i, value) for i, value in enumerate(feed))
        compiled = self._variants.get(key)
        if compiled is None:
            compiled = self._compile_for(key)
        if isinstance(compiled, str):
            shapes = self._refusal({i: feed[i].shape for i, rank in enumerate(key)
                                    if rank is not None and not self._open[i]})
            raise ServingError(Code.INVALID_ARGUMENT, f"{shapes} Please fix either the inputs or the model.{compiled}"
                               if shapes else compiled.strip())
        return dict(zip(self.fetches, compiled.infer(feed)))

    def _rank_key(self, index: int, value: np.ndarray) -> int | None:
        """None when the declared shape takes ``value``, else the rank to compile it for."""
        if self._open[index]:
            return value.ndim
        if self._ports[index][1].compatible(_partial_shape(value.shape)):
            return None
        if self._convert_again is None:
            raise ServingError(Code.INVALID_ARGUMENT, f"{self._refusal({index: value.shape})} "
                                                      "Please fix either the inputs or the model.")
        return value.ndim

    def _refusal(self, shapes: Mapping[int, tuple[int, ...]]) -> str:
        """TensorFlow's words for inputs (by port) whose shapes the declared ones do not admit."""
        return "; ".join(f"Invalid shape for input: {self._alias(i)} Got: {list(shape)} Expected: {self._ports[i][1]}"
                         for i, shape in shapes.items())

    def _compile_for(self, key: tuple[int | None, ...]) -> "_Compiled | str":
        """The variant for inputs of these ranks, compiled now; or why not (a text for the error)."""
        import openvino as ov

        with self._lock, _SERIAL:
            if key in self._variants:
                return self._variants[key]
            if len(self._variants) > MAX_SHAPE_VARIANTS:
                return f" (this model compiled {MAX_SHAPE_VARIANTS} other input shapes already)"
            unshaped = frozenset(self.feeds[i] for i, rank in enumerate(key) if rank is not None and not self._open[i])
            try:
                model = self._convert_again(unshaped) if unshaped else self._model.clone()
                model.reshape({model.inputs[i]: ov.PartialShape.dynamic(ov.Dimension(rank))
                               for i, rank in enumerate(key) if rank is not None})
                self._variants[key] = self._compile(model)
            except Exception as exc:  # noqa: BLE001 - the network's ops cannot take that shape
                lines = str(exc).strip().splitlines()
                reason = exc.message if isinstance(exc, ServingError) else lines[-1] if lines else type(exc).__name__
                log.info("openvino: %s: inputs of ranks %s refused: %s", self.label, key, reason)
                # An input of a rank the declared shape does not admit: TensorFlow's words (the
                # caller's); one of no declared rank: the compiler's.
                self._variants[key] = "" if unshaped else f" {reason}"
            return self._variants[key]

    def _compile(self, model: Any) -> _Compiled:
        compiled = _Compiled(self._compile_model(model))
        log.info("openvino: %s: %s", self.label, compiled.describe())
        return compiled

    def _alias(self, index: int) -> str:
        return self._aliases.get(self.feeds[index], self.feeds[index])

    def _checked(self, index: int, value: np.ndarray) -> np.ndarray:
        element = self._ports[index][0]
        if value.dtype != self._numpy_types[index]:
            wanted, got = _type_text(element.get_type_name()), _type_text(_ov_type_name(value.dtype))
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expects arg[{index}] ({self._alias(index)}) to be {wanted} but {got} is provided")
        # not np.ascontiguousarray: it makes a scalar (rank 0) an array of rank 1
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)


def perturbed(model: Any, scale: float) -> Any:
    """A copy of ``model`` whose floating-point weights (every f32 constant) are
    multiplied by ``1 + scale``: the model settings' test-only ``openvino.perturb_weights``, which
    makes an honestly wrong OpenVINO copy of a model, to show that ``platform: auto`` refuses a
    runtime whose answers differ from the reference's."""
    import openvino as ov

    copy = model.clone()
    for op in copy.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32:
            continue
        replacement = ov.op.Constant((op.get_data() * (1.0 + scale)).astype(np.float32))
        op.output(0).replace(replacement.output(0))
    return copy


def _partial_shape(dims: tuple[int, ...]) -> Any:
    import openvino as ov

    return ov.PartialShape(list(dims))


def _ov_type_name(dtype: np.dtype) -> str:
    import openvino as ov

    try:
        return ov.Type(dtype).get_type_name()
    except Exception:  # noqa: BLE001 - a numpy type OpenVINO has no name for
        return str(dtype)


class OpenVinoModel(LoadedModel):
    """A version whose signatures each run as a pipeline of stages (TensorFlow, then OpenVINO)."""

    def __init__(self, path: str, signatures: Mapping[str, Signature], pipelines: Mapping[str, list[Stage]],
                 sigdef_map: Callable[[], Any]) -> None:
        super().__init__(path, signatures)
        self._pipelines = dict(pipelines)
        self._sigdef_map = sigdef_map
        self._sigdef_cache: Any = None
        self._lock = threading.Lock()

    @property
    def networks(self) -> dict[str, list[Network]]:
        """Each signature's compiled networks (tests read their properties)."""
        return {name: [s for s in stages if isinstance(s, Network)] for name, stages in self._pipelines.items()}

    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        stages = self._pipelines.get(signature.name)
        if stages is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature.name}" not found.')
        values = {signature.inputs[alias].tensor_name: value for alias, value in inputs.items()}
        for stage in stages:
            values.update(stage(values))
        return {alias: values[spec.tensor_name] for alias, spec in signature.outputs.items()}

    def signature_def_map(self) -> Any:
        with self._lock:
            if self._sigdef_cache is None:
                self._sigdef_cache = self._sigdef_map()
            return self._sigdef_cache

    def close(self) -> None:
        self._pipelines.clear()  # in-flight runs keep their own references to their stages


def _spec(port: Any) -> TensorSpec:
    name = port.get_any_name()
    element = port.get_element_type().get_type_name()
    dtype = DTYPES.get(element)
    if dtype is None:
        raise ServingError(Code.UNIMPLEMENTED, f"tensor {name} has element type {element}, which cannot be served")
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec(alias=name, dtype=dtype, shape=dims, tensor_name=name)


class OpenVinoRuntime(Runtime):
    """``model_platform: "openvino"``: IR, ONNX and SavedModels on OpenVINO's CPU plugin."""

    platform = "openvino"
    precisions = PRECISIONS   # bf16 only where the CPU has it: compile_config says so otherwise

    def __init__(self) -> None:
        import openvino as ov

        with _SERIAL:
            self.core = ov.Core()
            self.capabilities = list(self.core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))

    def load(self, path: str, options: LoadOptions) -> LoadedModel:
        config = compile_config(options, self.capabilities)
        kind = platforms.detect_platform(Path(path))
        if kind is None:
            raise ServingError(Code.NOT_FOUND, f"Could not find a model at supplied export directory path: {path}; "
                                               f"expected {platforms.describe_markers()}")
        started = time.monotonic()
        with _SERIAL:
            if kind == "tensorflow":
                from modelserver.runtimes import openvino_tf

                model = openvino_tf.load(path, options, functools.partial(self.network, config, options))
            else:
                model = self._load_file(path, kind, config, options)
        log.info("openvino: %s (%s) ready in %.1f s", path, kind, time.monotonic() - started)
        return model

    def network(self, config: Mapping[str, str], options: LoadOptions, model: Any, feeds: list[str],
                fetches: list[str], aliases: Mapping[str, str], label: str,
                convert_again: Callable[[frozenset[str]], Any] | None = None) -> Network:
        """A :class:`Network` of ``model`` compiled with the model's settings."""
        scale = float(options.runtime_options.get("perturb_weights", 0.0))

        def compile_model(source: Any) -> Any:
            if scale:
                source = perturbed(source, scale)
            try:
                return self.core.compile_model(source, DEVICE, dict(config))
            except Exception as exc:  # noqa: BLE001 - a model OpenVINO cannot compile fails its load
                lines = str(exc).strip().splitlines()
                raise ServingError(Code.INVALID_ARGUMENT, f"OpenVINO cannot compile {label}: "
                                                          f"{lines[-1] if lines else type(exc).__name__}") from None
        return Network(model, compile_model, feeds, fetches, aliases, label, convert_again)

    def _load_file(self, path: str, kind: str, config: Mapping[str, str], options: LoadOptions) -> OpenVinoModel:
        """IR or ONNX: one ``serving_default`` predict signature from the model's inputs and outputs."""
        model_file = Path(path) / (platforms.ONNX_MODEL if kind == "onnx" else platforms.OPENVINO_XML)
        try:
            model = self.core.read_model(str(model_file))
        except Exception as exc:  # noqa: BLE001 - report any reader failure as the load status
            raise ServingError(Code.INVALID_ARGUMENT, f"Failed to read {kind} model at {model_file}: {exc}") from None
        inputs = [_spec(port) for port in model.inputs]
        outputs = [_spec(port) for port in model.outputs]
        signature = Signature(name=SIGNATURE, method_name=PREDICT_METHOD,
                              inputs={s.alias: s for s in sorted(inputs, key=lambda s: s.alias)},
                              outputs={s.alias: s for s in sorted(outputs, key=lambda s: s.alias)})
        network = self.network(config, options, model, [s.tensor_name for s in inputs], [s.tensor_name for s in outputs], {},
                               f"{path} signature {SIGNATURE}")
        signatures = {SIGNATURE: signature}
        return OpenVinoModel(path, signatures, {SIGNATURE: [network]}, lambda: build_signature_def_map(signatures))
