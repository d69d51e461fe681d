"""The runtime's own limit: a SavedModel called in-process, in a loop, on one fixed batch.

Loads the version with the model server's own runtime (``modelserver.runtimes.tensorflow``, same
``LoadOptions`` defaults as the server) and calls ``serving_default`` back to back: no HTTP, no
JSON, no base64, no thread hop. Prints one JSON line with calls/s and images/s.

    python bench/inprocess.py --model-dir DIR/resnet/1 --jpeg img.jpg --batch 32 --calls 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="a version directory (SavedModel)")
    parser.add_argument("--jpeg", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=10, help="calls timed, after one untimed call")
    parser.add_argument("--rounds", action="store_true", help="load once, then measure per stdin line 'BATCH CALLS'")
    args = parser.parse_args()

    import numpy as np

    from modelserver.runtimes.base import LoadOptions
    from modelserver.runtimes.tensorflow import TensorFlowRuntime

    model = TensorFlowRuntime().load(args.model_dir, LoadOptions())
    data = open(args.jpeg, "rb").read()

    def measure(batch: int, calls: int) -> dict:
        inputs = {"image_bytes": np.array([data] * batch, dtype=object)}
        model.run("serving_default", inputs)  # first call (kernels, buffers for this batch): not counted
        latencies = []
        start = time.perf_counter()
        for _ in range(calls):
            began = time.perf_counter()
            model.run("serving_default", inputs)
            latencies.append((time.perf_counter() - began) * 1000)
        elapsed = time.perf_counter() - start
        latencies.sort()
        return {"batch": batch, "calls": calls, "seconds": elapsed, "calls_per_s": calls / elapsed,
                "images_per_s": calls * batch / elapsed, "p50_ms": latencies[calls // 2],
                "p99_ms": latencies[min(calls - 1, int(calls * 0.99))]}

    if not args.rounds:
        print(json.dumps(measure(args.batch, args.calls)))
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        batch, calls = (int(x) for x in line.split())
        print(json.dumps(measure(batch, calls)), flush=True)


if __name__ == "__main__":
    main()
