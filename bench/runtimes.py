"""Which runtime serves a model fastest, measured: the built-in resnet on each runtime, one run.

Loads one version directory (a SavedModel taking JPEG bytes, like the built-in ``resnet``) with
the model server's own runtimes, in this process: TensorFlow, and OpenVINO in f32 and in bf16
(where the CPU has it), each with the throughput and the latency hint. Each gets the same batch
(``--batch`` distinct JPEGs) from N threads at once, for each N of ``--concurrency`` (the server
runs requests on a thread pool; OpenVINO's throughput hint runs concurrent requests on separate
streams, its latency hint gives one request every core). Rounds alternate between the runtimes
so they share the machine's background load. Prints, per concurrency, the ranking: images/s
(median round), images/s per core, the precision read back from the compiled network, the
largest difference of the probabilities from TensorFlow's and whether the top class agrees, and
the choice: the fastest runtime that agrees with TensorFlow (same top class, ``--atol``); then
one JSON line.

    flock /tmp/bench.lock .venv/bin/python bench/runtimes.py --model-dir DIR/resnet/1 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_isa() -> list[str]:
    """The ISA extensions that decide CPU inference speed, from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as info:
        flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return [flag for flag in ISA_FLAGS if flag in flags]


def load_candidates(model_dir: str, precisions: list[str], hints: list[str]) -> dict[str, object]:
    """name -> loaded model; a precision the CPU lacks is reported and skipped, not benchmarked."""
    from modelserver.core.status import ServingError
    from modelserver.runtimes import LoadOptions, get_runtime

    models: dict[str, object] = {"tensorflow": get_runtime("tensorflow").load(model_dir, LoadOptions())}
    for precision in precisions:
        for hint in hints:
            name, started = f"openvino {precision} {hint}", time.monotonic()
            options = LoadOptions(precision=precision, runtime_options={"performance_hint": hint})
            try:
                models[name] = get_runtime("openvino").load(model_dir, options)
            except ServingError as exc:
                print(f"{name}: not measured: {exc.message}", file=sys.stderr)
                continue
            print(f"{name}: loaded (converted and compiled) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return models


def precision_of(model: object) -> str:
    """The precision the runtime runs in: read back from OpenVINO's compiled network."""
    networks = getattr(model, "networks", None)
    if not networks:
        return "f32"
    compiled = networks["serving_default"][0].compiled[0]
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def images_per_second(model: object, inputs: dict, concurrency: int, calls: int) -> float:
    def one(_: int) -> None:
        model.run("serving_default", inputs)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm: every infer request and thread once
        start = time.perf_counter()
        list(pool.map(one, range(calls)))
        elapsed = time.perf_counter() - start
    return calls * len(inputs["image_bytes"]) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="a version directory (SavedModel taking image_bytes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", default="1,2", help="requests in flight at once (comma list)")
    parser.add_argument("--calls", type=int, default=6, help="timed calls per runtime per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="f32,bf16", help="OpenVINO precisions to try")
    parser.add_argument("--hints", default="throughput,latency", help="OpenVINO performance hints to try")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest difference of a probability from TensorFlow's a runtime may have to be chosen")
    args = parser.parse_args()

    import numpy as np

    from tests.jpeg import make_jpeg

    models = load_candidates(args.model_dir, args.precisions.split(","), args.hints.split(","))
    inputs = {"image_bytes": np.array([make_jpeg(seed, (256, 256)) for seed in range(args.batch)], dtype=object)}
    reference = models["tensorflow"].run("serving_default", inputs)
    results = {"batch": args.batch, "cores": os.cpu_count() or 1, "isa": cpu_isa(), "by_concurrency": {}}
    for concurrency in (int(n) for n in args.concurrency.split(",")):
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rates[name].append(images_per_second(model, inputs, concurrency, args.calls))
        rows = ranking(models, inputs, reference, rates, results["cores"])
        with open("/proc/loadavg") as loadavg:
            load = loadavg.read().split()[:3]
        results["by_concurrency"][concurrency] = {"load_average": load, "results": rows}
        print(f"batch {args.batch}, concurrency {concurrency}, {results['cores']} cores, ISA "
              f"{' '.join(results['isa'])}, load average {' '.join(load)}")
        results["by_concurrency"][concurrency]["chosen"] = print_ranking(rows, args.atol)
    print(json.dumps(results))


def print_ranking(rows: list[dict], atol: float) -> str:
    """Print the table; returns the fastest runtime that agrees with TensorFlow (TensorFlow at worst)."""
    print(f"{'runtime':26} {'precision':9} {'images/s':>9} {'per core':>9} {'vs TF':>6} {'max |diff|':>11} top-1")
    for row in rows:
        print(f"{row['runtime']:26} {row['precision']:9} {row['images_per_s']:9.1f} "
              f"{row['images_per_s_per_core']:9.2f} {row['vs_tensorflow']:6.2f} {row['max_abs_diff']:11.2e} "
              f"{'same' if row['top1_agrees'] else 'DIFFERS'}")
    chosen = next(row for row in rows if row["top1_agrees"] and row["max_abs_diff"] <= atol)["runtime"]
    print(f"fastest that agrees with TensorFlow (top-1, max |diff| <= {atol:g}): {chosen}")
    return chosen


def ranking(models: dict[str, object], inputs: dict, reference: dict, rates: dict[str, list[float]],
            cores: int) -> list[dict]:
    """One row per runtime, fastest first, with how far its answers are from TensorFlow's."""
    import numpy as np

    rows = []
    for name, model in models.items():
        out = model.run("serving_default", inputs)
        rate = statistics.median(rates[name])
        rows.append({"runtime": name, "precision": precision_of(model), "images_per_s": round(rate, 1),
                     "images_per_s_per_core": round(rate / cores, 2),
                     "vs_tensorflow": round(rate / statistics.median(rates["tensorflow"]), 2),
                     "max_abs_diff": float(np.max(np.abs(out["probabilities"] - reference["probabilities"]))),
                     "top1_agrees": bool(np.array_equal(out["classes"], reference["classes"]))})
    return sorted(rows, key=lambda row: -row["images_per_s"])


if __name__ == "__main__":
    main()
