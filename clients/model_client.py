#!/usr/bin/env python3
"""Call any model: read its signature from the model's metadata, then send matching tensors.

REST (``GET /v1/models/<m>/metadata``, then a columnar ``predict``) or gRPC (``--grpc``:
``GetModelMetadata``, then ``Predict``). Each input's values are JSON (``--input x=[1,2,5]``),
the bytes of a file for a string input (``--input image_bytes=@cat.jpg``), a JSON file of
``{"input": value}`` (``--inputs-file``), or, for a one-input signature, plain numbers
(``model_client.py half_plus_two 1 2 5``). Values are cast to the input's dtype and reshaped to
its rank when that is unambiguous (``[1, 2, 5]`` for a ``[-1, 1]`` input becomes
``[[1], [2], [5]]``). The answer is printed as JSON, one key per output.

    .venv/bin/python clients/model_client.py saved_model_half_plus_two_mkl 1.0 2.0 5.0
    .venv/bin/python clients/model_client.py saved_model_half_plus_two_mkl --grpc --server localhost:9000 1 2 5
    .venv/bin/python clients/model_client.py resnet --input image_bytes=@cat.jpg --show-signature

REST needs numpy; gRPC also needs ``grpcio`` and ``tensorflow-serving-api`` (all in the
appliance's venv).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

# TF dtype name -> numpy dtype (what the tensor is cast to before it is sent).
NUMPY_DTYPES = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64, "DT_BOOL": np.bool_, "DT_STRING": np.object_,
}


@dataclass
class TensorInfo:
    dtype: str                 # "DT_FLOAT", ...
    dims: list[int] | None     # -1 for an unknown size; None for an unknown rank


@dataclass
class Signature:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


class ClientError(Exception):
    """What went wrong, in words the user can act on."""


# --- metadata -------------------------------------------------------------------------------

def rest_signatures(server: str, model: str) -> dict[str, Signature]:
    meta = _rest_call(server, f"/v1/models/{model}/metadata")
    defs = meta["metadata"]["signature_def"]["signature_def"]

    def info(spec: dict) -> TensorInfo:
        shape = spec.get("tensor_shape", {})
        dims = None if shape.get("unknown_rank") else [int(d["size"]) for d in shape.get("dim", [])]
        return TensorInfo(spec["dtype"], dims)

    return {name: Signature({k: info(v) for k, v in d.get("inputs", {}).items()},
                            {k: info(v) for k, v in d.get("outputs", {}).items()})
            for name, d in defs.items()}


def grpc_signatures(server: str, model: str) -> dict[str, Signature]:
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    response = _grpc_call(server, "GetModelMetadata", request)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)

    def info(spec: Any) -> TensorInfo:
        dims = None if spec.tensor_shape.unknown_rank else [d.size for d in spec.tensor_shape.dim]
        return TensorInfo(types_pb2.DataType.Name(spec.dtype), dims)

    return {name: Signature({k: info(v) for k, v in d.inputs.items()},
                            {k: info(v) for k, v in d.outputs.items()})
            for name, d in defs.signature_def.items()}


# --- inputs ---------------------------------------------------------------------------------

def parse_inputs(signature: Signature, pairs: list[str], inputs_file: str | None,
                 values: list[str]) -> dict[str, np.ndarray]:
    """The user's values, one array per input of ``signature``, cast and reshaped to fit it."""
    raw: dict[str, Any] = {}
    if inputs_file:
        with open(inputs_file, encoding="utf-8") as f:
            raw.update(json.load(f))
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ClientError(f"--input {pair!r}: expected NAME=VALUE")
        if text.startswith("@"):
            with open(text[1:], "rb") as f:
                raw[name] = [f.read()]
        else:
            raw[name] = json.loads(text)
    if values:
        if len(signature.inputs) != 1:
            raise ClientError(f"plain values need a one-input signature; use --input NAME=VALUE "
                              f"for each of {sorted(signature.inputs)}")
        raw[next(iter(signature.inputs))] = [json.loads(v) for v in values]
    unknown = sorted(set(raw) - set(signature.inputs))
    missing = sorted(set(signature.inputs) - set(raw))
    if unknown or missing:
        raise ClientError(f"the signature's inputs are {sorted(signature.inputs)}"
                          + (f"; not inputs: {unknown}" if unknown else "")
                          + (f"; no value given for {missing}" if missing else ""))
    return {name: _fit(name, value, signature.inputs[name]) for name, value in raw.items()}


def _fit(name: str, value: Any, info: TensorInfo) -> np.ndarray:
    if info.dtype not in NUMPY_DTYPES:
        raise ClientError(f"input {name}: dtype {info.dtype} is not supported by this client")
    if info.dtype == "DT_STRING":
        array = np.array(value, dtype=object)
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                             otypes=[object])(array) if array.size else array
    else:
        array = np.asarray(value, dtype=NUMPY_DTYPES[info.dtype])
    if info.dims is not None and array.ndim < len(info.dims):
        target = [d if d >= 0 else -1 for d in info.dims]
        if target.count(-1) <= 1:
            try:
                array = array.reshape(target)
            except ValueError:
                pass  # the server's answer will say what does not fit
    return array


# --- predict --------------------------------------------------------------------------------

def rest_predict(server: str, model: str, signature: str,
                 tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, Any]:
    def to_json(array: np.ndarray) -> Any:
        if array.dtype == object:
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")},
                                otypes=[object])(array).tolist() if array.size else []
        return array.tolist()

    body = {"signature_name": signature, "inputs": {k: to_json(v) for k, v in tensors.items()}}
    answer = _rest_call(server, f"/v1/models/{model}:predict", body)["outputs"]
    # The columnar format names the outputs only when there are several.
    return answer if isinstance(answer, dict) and len(outputs) != 1 else {outputs[0]: answer}


def grpc_predict(server: str, model: str, signature: str,
                 tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, array in tensors.items():
        request.inputs[name].CopyFrom(_to_proto(array))
    response = _grpc_call(server, "Predict", request)
    return {name: _from_proto(proto).tolist() for name, proto in sorted(response.outputs.items())}


def _to_proto(array: np.ndarray) -> Any:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape])
    if array.dtype == object:
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                      string_val=list(array.ravel()))
    name = next(k for k, v in NUMPY_DTYPES.items() if v == array.dtype.type)
    return tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(name), tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(array).astype(
                                      array.dtype.newbyteorder("<")).tobytes())


# Value field of a TensorProto for each dtype, when the answer is not in tensor_content.
_VAL_FIELDS = {"DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_HALF": "half_val",
               "DT_INT8": "int_val", "DT_INT16": "int_val", "DT_INT32": "int_val",
               "DT_UINT8": "int_val", "DT_UINT16": "int_val", "DT_INT64": "int64_val",
               "DT_UINT32": "uint32_val", "DT_UINT64": "uint64_val", "DT_BOOL": "bool_val",
               "DT_STRING": "string_val"}


def _from_proto(proto: Any) -> np.ndarray:
    from tensorflow.core.framework import types_pb2

    name = types_pb2.DataType.Name(proto.dtype)
    shape = [d.size for d in proto.tensor_shape.dim]
    if name not in NUMPY_DTYPES:
        raise ClientError(f"output dtype {name} is not supported by this client")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(NUMPY_DTYPES[name]).newbyteorder("<")).reshape(shape)
    values = list(getattr(proto, _VAL_FIELDS[name]))
    if name == "DT_STRING":
        values = [_text(v) for v in values]
    elif name == "DT_HALF":
        values = np.array(values, dtype=np.uint16).view(np.float16).tolist()
    size = int(np.prod(shape)) if shape else 1
    if values and len(values) < size:  # TF repeats the last value to fill the tensor
        values += [values[-1]] * (size - len(values))
    return np.array(values, dtype=object if name == "DT_STRING" else NUMPY_DTYPES[name]).reshape(shape)


def _text(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


# --- transport ------------------------------------------------------------------------------

def _rest_call(server: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        raise ClientError(f"HTTP {err.code} from {server}{path}: "
                          f"{err.read().decode(errors='replace')}") from None
    except urllib.error.URLError as err:
        raise ClientError(f"cannot reach {server}: {err.reason}") from None


def _grpc_call(server: str, method: str, request: Any) -> Any:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=60)
        except grpc.RpcError as err:
            raise ClientError(f"{method}: {err.code().name} from {server}: {err.details()}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("values", nargs="*", help="values of a one-input signature (JSON each)")
    parser.add_argument("--server", help="host:port (default localhost:8080, with --grpc localhost:9000)")
    parser.add_argument("--grpc", action="store_true", help="use the gRPC API instead of REST")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                        help="JSON value of one input, or @FILE for a string input's bytes")
    parser.add_argument("--inputs-file", help='JSON file: {"input name": value, ...}')
    parser.add_argument("--show-signature", action="store_true",
                        help="print the signature's inputs and outputs before the answer")
    args = parser.parse_args(argv)
    server = args.server or ("localhost:9000" if args.grpc else "localhost:8080")
    try:
        signatures = (grpc_signatures if args.grpc else rest_signatures)(server, args.model)
        if args.signature not in signatures:
            raise ClientError(f"model {args.model} has no signature {args.signature!r}; "
                              f"it has {sorted(signatures)}")
        signature = signatures[args.signature]
        if args.show_signature:
            for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
                for name, info in sorted(tensors.items()):
                    print(f"{kind} {name}: {info.dtype} {info.dims}", file=sys.stderr)
        tensors = parse_inputs(signature, args.input, args.inputs_file, args.values)
        if args.grpc:
            answer = grpc_predict(server, args.model, args.signature, tensors)
        else:
            answer = rest_predict(server, args.model, args.signature, tensors, sorted(signature.outputs))
    except (ClientError, OSError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    json.dump(answer, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
