"""Classify, Regress and MultiInference: one core for the REST and gRPC front ends.

Both APIs reduce a request to a 1-D string tensor of serialized ``tf.train.Example``s (context
serialized in front of each example, which parses as a proto merge, as
``InputToSerializedExampleTensor`` does), fed to the signature's single input ``inputs``. The
core checks the signature (``PreProcessClassification``/``PreProcessRegression``), runs it and
validates the outputs (``PostProcess*Result``), returning numpy arrays; REST turns them into
``{"results": ...}`` (TF Serving's key; its docs say "result") and gRPC into result protos.
Method names are not checked, as with TF Serving's default
``--enable_signature_method_name_check=false`` (TF2 exports mark every signature "predict").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import unquote

import numpy as np

from modelserver.json_predict import request_signature_name
from modelserver.json_tensor import decode_b64_object, dtype_of_array, is_b64_object
from modelserver.json_text import (FLT_MAX, dump_string, format_decimals, json_type_string,
                                             json_value_to_string, parse_json_object, string_bytes)
from modelserver.monitoring import record_examples
from modelserver.core.status import Code, ServingError, invalid_argument, utf8_text
from modelserver.runtimes import LoadedModel, Signature

if TYPE_CHECKING:
    from modelserver.handlers import RestApi

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_KINDS = {"float_list": "float", "int64_list": "int64", "bytes_list": "bytes", None: "UNKNOWN"}


# ---------------------------------------------------------------------------------------------
# REST: JSON examples (FillClassifyRegressRequestFromJson)


def _add_value(value: Any, name: str, feature: Any) -> None:
    """``AddValueToFeature``: one JSON value into a ``tf.train.Feature``."""
    current = feature.WhichOneof("kind")

    def want(kind: str) -> None:
        if current not in (None, kind):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {_KINDS[current]}")

    kind = type(value)
    if value is None or kind is list or (kind is dict and not is_b64_object(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type_string(value)}")
    if kind is bool:
        want("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif kind is dict:
        want("bytes_list")
        feature.bytes_list.value.append(decode_b64_object(value))
    elif kind is str:
        want("bytes_list")
        feature.bytes_list.value.append(string_bytes(value))
    elif kind is float or not -(2 ** 63) <= value < 2 ** 64:
        want("float_list")
        number = float(value)
        if math.isfinite(number) and not -FLT_MAX <= number <= FLT_MAX:
            raise invalid_argument(f"Cannot convert JSON value: {json_value_to_string(value)} to float without "
                                   "loss of precision.")
        feature.float_list.value.append(number)
    else:
        want("int64_list")
        if value >= 2 ** 63:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


def _example(value: Any) -> bytes:
    """``MakeExampleFromJsonObject``, serialized."""
    from tensorflow.core.example import example_pb2

    if type(value) is not dict:
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type_string(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        # A key that is not UTF-8 names no feature of any model (protobuf refuses it as it is).
        feature = example.features.feature[utf8_text(name)]
        for item in (content if type(content) is list else [content]):
            _add_value(item, name, feature)
    return example.SerializeToString()


def serialized_examples(doc: dict[str, Any]) -> list[bytes]:
    """``FillClassifyRegressRequestFromJson``: every example, context first when given."""
    context = _example(doc["context"]) if "context" in doc else b""
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} When method is classify, key 'examples' "
                               "is expected and was not found")
    examples = doc["examples"]
    if type(examples) is not list:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} Expecting 'examples' value to be an "
                               "list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} 'examples' value is an empty array")
    return [context + _example(item) for item in examples]


# ---------------------------------------------------------------------------------------------
# gRPC: tensorflow.serving.Input


def serialized_from_input(request_input: Any) -> list[bytes]:
    """``InputToSerializedExampleTensor``: the examples of an ``Input`` proto, context first."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid_argument("Input is empty.")
    return serialized


# ---------------------------------------------------------------------------------------------
# The shared core


def _shape_text(arr: np.ndarray) -> str:
    """``TensorShape::DebugString``."""
    return "[" + ",".join(str(d) for d in arr.shape) + "]"


def _debug(model: LoadedModel, signature: Signature) -> str:
    """The SignatureDef's ``DebugString`` for error messages (built only when failing)."""
    return str(model.signature_def_map().signature_def[signature.name])


def _signature(model: LoadedModel, signature_name: str) -> Signature:
    name = signature_name or DEFAULT_SIGNATURE
    signature = model.signatures.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    return signature


def classification_signature(model: LoadedModel, signature_name: str) -> Signature:
    """``GetClassificationSignatureDef`` + ``PreProcessClassification``."""
    signature = _signature(model, signature_name)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise ServingError(Code.FAILED_PRECONDITION,
                           f"No classification inputs found in SignatureDef: {_debug(model, signature)}")
    if not {"classes", "scores"} & set(signature.outputs):
        raise ServingError(Code.FAILED_PRECONDITION,
                           'Expected classification signature outputs to contain at least one of "classes" or '
                           f'"scores". Signature was: {_debug(model, signature)}')
    return signature


def regression_signature(model: LoadedModel, signature_name: str) -> Signature:
    """``GetRegressionSignatureDef`` + ``PreProcessRegression``."""
    signature = _signature(model, signature_name)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise ServingError(Code.FAILED_PRECONDITION,
                           f"No regression inputs found in SignatureDef: {_debug(model, signature)}")
    if "outputs" not in signature.outputs:
        raise ServingError(Code.FAILED_PRECONDITION,
                           f"No regression outputs found in SignatureDef: {_debug(model, signature)}")
    return signature


def _feed(serialized: Sequence[bytes]) -> np.ndarray:
    feed = np.empty(len(serialized), dtype=object)
    feed[:] = serialized
    return feed


@dataclass(frozen=True)
class Classifications:
    """``[N, K]`` labels and scores; either may be absent (then the proto field is unset)."""

    classes: np.ndarray | None
    scores: np.ndarray | None

    @property
    def width(self) -> int:
        present = self.scores if self.scores is not None else self.classes
        return present.shape[1]


def _check_classes(arr: np.ndarray, n: int, kind: str) -> None:
    if arr.ndim != 2:
        raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(arr)}")
    if kind == "classes" and arr.dtype.kind not in "OSU":
        raise invalid_argument(f"Expected classes Tensor of DT_STRING. Got: {dtype_of_array(arr).enum_name}")
    if kind == "scores" and arr.dtype != np.float32:
        raise invalid_argument(f"Expected scores Tensor of DT_FLOAT. Got: {dtype_of_array(arr).enum_name}")
    if arr.shape[0] != n:
        raise invalid_argument(f"Expected {kind} output batch size of {n}. Got: {arr.shape[0]}")


def classify(model: LoadedModel, signature: Signature, serialized: Sequence[bytes]) -> Classifications:
    """Run a checked classification signature (``PostProcessClassificationResult``)."""
    outputs = model.run(signature.name, {"inputs": _feed(serialized)})
    n = len(serialized)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is not None:
        _check_classes(classes, n, "classes")
    if scores is not None:
        _check_classes(scores, n, "scores")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} "
                               f"vs. {scores.shape[1]}")
    return Classifications(classes, scores)


def regress(model: LoadedModel, signature: Signature, serialized: Sequence[bytes]) -> np.ndarray:
    """Run a checked regression signature; one float per example (``PostProcessRegressionResult``)."""
    values = model.run(signature.name, {"inputs": _feed(serialized)})["outputs"]
    n = len(serialized)
    if values.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {dtype_of_array(values).enum_name}")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                               f"{_shape_text(values)}")
    if values.shape[0] != n:
        raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {values.shape[0]}")
    return values.reshape(-1)


@dataclass(frozen=True)
class Task:
    """One MultiInference task, already checked: its signature and what to run it as."""

    signature: Signature
    method: str          # CLASSIFY_METHOD | REGRESS_METHOD


def multi_inference_tasks(model: LoadedModel, tasks: Sequence[tuple[str, str, str]]) -> list[Task]:
    """``TensorFlowMultiInferenceRunner::Infer``'s checks; ``tasks`` are (model, signature, method).

    Signatures may read different input tensors (a TF2 export gives each its own placeholder):
    TF Serving feeds the same examples to every task's input since 2020, and so does
    :func:`run_task`, one runtime call per task.
    """
    model_name = ""
    seen: set[str] = set()
    checked: list[Task] = []
    for name, signature_name, method in tasks:
        if not name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if model_name and name != model_name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = name
        signature_name = signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if signature_name not in model.signatures:
            raise invalid_argument(f"Requested signature not found in model graph: {signature_name}")
        check: Callable[[LoadedModel, str], Signature]
        if method == CLASSIFY_METHOD:
            check = classification_signature
        elif method == REGRESS_METHOD:
            check = regression_signature
        else:
            raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")
        checked.append(Task(check(model, signature_name), method))
    return checked


def run_task(model: LoadedModel, task: Task, serialized: Sequence[bytes]) -> Classifications | np.ndarray:
    """One checked MultiInference task (each task is one runtime call on the shared examples)."""
    if task.method == CLASSIFY_METHOD:
        return classify(model, task.signature, serialized)
    return regress(model, task.signature, serialized)


# ---------------------------------------------------------------------------------------------
# REST responses


def classifications_json(result: Classifications) -> str:
    """``[[[label, score], ...], ...]``; REST writes score 0.0 and label "" when absent."""
    n = (result.scores if result.scores is not None else result.classes).shape[0]
    width = result.width
    scores = format_decimals(result.scores) if result.scores is not None else ["0.0"] * (n * width)
    rows = []
    for i in range(n):
        pairs = []
        for k in range(width):
            label = result.classes[i, k] if result.classes is not None else b""
            if isinstance(label, bytes):
                label = label.decode("utf-8", "replace")
            pairs.append(f"[{dump_string(str(label))}, {scores[i * width + k]}]")
        rows.append("[" + ", ".join(pairs) + "]")
    return "[" + ", ".join(rows) + "]"


def classify_or_regress(api: RestApi, verb: str, name: str, version: str | None, label: str | None,
                        body: bytes) -> bytes:
    """Answer REST ``:classify`` or ``:regress`` (runs in the runtime thread pool)."""
    doc = parse_json_object(body)
    signature_name = request_signature_name(doc)
    serialized = serialized_examples(doc)
    model = api._lookup(name, version, label).model
    record_examples(unquote(name), len(serialized))
    if verb == "regress":
        values = regress(model, regression_signature(model, signature_name), serialized)
        return ('{"results": [' + ", ".join(format_decimals(values)) + "]}").encode("utf-8")
    result = classify(model, classification_signature(model, signature_name), serialized)
    return ('{"results": ' + classifications_json(result) + "}").encode("utf-8")
