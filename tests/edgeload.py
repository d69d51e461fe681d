"""Load for the edge's rate-limit tests: keep-alive REST clients sending without pause, each
answer's status and headers recorded. The allowed rate is counted in steady state: the first
second (the token buckets' initial burst) is left out, then the 200s over the rest of the run."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from typing import Callable

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

BODY = b'{"instances": [1.0, 2.0]}'
Sender = Callable[[], tuple[int, dict]]


def rest_sender(host: str, port: int, path: str, headers: dict | None = None, cafile: str = "") -> Sender:
    """One predict per call on a per-thread keep-alive connection (TLS trusting ``cafile`` when
    given): (status, lower-case headers); status 0 when the connection failed."""
    local = threading.local()
    context = ssl.create_default_context(cafile=cafile) if cafile else None

    def send() -> tuple[int, dict]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = (http.client.HTTPSConnection(host, port, timeout=30, context=context) if context
                                 else http.client.HTTPConnection(host, port, timeout=30))
        try:
            conn.request("POST", path, BODY, {"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            local.conn = None
            return 0, {}
        answer = {k.lower(): v for k, v in resp.getheaders()}
        if answer.get("connection", "").lower() == "close":   # Envoy closes after a refused body
            conn.close()
            local.conn = None
        return resp.status, answer
    return send


#: gRPC statuses as the HTTP statuses load() counts: RESOURCE_EXHAUSTED is a rate limit's 429.
_GRPC_AS_HTTP = {grpc.StatusCode.OK: 200, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
                 grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}


def grpc_sender(host: str, port: int, model: str) -> Sender:
    """One Predict of ``model`` per call on one plain channel, as (HTTP-like status, lower-case
    headers and trailers): RESOURCE_EXHAUSTED counts as 429, any other failure as 500."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"{host}:{port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([1.0, 2.0])

    def send() -> tuple[int, dict]:
        call = stub.Predict.future(request, timeout=30)
        try:
            call.result()
        except grpc.RpcError:
            pass
        metadata = [*(call.initial_metadata() or ()), *(call.trailing_metadata() or ())]
        return _GRPC_AS_HTTP.get(call.code(), 500), {k.lower(): v for k, v in metadata}
    return send


WARMUP = 1.0


def load(senders: list[Sender], seconds: float, threads: int = 6) -> dict:
    """``threads`` threads per sender for ``seconds`` (plus :data:`WARMUP`): counts by status, the
    allowed rate after the warm-up, and whether every 429 said Retry-After."""
    results: list[tuple[float, int, dict]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop = started + WARMUP + seconds

    def run(send: Sender) -> None:
        while time.monotonic() < stop:
            status, headers = send()
            with lock:
                results.append((time.monotonic(), status, headers))
    workers = [threading.Thread(target=run, args=(send,)) for send in senders for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    since = started + WARMUP
    elapsed = max(t for t, _, _ in results) - since
    counts: dict[int, int] = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    allowed = sum(1 for t, status, _ in results if t >= since and status == 200)
    return {"seconds": round(elapsed, 2), "counts": counts, "allowed_after_warmup": allowed,
            "allowed_per_second": round(allowed / elapsed, 2),
            "retry_after_on_every_429": all(h.get("retry-after") for _, s, h in results if s == 429)}
