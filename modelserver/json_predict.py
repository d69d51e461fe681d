"""Predict request and response bodies (``FillPredictRequestFromJson``, ``MakeJsonFromTensors``).

Row (``instances``) and columnar (``inputs``) requests become input tensors keyed by alias; output
tensors become ``{"predictions": ...}`` or ``{"outputs": ...}``. Responses are written as compact
JSON text assembled from per-element texts, so floats keep TF Serving's ``WriteDecimal`` form.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Mapping

import numpy as np

from modelserver import json_numbers
from modelserver.json_tensor import (InputCodec, build_tensor, dtype_of_array, fast_tensor,
                                               is_b64_object, slow_values, value_to_tensor)
from modelserver.json_text import dump_string, format_decimals, json_value_to_string, parse_json_object
from modelserver.core.status import ServingError, invalid_argument

ROW = "row"
COLUMNAR = "columnar"
PIECE_VALUES = 1 << 16  # large outputs are written this many values at a time (see _rows)


# ---------------------------------------------------------------------------------------------
# Predict requests: FillPredictRequestFromJson


def request_signature_name(doc: dict[str, Any]) -> str:
    """``FillSignature``: the optional ``signature_name`` (empty means the default)."""
    name = doc.get("signature_name", "")
    if type(name) is not str:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return name


def decode_predict(doc: dict[str, Any], codecs: Mapping[str, InputCodec],
                   numeric: json_numbers.NumericArray | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The request format (ROW or COLUMNAR) and the input tensors keyed by alias.

    ``codecs`` maps the signature's input aliases, in sorted order, to their codecs. ``numeric``
    is the large numeric array ``json_numbers.parse_predict_body`` left as text in ``doc``: when
    it cannot give the tensor, the whole body is parsed as usual.
    """
    if not codecs:
        raise invalid_argument("Failed to get input map for signature")
    given: dict[str, np.ndarray] = {}
    if numeric is not None:
        given = json_numbers.decode(doc, numeric, codecs) or {}
        if not given:
            doc = parse_json_object(numeric.body)
        elif numeric.name is None:
            return (ROW if numeric.key == "instances" else COLUMNAR), given
    has_instances = "instances" in doc
    if has_instances and "inputs" in doc:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} Not formatted correctly expecting only "
                               "one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if type(instances) is not list:
            raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} Excepting 'instances' "
                                   "to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} No values in 'instances' array")
        return ROW, _from_instances(instances, codecs)
    if "inputs" in doc:
        return COLUMNAR, _from_inputs(doc["inputs"], codecs, given)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not is_b64_object(value)


def _from_instances(instances: list, codecs: Mapping[str, InputCodec]) -> dict[str, np.ndarray]:
    if type(instances[0]) is not dict and len(codecs) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    if not _is_element_object(instances[0]):
        name, codec = next(iter(codecs.items()))
        arr = fast_tensor(instances, codec)
        if arr is not None:
            return {name: arr}
    else:
        fast = _fast_instance_objects(instances, codecs)
        if fast is not None:
            return fast
    return _slow_instances(instances, codecs)


def _fast_instance_objects(instances: list, codecs: Mapping[str, InputCodec]) -> dict[str, np.ndarray] | None:
    """Row objects with exactly the input keys, converted column by column."""
    names = codecs.keys()
    if set(map(type, instances)) != {dict} or any(item.keys() != names for item in instances):
        return None
    out: dict[str, np.ndarray] = {}
    for name, codec in codecs.items():
        arr = fast_tensor([item[name] for item in instances], codec)
        if arr is None:
            return None
        out[name] = arr
    return out


class _Stacker:
    """Collects one input's per-instance values; enforces ``AddInstanceItem``'s size/shape rules."""

    def __init__(self, codec: InputCodec) -> None:
        self.codec = codec
        self.shape: list[int] | None = None
        self.size = 0
        self.values: list = []

    def add(self, item: Any) -> None:
        shape, flat = slow_values(item, self.codec)
        if self.shape is None:
            self.shape, self.size = shape, len(flat)
        elif len(flat) != self.size:
            raise invalid_argument(f"Expecting tensor size: {self.size} but got: {len(flat)}")
        elif shape != self.shape:
            raise invalid_argument(f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}")
        self.values.extend(flat)

    def tensor(self, count: int) -> np.ndarray:
        return build_tensor(self.codec, self.values, [count] + (self.shape or []))


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _slow_instances(instances: list, codecs: Mapping[str, InputCodec]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList`` element by element, for its exact errors."""
    objects = _is_element_object(instances[0])
    stackers: dict[str, _Stacker] = {}
    names = sorted(codecs)
    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    if name not in codecs:
                        raise invalid_argument(f"JSON object: does not have named input: {name}")
                    stackers.setdefault(name, _Stacker(codecs[name])).add(item)
                except ServingError as err:
                    raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                           f"Error: {err.to_string()}") from None
            if sorted(element) != names:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{json_value_to_string(element)} keys must be equal to: {','.join(names)}")
        else:
            if _is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            name = names[0]
            try:
                stackers.setdefault(name, _Stacker(codecs[name])).add(element)
            except ServingError as err:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. "
                                       f"Error: {err.to_string()}") from None
    return {name: stacker.tensor(len(instances)) for name, stacker in stackers.items()}


def _from_inputs(value: Any, codecs: Mapping[str, InputCodec],
                 given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInputsMap``; ``given`` holds inputs already decoded (json_numbers)."""
    if type(value) is not dict or is_b64_object(value):
        if len(codecs) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        name, codec = next(iter(codecs.items()))
        return {name: value_to_tensor(value, codec)}
    out: dict[str, np.ndarray] = {}
    for name, codec in codecs.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = given[name] if given and name in given else value_to_tensor(value[name], codec)
    return out


# ---------------------------------------------------------------------------------------------
# Predict responses: MakeJsonFromTensors


def _leaf_texts(arr: np.ndarray, alias: str) -> list[str]:
    """Every element of ``arr`` (flattened, C order) as JSON text (``AddSingleValueAndAdvance``)."""
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype.itemsize <= 8:
        return format_decimals(arr if arr.dtype != np.float16 else arr.astype(np.float32))
    if kind in "iu" and arr.dtype != np.uint16:
        return list(map(str, arr.ravel().tolist()))
    if kind == "b":
        return ["true" if v else "false" for v in arr.ravel().tolist()]
    if kind in "OSU":
        values = arr.ravel().tolist()
        if alias.endswith("_bytes"):
            return ['{"b64": "' + base64.b64encode(_as_bytes(v)).decode("ascii") + '"}' for v in values]
        return [dump_string(_as_bytes(v).decode("utf-8", "replace")) for v in values]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype_of_array(arr).tf_name}")


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _nest(texts: list[str], shape: tuple[int, ...]) -> list[str]:
    """Group flat element texts into nested JSON arrays: one text per index of ``shape[0]``."""
    items = texts
    for axis in range(len(shape) - 1, 0, -1):
        dim = shape[axis]
        if dim == 0:
            items = ["[]"] * math.prod(shape[:axis])
        elif dim == 1:
            items = ["[" + item + "]" for item in items]
        else:
            items = ["[" + ", ".join(items[i:i + dim]) + "]" for i in range(0, len(items), dim)]
    return items


def tensor_to_json(arr: np.ndarray, alias: str) -> str:
    """A whole tensor in nested form (columnar responses)."""
    if arr.ndim == 0:
        return _leaf_texts(arr, alias)[0]
    return "[" + ", ".join(_rows(arr, alias)) + "]"


def encode_predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar ones."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if fmt == COLUMNAR:
        if len(outputs) == 1:
            (alias, arr), = outputs.items()
            if arr.ndim and arr.size > PIECE_VALUES:
                return _document('{"outputs": [', _rows(arr, alias), "]}")
            body = tensor_to_json(arr, alias)
        else:
            body = "{" + ", ".join(f"{dump_string(a)}: {tensor_to_json(t, a)}" for a, t in outputs.items()) + "}"
        return ('{"outputs": ' + body + "}").encode("utf-8")
    batch = -1
    for alias, arr in outputs.items():
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch >= 0 and arr.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {alias} has inconsistent batch size: {arr.shape[0]} "
                                   f"expecting: {batch}")
        batch = arr.shape[0]
    if len(outputs) == 1:
        (alias, arr), = outputs.items()
        rows = _rows(arr, alias)
        if arr.size > PIECE_VALUES:
            return _document('{"predictions": [', rows, "]}")
    else:
        per_output = {alias: _nest(_leaf_texts(arr, alias), arr.shape) for alias, arr in outputs.items()}
        keys = {alias: dump_string(alias) + ": " for alias in per_output}
        rows = ["{" + ", ".join(keys[a] + per_output[a][i] for a in per_output) + "}" for i in range(batch)]
    return ('{"predictions": [' + ", ".join(rows) + "]}").encode("utf-8")


def _document(prefix: str, pieces: list[str], suffix: str) -> bytes:
    """``prefix + ", ".join(pieces) + suffix`` as UTF-8, for a large answer: each piece is encoded
    (and dropped) on its own, so the text exists about twice at the peak rather than four times."""
    encoded = [piece.encode("utf-8") for piece in pieces]
    pieces.clear()
    encoded[0] = prefix.encode("utf-8") + encoded[0]
    encoded[-1] += suffix.encode("utf-8")
    return b", ".join(encoded)


def _rows(arr: np.ndarray, alias: str) -> list[str]:
    """The JSON text of each ``arr[i]``; for a large ``arr``, of each group of rows (already joined
    by ", "), so the texts of at most :data:`PIECE_VALUES` values exist at once as Python objects."""
    if arr.size <= PIECE_VALUES or arr.shape[0] < 2:
        return _nest(_leaf_texts(arr, alias), arr.shape)
    step = max(1, PIECE_VALUES // max(1, arr[0].size))
    return [", ".join(_nest(_leaf_texts(arr[i:i + step], alias), arr[i:i + step].shape))
            for i in range(0, arr.shape[0], step)]
