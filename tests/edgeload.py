"""Load for the edge's rate-limit tests: keep-alive REST clients sending without pause, each
answer's status and headers recorded. The allowed rate is counted in steady state: the first
second (the token buckets' initial burst) is left out, then the 200s over the rest of the run."""

from __future__ import annotations

import http.client
import threading
import time
from typing import Callable

BODY = b'{"instances": [1.0, 2.0]}'
Sender = Callable[[], tuple[int, dict]]


def rest_sender(host: str, port: int, path: str, headers: dict | None = None) -> Sender:
    """One predict per call on a per-thread keep-alive connection: (status, lower-case headers);
    status 0 when the connection failed."""
    local = threading.local()

    def send() -> tuple[int, dict]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, port, timeout=30)
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
