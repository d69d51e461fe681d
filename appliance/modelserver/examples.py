"""Classify and regress over REST: JSON examples to serialized ``tf.train.Example`` and back.

``{"examples": [...], "context": {...}}`` becomes one serialized Example per entry (the context
serialized in front, which parses as a proto merge, as ``InputToSerializedExampleTensor``
does), fed as a 1-D string tensor to the signature's single input ``inputs``. Results come back
as ``{"results": ...}`` (TF Serving's key; its docs say "result"). Signature checks follow
``classifier.cc``/``regressor.cc``; method names are not checked, as with TF Serving's default
``--enable_signature_method_name_check=false``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.modelserver.json_predict import request_signature_name
from appliance.modelserver.json_tensor import decode_b64_object, is_b64_object
from appliance.modelserver.json_text import (FLT_MAX, dump_string, format_decimals, json_type_string,
                                             json_value_to_string, parse_json_object)
from appliance.modelserver.status import invalid_argument

if TYPE_CHECKING:
    from appliance.modelserver.handlers import RestApi

DEFAULT_SIGNATURE = "serving_default"
_KINDS = {"float_list": "float", "int64_list": "int64", "bytes_list": "bytes", None: "UNKNOWN"}


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
        feature.bytes_list.value.append(value.encode("utf-8", "surrogatepass"))
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
        feature = example.features.feature[name]
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


def _check_signature(api: RestApi, state: Any, signature_name: str, verb: str) -> Any:
    name = signature_name or DEFAULT_SIGNATURE
    signature = state.model.signatures.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    debug = str(state.model.signature_def_map().signature_def[name])
    if "inputs" not in signature.inputs:
        what = "classification" if verb == "classify" else "regression"
        raise invalid_argument(f"No {what} inputs found in SignatureDef: {debug}")
    if verb == "regress":
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if "outputs" not in signature.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {debug}")
    elif not {"classes", "scores"} & set(signature.outputs):
        raise invalid_argument(f"Expected classification signature outputs to contain classes or scores: {debug}")
    return signature


def _batch_check(arr: np.ndarray, n: int, alias: str) -> np.ndarray:
    if arr.ndim == 1 and alias == "outputs":
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(arr.shape)}")
    if arr.shape[0] != n:
        raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {arr.shape[0]}")
    return arr


def classify_or_regress(api: RestApi, verb: str, name: str, version: str | None, label: str | None,
                        body: bytes) -> bytes:
    """Answer ``:classify`` or ``:regress`` (runs in the runtime thread pool)."""
    doc = parse_json_object(body)
    signature_name = request_signature_name(doc)
    serialized = serialized_examples(doc)
    state = api._lookup(name, version, label)
    signature = _check_signature(api, state, signature_name, verb)
    feed = np.empty(len(serialized), dtype=object)
    feed[:] = serialized
    outputs = state.model.run(signature.name, {"inputs": feed})
    n = len(serialized)
    if verb == "regress":
        values = outputs["outputs"]
        if values.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise invalid_argument("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                                   f"but got {list(values.shape)}")
        if values.shape[0] != n:
            raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {values.shape[0]}")
        return ('{"results": [' + ", ".join(format_decimals(values.reshape(-1))) + "]}").encode("utf-8")
    scores = outputs.get("scores")
    classes = outputs.get("classes")
    if scores is not None:
        scores = _batch_check(scores.astype(np.float32, copy=False), n, "scores")
    if classes is not None:
        classes = _batch_check(classes, n, "classes")
    width = (scores if scores is not None else classes).shape[1]
    score_texts = format_decimals(scores) if scores is not None else ["0.0"] * (n * width)
    rows = []
    for i in range(n):
        pairs = []
        for k in range(width):
            label_text = classes[i, k] if classes is not None else b""
            if isinstance(label_text, bytes):
                label_text = label_text.decode("utf-8", "replace")
            pairs.append(f"[{dump_string(str(label_text))}, {score_texts[i * width + k]}]")
        rows.append("[" + ", ".join(pairs) + "]")
    return ('{"results": [' + ", ".join(rows) + "]}").encode("utf-8")
