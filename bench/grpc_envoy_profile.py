"""Where a gRPC call's CPU goes through Envoy: per-process CPU per Predict, direct vs via Envoy.

One node (``appliance up``: supervisord, Envoy, model server; half_plus_two) pinned to
``--server-cpus``; h2load (one HTTP/2 connection, ``--concurrency`` streams) on ``--client-cpus``
against the node's gRPC listener (Envoy) and the model server's own gRPC port, alternating each
round. For each run: h2load's requests/s and succeeded count, Envoy's upstream 2xx (via Envoy) as
the cross-check, and the CPU microseconds per request of Envoy and of the model server, read from
``/proc/<pid>/stat`` around the run (all threads): on a shared VM these are steadier than
requests/s. A scratch tool like ``model_server_ab.py``; not a test.

    .venv/bin/python bench/grpc_envoy_profile.py --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge_bench import HPT, REPO, cli, cpu_seconds, free_port  # noqa: E402
from serving_bench import envoy_counter, grpc_request_bytes, parse_h2load  # noqa: E402

WORK = REPO / "bench/.work/grpc_profile"


def h2load(target: str, body: Path, concurrency: int, seconds: float, cpus: str, pids: dict[str, int],
           counter=None) -> dict:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    upstream = counter() if counter else 0
    proc = subprocess.run(["taskset", "-c", cpus, "h2load", f"-D{seconds:g}", "-c1", f"-m{concurrency}", "-t1",
                           "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                           f"http://{target}/tensorflow.serving.PredictionService/Predict"],
                          capture_output=True, text=True, timeout=seconds + 60)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    summary = parse_h2load(proc.stdout)
    ok = summary["succeeded"]
    result = {"rps": round(ok / summary["seconds"], 1), "requests": ok}
    if counter:
        result["envoy_upstream_2xx"] = int(counter() - upstream)
    for name, seconds_used in used.items():
        result[f"{name}_cpu_us"] = round(seconds_used / max(1, ok) * 1e6, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--address", default="127.0.13.10")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--set", action="append", default=[], help="extra appliance.yaml key=value")
    args = parser.parse_args()
    root = WORK / "node"
    body = WORK / "predict.bin"
    WORK.mkdir(parents=True, exist_ok=True)
    body.write_bytes(grpc_request_bytes())
    if not (root / "data/models" / HPT).exists():
        cli(root, "builtin-models", "--only", HPT)
    ports = {key: free_port(args.address) for key in ("http.port", "grpc.port", "serving.rest.port",
                                                      "serving.grpc.port")}
    admin = free_port("127.0.0.1")
    values: dict[str, object] = {"model.name": HPT, "node.address": args.address, "logviewer.enabled": False,
                                 "envoy.admin.port": admin, **ports}
    values.update(dict(item.split("=", 1) for item in args.set))
    config = root / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}\n" for k, v in values.items()))
    try:
        # Every process of the node inherits the CPU set (as serving_bench.py pins the node).
        subprocess.run(["taskset", "-c", args.server_cpus, str(REPO / ".venv/bin/python"), "-m", "appliance.cli",
                        "--root", str(root), "up", "--timeout", "300"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        status = json.loads(cli(root, "status", "--json"))
        pids = {p["name"]: p["pid"] for p in status["processes"] if p["name"] in ("model_server", "envoy")}
        counter = envoy_counter(f"127.0.0.1:{admin}", "cluster.", "upstream_rq_2xx")
        targets = {"via Envoy": (f"{args.address}:{ports['grpc.port']}", counter),
                   "direct": (f"127.0.0.1:{ports['serving.grpc.port']}", None)}
        for target, _ in targets.values():
            h2load(target, body, 8, 1, args.client_cpus, pids)   # warm-up
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for round_no in range(args.rounds):
            order = list(targets) if round_no % 2 == 0 else list(targets)[::-1]
            for name in order:
                target, count = targets[name]
                result = h2load(target, body, args.concurrency, args.duration, args.client_cpus, pids, count)
                result["loadavg"] = round(os.getloadavg()[0], 2)
                runs[name].append(result)
                print(f"round {round_no + 1} {name:9s} {json.dumps(result)}", file=sys.stderr)
        ratios = [v["rps"] / d["rps"] for v, d in zip(runs["via Envoy"], runs["direct"])]
        summary = {"ratios": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3),
                   **{f"{name} {key}": statistics.median(r[key] for r in rs)
                      for name, rs in runs.items() for key in rs[0] if key.endswith("_us") or key == "rps"}}
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        cli(root, "down", timeout=120)


if __name__ == "__main__":
    sys.exit(main())
