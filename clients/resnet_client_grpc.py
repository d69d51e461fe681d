#!/usr/bin/env python3
"""Send a JPEG to the ``resnet`` model over gRPC (PredictionService/Predict) and print the class.

The appliance's counterpart of the user guide's ``/opt/app/test/resnet_client_grpc.py`` (TF
Serving's ResNet gRPC example). It needs ``grpcio`` and ``tensorflow-serving-api`` (both in the
appliance's venv: ``.venv/bin/python`` in a checkout, ``/opt/appliance/current/bin/python`` on a
node). The tensor is built by hand (``string_val``, shape ``[1]``), as ``image_bytes`` takes a
batch of encoded images.

    .venv/bin/python clients/resnet_client_grpc.py cat.jpg                  # localhost:9000
    .venv/bin/python clients/resnet_client_grpc.py cat.jpg --server 10.0.0.11:9000
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def predict(server: str, model: str, jpeg: bytes, timeout: float = 60) -> predict_pb2.PredictResponse:
    """One Predict call with ``image_bytes`` = [jpeg] on ``serving_default``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[jpeg],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise SystemExit(f"error: {err.code().name} from {server}: {err.details()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a JPEG (or PNG/GIF/BMP) file")
    parser.add_argument("--server", default="localhost:9000", help="host:port of any node's gRPC port")
    parser.add_argument("--model", default="resnet")
    args = parser.parse_args(argv)
    with open(args.image, "rb") as f:
        jpeg = f.read()
    started = time.perf_counter()
    response = predict(args.server, args.model, jpeg)
    latency_ms = (time.perf_counter() - started) * 1000
    classes = list(response.outputs["classes"].int64_val)
    print(f"Prediction class: {classes[0]}, latency: {latency_ms:.1f} ms "
          f"(model {response.model_spec.name} version {response.model_spec.version.value})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
