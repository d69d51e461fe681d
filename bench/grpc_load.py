"""A closed-loop gRPC load client on TF Serving's own stubs (``tensorflow-serving-api``).

``--concurrency`` coroutines on one grpc.aio channel each keep one ``PredictionService/Predict``
call in flight for ``--duration`` seconds (after ``--warmup`` seconds that are not counted), the
way ``wrk -cN`` keeps N requests in flight over HTTP/1.1. Prints one JSON line: requests/s, p50,
p99, errors, and the client's own CPU seconds per second of wall time (it is Python: on a 2-core
machine its cost is part of the picture, so it is reported, not hidden).

    python bench/grpc_load.py --target 127.0.0.1:9000 --model saved_model_half_plus_two_mkl \
        --input x=float:1.0,2.0,5.0 --concurrency 64 --duration 10
    python bench/grpc_load.py ... --model resnet --jpeg cat.jpg --batch 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import grpc
import numpy as np
import tensorflow as tf  # only for make_tensor_proto; imported before timing starts
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def _request(args: argparse.Namespace) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model
    if args.jpeg:
        data = open(args.jpeg, "rb").read()
        request.inputs[args.jpeg_input].CopyFrom(
            tf.make_tensor_proto([data] * args.batch, dtype=tf.string, shape=[args.batch]))
    for spec in args.input:
        name, rest = spec.split("=", 1)
        dtype, values = rest.split(":", 1)
        arr = np.array([float(v) for v in values.split(",")], dtype=dtype)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(arr))
    return request


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(args: argparse.Namespace) -> dict:
    request = _request(args)
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        await stub.Predict(request, timeout=60)  # fail fast when the server is not there
        latencies: list[float] = []
        errors: dict[str, int] = {}
        counting = False
        deadline = 0.0

        async def worker() -> None:
            while True:
                start = time.perf_counter()
                if start >= deadline:
                    return
                try:
                    await stub.Predict(request, timeout=args.timeout)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    if counting:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                if counting and ok:
                    latencies.append(time.perf_counter() - start)

        deadline = time.perf_counter() + args.warmup + args.duration
        tasks = [asyncio.ensure_future(worker()) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        counting = True
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    latencies.sort()
    done = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(done - 1, int(p / 100 * done))] * 1000 if done else float("nan")

    return {"requests": done, "rps": done / elapsed, "p50_ms": pct(50), "p99_ms": pct(99),
            "errors": sum(errors.values()), "error_codes": errors, "client_cpu": cpu / elapsed,
            "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=DTYPE:V1,V2,...")
    parser.add_argument("--jpeg", help="send this file as a DT_STRING batch")
    parser.add_argument("--jpeg-input", default="image_bytes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
