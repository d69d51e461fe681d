"""The edge's cost: the same predict at concurrency 64 through a plain node and through a node with
edge TLS, an API key required and rate limits on (high enough never to refuse), in one run.

Two whole nodes (``appliance up``: supervisord, Envoy, model server) on two loopback addresses,
serving half_plus_two, measured by wrk in interleaved rounds (the order alternates each round, so
both sides share the background load). Each run is cross-checked with the node's own counters
(Envoy's ``http.rest.downstream_rq_2xx``). Prints a JSON summary; the exit code is 0 when the
edge node reaches >= 90% of the plain node's throughput (median of the per-round ratios).

    .venv/bin/python bench/edge_bench.py --rounds 5 --duration 10
    .venv/bin/python bench/edge_bench.py --no-tls     # keys + limits only (no edge TLS)
    .venv/bin/python bench/edge_bench.py --variants plain,edge,plain2,tls,keys   # noise, and the parts
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench/.work/edge"
PYTHON = REPO / ".venv/bin/python"
HPT = "saved_model_half_plus_two_mkl"
LUA = REPO / "bench/post.lua"
HUGE = 1_000_000    # requests/s: the buckets run on every request and never refuse
KEYS_AND_LIMITS = {"auth.required": True, "rate.node": HUGE, "models.{model}.rate": HUGE}
# name -> (address, settings over the defaults, TLS). "plain2" is a second plain node: its ratio
# to "plain" is the method's own noise; "tls" and "keys" split the edge's cost in two.
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "plain": ("127.0.12.40", {}, False),
    "edge": ("127.0.12.41", {**KEYS_AND_LIMITS, "tls.plaintext": False}, True),
    "plain2": ("127.0.12.42", {}, False),
    "tls": ("127.0.12.43", {"tls.plaintext": False}, True),
    "keys": ("127.0.12.44", KEYS_AND_LIMITS, False),
}


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def cli(root: Path, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(PYTHON), "-m", "appliance.cli", "--root", str(root), *args],
                            capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"appliance {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def node(name: str, started: list[Path], no_tls: bool = False) -> dict:
    """Start one node of :data:`VARIANTS` (its root added to ``started`` first: a failed `up` is
    stopped too); what wrk needs to reach it."""
    address, extra, tls = VARIANTS[name]
    tls = tls and not no_tls
    root = WORK / name
    store = root / "data/models"
    if not (store / HPT).exists():
        cli(root, "builtin-models", "--only", HPT)
    ports = {key: free_port(address) for key in ("http.port", "grpc.port", "serving.rest.port",
                                                 "serving.grpc.port", "logviewer.port")}
    values: dict[str, object] = {"model.name": HPT, "node.address": address,
                                 "envoy.admin.port": free_port("127.0.0.1"), **ports}
    values.update({key.format(model=HPT): value for key, value in extra.items()})
    if not tls:
        values.pop("tls.plaintext", None)
    config = root / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    headers = {}
    if values.get("auth.required"):
        out = cli(root, "keys", "add", "bench", "--rate", str(HUGE))
        key = re.search(r"^bench: (\S+)$", out, re.M).group(1)
        headers["Authorization"] = f"Bearer {key}"
    started.append(root)
    cli(root, "up", "--timeout", "300")
    status = json.loads(cli(root, "status", "--json"))
    pids = {p["name"]: p["pid"] for p in status["processes"] if p["name"] in ("model_server", "envoy")}
    scheme = "https" if tls else "http"
    return {"name": name, "root": root, "url": f"{scheme}://{address}:{ports['http.port']}/v1/models/{HPT}:predict",
            "admin": values["envoy.admin.port"], "headers": headers, "pids": pids}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def envoy_2xx(target: dict) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{target['admin']}/stats?filter=^http.rest.downstream_rq_2xx$",
                                timeout=5) as resp:
        found = re.search(r"downstream_rq_2xx: (\d+)", resp.read().decode())
    return int(found.group(1)) if found else 0


def wrk(target: dict, body: Path, concurrency: int, seconds: float, pinned: bool) -> dict:
    # Pinned: wrk on CPU 0, the node on CPU 1 (as serving_bench.py does), so what the client's
    # own TLS costs is not taken from the node's core.
    cmd = (["taskset", "-c", "0", "wrk", "-t1"] if pinned else ["wrk", "-t2"]) + [
        f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s", "-s", str(LUA)]
    for name, value in target["headers"].items():
        cmd += ["-H", f"{name}: {value}"]
    before = envoy_2xx(target)
    cpu_before = {name: cpu_seconds(pid) for name, pid in target["pids"].items()}
    wrk_before = _children_cpu()
    proc = subprocess.run(cmd + [target["url"]], capture_output=True, text=True,
                          env={**os.environ, "WRK_BODY": str(body)}, timeout=seconds + 60)
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in target["pids"].items()}
    cpu["wrk"] = _children_cpu() - wrk_before   # the client's TLS runs on the same 2 cores
    line = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed: {proc.stdout}{proc.stderr}")
    result = json.loads(line[-1])
    result["envoy_2xx"] = envoy_2xx(target) - before
    for name, seconds_used in cpu.items():   # the servers' own cost, whatever the background load
        result[f"{name}_cpu_us"] = round(seconds_used / max(1, result["envoy_2xx"]) * 1e6, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-tls", action="store_true", help="the edge node without TLS")
    parser.add_argument("--pin", action="store_true",
                        help="the nodes' Envoy and model server on CPU 1, wrk on CPU 0 (default: not pinned)")
    parser.add_argument("--variants", default="plain,edge",
                        help=f"nodes to compare with plain, in rounds (of {', '.join(VARIANTS)}); e.g. "
                             "plain,edge,plain2,tls,keys: plain2 shows the method's noise, tls and keys the edge's parts")
    args = parser.parse_args()
    subprocess.run([str(REPO / "bench/load_tools.sh")], check=True)   # wrk, when missing
    names = list(dict.fromkeys(["plain", *args.variants.split(",")]))
    WORK.mkdir(parents=True, exist_ok=True)
    body = WORK / "body.json"
    body.write_text('{"instances": [1.0, 2.0, 5.0]}')
    targets, started = [], []
    try:
        for name in names:
            targets.append(node(name, started, args.no_tls))
        pinned = args.pin
        for target in targets:
            if pinned:
                for pid in target["pids"].values():
                    subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], check=True,
                                   capture_output=True, timeout=30)
            wrk(target, body, args.concurrency, 2, pinned)    # warm-up
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            for target in targets if round_no % 2 == 0 else targets[::-1]:
                result = wrk(target, body, args.concurrency, args.duration, pinned)
                runs[target["name"]].append(result)
                print(f"round {round_no + 1} {target['name']:6s} {result['rps']:8.1f} req/s "
                      f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms errors {result['errors']} "
                      f"wrk ok {result['requests'] - result['errors']} envoy 2xx {result['envoy_2xx']} "
                      f"CPU/request: model server {result['model_server_cpu_us']} us, envoy {result['envoy_cpu_us']} us, "
                      f"wrk {result['wrk_cpu_us']} us",
                      file=sys.stderr)

        def ratios(name: str) -> list[float]:
            return [v["rps"] / p["rps"] for p, v in zip(runs["plain"], runs[name])]

        def server_cost(result: dict) -> float:
            return result["model_server_cpu_us"] + result["envoy_cpu_us"]

        def pooled(name: str) -> tuple[float, float]:
            """Every round of a node as one run: its requests over its time, and its servers'
            CPU per request weighted by its requests (a round's swing weighs as much as it lasts)."""
            done = sum(r["envoy_2xx"] for r in runs[name])
            return (sum(r["rps"] for r in runs[name]) / len(runs[name]),
                    sum(server_cost(r) * r["envoy_2xx"] for r in runs[name]) / max(1, done))

        summary = {
            "concurrency": args.concurrency, "edge": "TLS + API key + rate limits" if not args.no_tls
            else "API key + rate limits", "loadavg": os.getloadavg(),
            "cpus": "nodes on CPU 1, wrk on CPU 0" if pinned else "not pinned",
            "rps_median": {name: round(statistics.median(r["rps"] for r in runs[name]), 1) for name in names},
            "p99_ms_median": {name: statistics.median(r["p99_ms"] for r in runs[name]) for name in names},
            # Per round, vs plain: throughput, and the servers' CPU per request (its inverse: the
            # second measure of the same ratio, which holds whatever else the machine ran).
            "ratios": {name: [round(r, 3) for r in ratios(name)] for name in names[1:]},
            "ratio_median": {name: round(statistics.median(ratios(name)), 3) for name in names[1:]},
            # All rounds pooled (equal durations: mean req/s), the ratio to plain's pooled.
            "ratio_pooled": {name: round(pooled(name)[0] / pooled("plain")[0], 3) for name in names[1:]},
            "cost_ratio_pooled": {name: round(pooled("plain")[1] / pooled(name)[1], 3) for name in names[1:]},
            "cost_ratio_median": {name: round(statistics.median(
                server_cost(p) / server_cost(v) for p, v in zip(runs["plain"], runs[name])), 3) for name in names[1:]},
            "cpu_us_per_request": {name: {part: statistics.median(r[f"{part}_cpu_us"] for r in runs[name])
                                          for part in ("model_server", "envoy", "wrk")} for name in names},
            "errors": sum(r["errors"] for rs in runs.values() for r in rs),
            "wrk_vs_envoy": [(r["requests"] - r["errors"], r["envoy_2xx"]) for rs in runs.values() for r in rs]}
        print(json.dumps(summary, indent=2))
        return 0 if summary["ratio_median"].get("edge", 1.0) >= 0.9 else 1
    finally:
        for root in started:
            try:
                cli(root, "down", timeout=120)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
