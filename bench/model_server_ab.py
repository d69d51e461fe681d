"""A/B of two model server source trees on the REST or gRPC hot path: CPU time per request, direct.

Starts ``appliance-model-server`` from tree A and from tree B (each a checkout of this
repository, e.g. ``git worktree add /tmp/old HEAD~1``), both serving half_plus_two on
``--server-cpus``, and runs wrk (REST) or h2load (``--grpc``: PredictionService/Predict, one
HTTP/2 connection, 64 streams) at concurrency 64 against each in alternating rounds. Prints
requests/s and the server's CPU microseconds per request (from /proc: steadier than requests/s
on a shared VM), then the medians. With ``--both`` each tree is measured on REST and gRPC in the
same rounds (the gRPC/REST ratio of one tree). A scratch tool, like ``envoy_ab.py``; not a test.

    bench/run_all.sh --no-peers      # once: builds the models into bench/.work/node
    git worktree add /tmp/old HEAD~1
    .venv/bin/python bench/model_server_ab.py /tmp/old . --rounds 4
    .venv/bin/python bench/model_server_ab.py /tmp/old . --grpc     # the gRPC port instead
    .venv/bin/python bench/model_server_ab.py . . --both --rounds 3  # gRPC vs REST, one tree
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_ab as ab  # noqa: E402
from serving_bench import grpc_request_bytes, parse_h2load  # noqa: E402


def h2load(target: str, concurrency: int, duration: float, cpus: str, body: Path) -> dict:
    """One h2load run against a gRPC port, read from h2load's own summary."""
    proc = subprocess.run(["taskset", "-c", cpus, "h2load", f"-D{duration:g}", "-c1", f"-m{concurrency}", "-t1",
                           "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                           f"http://{target}/tensorflow.serving.PredictionService/Predict"],
                          capture_output=True, text=True, check=True)
    summary = parse_h2load(proc.stdout)
    return {"requests": summary["succeeded"], "rps": summary["succeeded"] / summary["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a")
    parser.add_argument("tree_b")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--grpc", action="store_true", help="measure the gRPC port (h2load) instead of REST")
    parser.add_argument("--both", action="store_true", help="measure REST and gRPC of each tree")
    args = parser.parse_args()
    protocols = ["rest", "grpc"] if args.both else ["grpc"] if args.grpc else ["rest"]
    trees = {"A": str(Path(args.tree_a).resolve()), "B": str(Path(args.tree_b).resolve())}
    ab.AB.mkdir(parents=True, exist_ok=True)
    ab.BODY.write_bytes(b'{"instances": [1.0, 2.0, 5.0]}')
    grpc_body = ab.AB / "grpc_body.bin"
    grpc_body.write_bytes(grpc_request_bytes())
    config = ab.AB / "model_server_ab.models.config"
    config.write_text('model_config_list { config { name: "%s" base_path: "%s" model_platform: "tensorflow" } }\n'
                      % (ab.HPT, ab.MODELS / ab.HPT))
    urls, grpcs, pids = {}, {}, {}
    try:
        for key, tree in trees.items():
            rest, grpc = ab.free_port(), ab.free_port()
            code = f"import sys; sys.path.insert(0, {tree!r}); from modelserver.main import main; sys.exit(main())"
            proc = ab.spawn([str(ab.VENV / "python"), "-c", code, f"--port={grpc}", f"--rest_api_port={rest}",
                             f"--listen_address={ab.ADDR}", f"--model_config_file={config}"],
                            args.server_cpus, ab.AB / f"model_server_ab_{key}.log")
            pids[key] = proc.pid
            urls[key] = f"http://{ab.ADDR}:{rest}/v1/models/{ab.HPT}:predict"
            grpcs[key] = f"{ab.ADDR}:{grpc}"
            ab.wait(f"http://{ab.ADDR}:{rest}/v1/models/{ab.HPT}")
            ab.wrk(urls[key], 64, 2, args.client_cpus, 1)          # warm: past the inline threshold
            h2load(grpcs[key], 64, 1, args.client_cpus, grpc_body)

        def run(key: str, protocol: str) -> dict:
            if protocol == "grpc":
                return h2load(grpcs[key], 64, args.duration, args.client_cpus, grpc_body)
            return ab.wrk(urls[key], 64, args.duration, args.client_cpus, 1)

        cells = [(key, protocol) for key in trees for protocol in protocols]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {cell: [] for cell in cells}
        for round_ in range(args.rounds):
            for key, protocol in (cells if round_ % 2 == 0 else cells[::-1]):
                before = ab.cpu_s(pids[key])
                result = run(key, protocol)
                micros = (ab.cpu_s(pids[key]) - before) / max(result["requests"], 1) * 1e6
                results[key, protocol].append((result["rps"], micros))
                print(f"round {round_} {key} {protocol}: {result['rps']:8.0f} req/s  {micros:6.1f} us/request",
                      flush=True)
        for (key, protocol), runs in results.items():
            print(f"{key} {protocol} {trees[key]}: median {statistics.median(r for r, _ in runs):.0f} req/s, "
                  f"{statistics.median(u for _, u in runs):.1f} us of server CPU per request")
    finally:
        for proc in reversed(ab.procs):
            try:
                os.killpg(proc.pid, 15)
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass


if __name__ == "__main__":
    main()
