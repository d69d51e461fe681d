"""``TensorProto`` <-> numpy, with TensorFlow's ``Tensor::FromProto`` rules and none of its risks.

gRPC requests carry ``TensorProto``s. ``tf.make_ndarray`` would do, but it trusts the shape: a
proto with ``dim { size: 1000000000000 }`` and one ``float_val`` makes it allocate terabytes
(``FromProto`` repeats the last value to fill the shape). Decoding here checks the shape and the
byte budget first, so a hostile request fails cheaply with TF Serving's
``tensor parsing error: <alias>`` (INVALID_ARGUMENT) instead of taking the process down.
What is not sent (the repeated last value, or zeros for a tensor with no values) is filled up to
:data:`MAX_FILL_BYTES` only: a 41-byte request of shape ``[3e8]`` and one ``float_val`` took the
server to +16 GB before. Values are read from the proto's repeated field by numpy in one call,
without a Python object per value.

Outputs are written to the typed ``*_val`` fields (``Tensor::AsProtoField``, TF Serving's
default) because clients such as the official tests read ``float_val``, not ``tensor_content``.
Floats and doubles go in as one packed field parsed from the array's bytes (4-8 bytes a value;
a Python float per value was 32 more), other types a bounded piece at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelserver.json_tensor import MAX_RANK  # beyond it, TF's own error for a shape it cannot hold
from modelserver.core.status import Code, ServingError, invalid_argument

# A value broadcast (or zero-filled) to more than this many bytes is refused: no request can
# legitimately need more than the 2 GiB a gRPC message may carry.
MAX_TENSOR_BYTES = 2 ** 31 - 1
# What a request may leave to be filled in (broadcast of its last value, or zeros). TF fills any
# size; a fill is how a tiny message becomes a huge tensor, so it is bounded (an appliance limit).
MAX_FILL_BYTES = 64 * 1024 * 1024
_PIECE = 1 << 20  # values converted at a time for the typed fields that are not fixed-size
_MAX_ELEMENTS = 2 ** 62

# DataType enum value -> (numpy dtype, TensorProto field holding its values)
_DTYPES: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float_val"),      # DT_FLOAT
    2: (np.float64, "double_val"),     # DT_DOUBLE
    3: (np.int32, "int_val"),          # DT_INT32
    4: (np.uint8, "int_val"),          # DT_UINT8
    5: (np.int16, "int_val"),          # DT_INT16
    6: (np.int8, "int_val"),           # DT_INT8
    7: (object, "string_val"),         # DT_STRING
    9: (np.int64, "int64_val"),        # DT_INT64
    10: (np.bool_, "bool_val"),        # DT_BOOL
    17: (np.uint16, "int_val"),        # DT_UINT16
    19: (np.float16, "half_val"),      # DT_HALF
    22: (np.uint32, "uint32_val"),     # DT_UINT32
    23: (np.uint64, "uint64_val"),     # DT_UINT64
}
# numpy dtype -> (DataType enum value, field), for outputs
_OUT: dict[np.dtype, tuple[int, str]] = {np.dtype(dt): (enum, field) for enum, (dt, field) in _DTYPES.items()
                                         if dt is not object}
# DataType enum value -> (numpy dtype, field, bytes a value takes at most once decoded)
_DECODE: dict[int, tuple[Any, str, int]] = {enum: (dt, field, 8 if dt is object else np.dtype(dt).itemsize)
                                            for enum, (dt, field) in _DTYPES.items()}


def _shape(proto: Any) -> tuple[tuple[int, ...], int] | None:
    """``TensorShape::IsValid``: known rank, every dim >= 0, element count without overflow.

    Returns the dims and the element count (computed here, once: ``np.prod`` of a tuple cost
    more than the rest of a small tensor's decoding). The overflow check leaves out zero
    dimensions (``[0, 2**62, 2**62]`` holds no element, yet numpy cannot describe it), and the
    rank is at most numpy's.
    """
    shape = proto.tensor_shape
    if shape.unknown_rank or len(shape.dim) > MAX_RANK:
        return None
    dims = tuple(d.size for d in shape.dim)
    total, count = 1, 1
    for size in dims:
        if size < 0:
            return None
        total *= size or 1
        count *= size
        if total > _MAX_ELEMENTS:
            return None
    return dims, count


def ndarray_from_proto(proto: Any, alias: str) -> np.ndarray:
    """``Tensor::FromProto`` for one request input; any failure is ``tensor parsing error: alias``."""
    try:
        arr = _from_proto(proto)
    except ValueError:  # numpy's own limits, e.g. [0, 2**62] float32 (its bytes ignoring the 0 overflow)
        arr = None
    if arr is None:
        raise invalid_argument(f"tensor parsing error: {alias}")
    return arr


def _from_proto(proto: Any) -> np.ndarray | None:
    entry = _DECODE.get(proto.dtype)
    checked = _shape(proto)
    if entry is None or checked is None:
        return None
    shape, count = checked
    dtype, field, itemsize = entry
    if count * itemsize > MAX_TENSOR_BYTES:
        return None
    if dtype is not object and proto.tensor_content:
        content = proto.tensor_content
        if len(content) != count * itemsize:
            return None
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    values = getattr(proto, field)
    n = len(values)
    if n < count and (count - n) * itemsize > MAX_FILL_BYTES:
        return None
    if dtype is object:
        out = np.empty(count, dtype=object)
        if n:
            out[:min(n, count)] = list(values[:count])
            if n < count:
                out[n:] = values[n - 1]
        else:
            out[:] = b""
        return out.reshape(shape)
    if n == 0:
        return np.zeros(shape, dtype=dtype)
    if dtype is np.float16:
        flat = np.array(values, dtype=np.int64).astype(np.uint16).view(np.float16)
    else:
        try:
            flat = np.array(values, dtype=dtype)
        except OverflowError:  # int_val 300 for DT_INT8: C++'s static_cast wraps, and so do we
            flat = np.array(values, dtype=np.int64).astype(dtype)
    if n > count:
        flat = flat[:count]
    elif n < count:  # FromProto repeats the last value
        filled = np.empty(count, dtype=dtype)
        filled[:n] = flat
        filled[n:] = flat[-1]
        flat = filled
    return flat.reshape(shape)


def proto_from_ndarray(arr: np.ndarray) -> Any:
    """A numpy array as a ``TensorProto`` with ``*_val`` fields (``Tensor::AsProtoField``)."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    for size in arr.shape:
        proto.tensor_shape.dim.add().size = size
    flat = arr.ravel()
    if arr.dtype.kind in "OSU":
        proto.dtype = 7
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
        return proto
    entry = _OUT.get(arr.dtype)
    if entry is None:
        raise ServingError(Code.UNIMPLEMENTED, f"Cannot serialize output of dtype {arr.dtype}")
    proto.dtype, field = entry
    if field in _PACKED_TAGS:
        data = flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
        proto.MergeFromString(_PACKED_TAGS[field] + _varint(len(data)) + data)
        return proto
    values = flat.view(np.uint16) if arr.dtype == np.float16 else flat
    target = getattr(proto, field)
    for start in range(0, len(values), _PIECE):
        target.extend(values[start:start + _PIECE].tolist())
    return proto


def serialized_tensor(arr: np.ndarray) -> bytes:
    """:func:`proto_from_ndarray`'s message, serialized; float and double arrays are written
    straight from the array's bytes (no TensorProto object: building one, copying it into the
    response and serializing that cost more than the TensorFlow run of a small model)."""
    field = _OUT.get(arr.dtype, (0, ""))[1]
    if field not in _PACKED_TAGS:
        return proto_from_ndarray(arr).SerializeToString()
    dims = b"".join(length_delimited(2, b"\x08" + _varint(size)) for size in arr.shape)  # Dim.size (1), in shape (2)
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return (b"\x08" + _varint(_OUT[arr.dtype][0]) + (length_delimited(2, dims) if arr.shape else b"")
            + (_PACKED_TAGS[field] + _varint(len(data)) + data if data else b""))


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2): tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# float_val (field 5) and double_val (6) as packed, length-delimited fields (wire type 2)
_PACKED_TAGS = {"float_val": bytes([5 << 3 | 2]), "double_val": bytes([6 << 3 | 2])}


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((value,)) for value in range(0x80)]  # one-byte varints: most tags and lengths
