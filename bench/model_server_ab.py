"""A/B of two model server source trees on the REST hot path: CPU time per request, direct.

Starts ``appliance-model-server`` from tree A and from tree B (each a checkout of this
repository, e.g. ``git worktree add /tmp/old HEAD~1``), both serving half_plus_two on
``--server-cpus``, and runs wrk at concurrency 64 against each in alternating rounds. Prints
requests/s and the server's CPU microseconds per request (from /proc: steadier than requests/s
on a shared VM), then the medians. A scratch tool, like ``envoy_ab.py``; not a test.

    bench/run_all.sh --no-peers      # once: builds the models into bench/.work/node
    git worktree add /tmp/old HEAD~1
    .venv/bin/python bench/model_server_ab.py /tmp/old . --rounds 4
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a")
    parser.add_argument("tree_b")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    args = parser.parse_args()
    trees = {"A": str(Path(args.tree_a).resolve()), "B": str(Path(args.tree_b).resolve())}
    ab.AB.mkdir(parents=True, exist_ok=True)
    ab.BODY.write_bytes(b'{"instances": [1.0, 2.0, 5.0]}')
    config = ab.AB / "model_server_ab.models.config"
    config.write_text('model_config_list { config { name: "%s" base_path: "%s" model_platform: "tensorflow" } }\n'
                      % (ab.HPT, ab.MODELS / ab.HPT))
    urls, pids = {}, {}
    try:
        for key, tree in trees.items():
            rest, grpc = ab.free_port(), ab.free_port()
            code = f"import sys; sys.path.insert(0, {tree!r}); from modelserver.main import main; sys.exit(main())"
            proc = ab.spawn([str(ab.VENV / "python"), "-c", code, f"--port={grpc}", f"--rest_api_port={rest}",
                             f"--listen_address={ab.ADDR}", f"--model_config_file={config}"],
                            args.server_cpus, ab.AB / f"model_server_ab_{key}.log")
            pids[key] = proc.pid
            urls[key] = f"http://{ab.ADDR}:{rest}/v1/models/{ab.HPT}:predict"
            ab.wait(f"http://{ab.ADDR}:{rest}/v1/models/{ab.HPT}")
            ab.wrk(urls[key], 64, 2, args.client_cpus, 1)          # warm: past the inline threshold
        results: dict[str, list[tuple[float, float]]] = {key: [] for key in trees}
        for round_ in range(args.rounds):
            for key in (list(trees) if round_ % 2 == 0 else list(trees)[::-1]):
                before = ab.cpu_s(pids[key])
                run = ab.wrk(urls[key], 64, args.duration, args.client_cpus, 1)
                micros = (ab.cpu_s(pids[key]) - before) / max(run["requests"], 1) * 1e6
                results[key].append((run["rps"], micros))
                print(f"round {round_} {key}: {run['rps']:8.0f} req/s  {micros:6.1f} us/request", flush=True)
        for key, tree in trees.items():
            print(f"{key} {tree}: median {statistics.median(r for r, _ in results[key]):.0f} req/s, "
                  f"{statistics.median(u for _, u in results[key]):.1f} us of server CPU per request")
    finally:
        for proc in reversed(ab.procs):
            try:
                os.killpg(proc.pid, 15)
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass


if __name__ == "__main__":
    main()
