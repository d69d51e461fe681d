"""JSON request bodies to numpy tensors and tensors back to JSON, as ``util/json_tensor.cc``.

Two paths for requests: a fast path that checks a whole nested list with C-level iteration
(``map(type, ...)``, ``chain``) and hands it to numpy in one call, and a faithful slow path that
walks the value element by element exactly like TF Serving's ``FillTensorProto`` to produce its
error messages. The slow path runs only when the fast one declines, so a valid request pays for
the fast path alone and an invalid one always gets TF Serving's exact message.

numpy holds at most 64 dimensions (TF 254): a deeper value gets the error TF's ``FromProto``
gives past its own limit, ``tensor parsing error: <alias>``, after the value's other checks.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable

import numpy as np

from modelserver.json_text import FLT_MAX, RAW_BYTES, json_type_string, json_value_to_string, string_bytes
from modelserver.core.status import Code, ServingError, invalid_argument

_I32 = (-(2 ** 31), 2 ** 31 - 1)
_I64 = (-(2 ** 63), 2 ** 63 - 1)
_U32 = (0, 2 ** 32 - 1)
_U64 = (0, 2 ** 64 - 1)
MAX_RANK = 64  # numpy's limit (TF's is 254); gRPC tensors too (tensor_proto)


@dataclass(frozen=True)
class DType:
    """One TF DataType: its enum name, ``DataTypeString`` name and numpy dtype."""

    enum_name: str
    tf_name: str
    numpy: Any  # numpy dtype, or None when not representable


DTYPES: dict[str, DType] = {d.enum_name: d for d in [
    DType("DT_FLOAT", "float", np.dtype(np.float32)),
    DType("DT_DOUBLE", "double", np.dtype(np.float64)),
    DType("DT_INT32", "int32", np.dtype(np.int32)),
    DType("DT_UINT8", "uint8", np.dtype(np.uint8)),
    DType("DT_INT16", "int16", np.dtype(np.int16)),
    DType("DT_INT8", "int8", np.dtype(np.int8)),
    DType("DT_STRING", "string", np.dtype(object)),
    DType("DT_COMPLEX64", "complex64", np.dtype(np.complex64)),
    DType("DT_INT64", "int64", np.dtype(np.int64)),
    DType("DT_BOOL", "bool", np.dtype(np.bool_)),
    DType("DT_QINT8", "qint8", None),
    DType("DT_QUINT8", "quint8", None),
    DType("DT_QINT32", "qint32", None),
    DType("DT_BFLOAT16", "bfloat16", None),
    DType("DT_QINT16", "qint16", None),
    DType("DT_QUINT16", "quint16", None),
    DType("DT_UINT16", "uint16", np.dtype(np.uint16)),
    DType("DT_COMPLEX128", "complex128", np.dtype(np.complex128)),
    DType("DT_HALF", "half", np.dtype(np.float16)),
    DType("DT_RESOURCE", "resource", None),
    DType("DT_VARIANT", "variant", None),
    DType("DT_UINT32", "uint32", np.dtype(np.uint32)),
    DType("DT_UINT64", "uint64", np.dtype(np.uint64)),
]}
_BY_NUMPY = {d.numpy: d for d in DTYPES.values() if d.numpy is not None}


def dtype_of_array(arr: np.ndarray) -> DType:
    """The TF dtype of a runtime output (bytes/str/object arrays are DT_STRING)."""
    if arr.dtype.kind in "OSU":
        return DTYPES["DT_STRING"]
    return _BY_NUMPY.get(arr.dtype, DType("DT_INVALID", str(arr.dtype), arr.dtype))


# ---------------------------------------------------------------------------------------------
# Scalars: AddValueToTensor


def _type_error(value: Any, dtype: DType) -> ServingError:
    return invalid_argument(f"JSON Value: {json_value_to_string(value)} Type: {json_type_string(value)} "
                            f"is not of expected type: {dtype.tf_name}")


def _lossy(value: Any, target: str) -> ServingError:
    return invalid_argument(f"Cannot convert JSON value: {json_value_to_string(value)} to {target} "
                            "without loss of precision.")


def is_b64_object(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def decode_b64_object(value: Any) -> bytes:
    """``JsonDecodeBase64Object``: ``{"b64": "..."}`` to bytes (padding optional, like absl)."""
    if not is_b64_object(value):
        raise invalid_argument(f"JSON Value: {json_value_to_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        raw = text.encode("ascii")
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _decimal_converter(dtype: DType, max_int: int, limit: float) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is float:
            if math.isfinite(value) and not -limit <= value <= limit:
                raise _lossy(value, dtype.tf_name)
            return value
        if kind is int:
            if _I64[0] <= value <= _U64[1]:
                if abs(value) > max_int:
                    raise _lossy(value, dtype.tf_name)
            elif not -limit <= value <= limit:
                raise _lossy(value, dtype.tf_name)
            return value
        if kind is dict:
            raise _type_error(value, dtype)
        raise _type_error(value, dtype)
    return convert


def _int_converter(dtype: DType, bounds: tuple[int, int]) -> Callable[[Any], Any]:
    low, high = bounds

    def convert(value: Any) -> Any:
        if type(value) is int and low <= value <= high:
            return value
        raise _type_error(value, dtype)
    return convert


def _bool_converter(dtype: DType) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is bool:
            return value
        raise _type_error(value, dtype)
    return convert


def _string_converter(dtype: DType) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return string_bytes(value)
        if kind is dict:
            return decode_b64_object(value)
        raise _type_error(value, dtype)
    return convert


def _unimplemented_converter(dtype: DType) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is dict:
            raise _type_error(value, dtype)
        raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {json_value_to_string(value)} "
                                               f"to type: {dtype.tf_name}")
    return convert


@dataclass(frozen=True)
class InputCodec:
    """Everything needed to turn JSON into one input's tensor, built once per signature input."""

    dtype: DType
    convert: Callable[[Any], Any]          # one JSON scalar -> Python value (slow path)
    fast_types: frozenset                  # leaf types the fast path accepts
    build: Callable[[list], np.ndarray]    # flat Python values -> 1-D array of the dtype
    alias: str = ""                        # the signature input, for errors


def _as_wrapped_int(target: np.dtype) -> Callable[[list], np.ndarray]:
    # TF Serving stores int8/16/uint8 in int_val and casts, so out-of-range values wrap.
    return lambda values: np.array(values, dtype=np.int64).astype(target)


def make_codec(dtype_name: str, alias: str = "") -> InputCodec:
    return dataclasses.replace(_make_codec(dtype_name), alias=alias)


def _make_codec(dtype_name: str) -> InputCodec:
    dtype = DTYPES.get(dtype_name) or DType(dtype_name, dtype_name.removeprefix("DT_").lower(), None)
    name = dtype.enum_name
    if name == "DT_FLOAT":
        return InputCodec(dtype, _decimal_converter(dtype, 2 ** 24 - 1, FLT_MAX), frozenset({int, float}),
                          lambda v: np.array(v, dtype=np.float64).astype(np.float32))
    if name == "DT_DOUBLE":
        return InputCodec(dtype, _decimal_converter(dtype, 2 ** 53 - 1, float("inf")), frozenset({int, float}),
                          lambda v: np.array(v, dtype=np.float64))
    if name in ("DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8"):
        return InputCodec(dtype, _int_converter(dtype, _I32), frozenset({int}), _as_wrapped_int(dtype.numpy))
    if name == "DT_INT64":
        return InputCodec(dtype, _int_converter(dtype, _I64), frozenset({int}),
                          lambda v: np.array(v, dtype=np.int64))
    if name == "DT_UINT32":
        return InputCodec(dtype, _int_converter(dtype, _U32), frozenset({int}),
                          lambda v: np.array(v, dtype=np.int64).astype(np.uint32))
    if name == "DT_UINT64":
        return InputCodec(dtype, _int_converter(dtype, _U64), frozenset({int}),
                          lambda v: np.array(v, dtype=np.uint64))
    if name == "DT_BOOL":
        return InputCodec(dtype, _bool_converter(dtype), frozenset({bool}), lambda v: np.array(v, dtype=np.bool_))
    if name == "DT_STRING":
        def build(values: list) -> np.ndarray:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            return arr
        return InputCodec(dtype, _string_converter(dtype), frozenset(), build)
    return InputCodec(dtype, _unimplemented_converter(dtype), frozenset(), lambda v: np.array(v))


# ---------------------------------------------------------------------------------------------
# Nested values: GetDenseTensorShape + FillTensorProto


def dense_shape(value: Any) -> list[int]:
    """``GetDenseTensorShape``: the shape implied by the first element at each level."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], convert: Callable[[Any], Any], out: list) -> None:
    rank = len(shape)
    if type(value) is not list:
        if level != rank:
            raise invalid_argument(f"JSON Value: {json_value_to_string(value)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        out.append(convert(value))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                               f"expected size: {shape[level]}")
    if level + 1 == rank:
        for item in value:
            if type(item) is list:
                _fill(item, level + 1, shape, convert, out)
            else:
                out.append(convert(item))
    else:
        for item in value:
            _fill(item, level + 1, shape, convert, out)


def slow_values(value: Any, codec: InputCodec) -> tuple[list[int], list]:
    """Shape and flat converted values of one JSON value, with TF Serving's exact errors."""
    shape = dense_shape(value)
    out: list = []
    _fill(value, 0, shape, codec.convert, out)
    return shape, out


def fast_tensor(value: Any, codec: InputCodec) -> np.ndarray | None:
    """The tensor for a rectangular nested list of plain leaves, or None to use the slow path."""
    if type(value) is not list or not codec.fast_types:
        return None if codec.dtype.enum_name != "DT_STRING" or type(value) is not list else _fast_strings(value)
    shape, leaves = _rectangular(value)
    if shape is None:
        return None
    if leaves and not set(map(type, leaves)) <= codec.fast_types:
        return None
    return _checked_build(leaves, codec, shape)


def _rectangular(value: list) -> tuple[list[int] | None, list]:
    shape = [len(value)]
    nodes = value
    while nodes and type(nodes[0]) is list:
        if set(map(type, nodes)) != {list} or len(shape) >= MAX_RANK:
            return None, []
        lengths = set(map(len, nodes))
        if len(lengths) != 1:
            return None, []
        shape.append(lengths.pop())
        nodes = list(chain.from_iterable(nodes))
    return shape, nodes


def _fast_strings(value: list) -> np.ndarray | None:
    shape, leaves = _rectangular(value)
    if shape is None or (leaves and set(map(type, leaves)) != {str}):
        return None
    arr = np.empty(len(leaves), dtype=object)
    arr[:] = [s.encode("utf-8", RAW_BYTES) for s in leaves]
    return arr.reshape(shape)


def _checked_build(leaves: list, codec: InputCodec, shape: list[int]) -> np.ndarray | None:
    """Vectorised range checks; anything doubtful goes back to the slow path for its message."""
    name = codec.dtype.enum_name
    try:
        if name in ("DT_FLOAT", "DT_DOUBLE"):
            wide = np.array(leaves, dtype=np.float64)
            if wide.size:
                biggest = np.abs(wide[np.isfinite(wide)]).max(initial=0.0)
                if name == "DT_FLOAT" and biggest > FLT_MAX:
                    return None
                int_limit = 2 ** 24 - 1 if name == "DT_FLOAT" else 2 ** 53 - 1
                if biggest > int_limit and int in set(map(type, leaves)):
                    return None  # a possibly lossy integer: the slow path judges each value
            arr = wide.astype(np.float32) if name == "DT_FLOAT" else wide
        elif name == "DT_UINT64":
            arr = np.array(leaves, dtype=np.uint64)
        elif name == "DT_BOOL":
            arr = np.array(leaves, dtype=np.bool_)
        else:
            wide = np.array(leaves, dtype=np.int64)
            low, high = {"DT_INT64": _I64, "DT_UINT32": _U32}.get(name, _I32)
            if wide.size and (wide.min() < low or wide.max() > high):
                return None
            arr = wide.astype(codec.dtype.numpy)
    except (OverflowError, ValueError, TypeError):
        return None
    return arr.reshape(shape)


def value_to_tensor(value: Any, codec: InputCodec) -> np.ndarray:
    """One JSON value (scalar or nested list) as a tensor: columnar inputs and row elements."""
    arr = fast_tensor(value, codec)
    if arr is not None:
        return arr
    shape, flat = slow_values(value, codec)
    return build_tensor(codec, flat, shape)


def build_tensor(codec: InputCodec, values: list, shape: list[int]) -> np.ndarray:
    """``values`` (flat, checked) as the codec's tensor of ``shape``."""
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"tensor parsing error: {codec.alias}")
    return codec.build(values).reshape(shape)
