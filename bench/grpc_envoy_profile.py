"""Where a gRPC call's CPU goes through Envoy: per-process CPU per Predict, direct vs via Envoy.

One node per source tree (``appliance up``: supervisord, Envoy, model server; half_plus_two; by
default only this checkout), every node pinned to ``--server-cpus``; h2load (one HTTP/2
connection, ``--concurrency`` streams) on ``--client-cpus`` against each node's gRPC listener
(Envoy) and its model server's own gRPC port, in interleaved rounds (the order reversed every
other round). For each run: h2load's requests/s, Envoy's upstream 2xx (via Envoy: the
cross-check), and the CPU microseconds per request of Envoy and of the model server with their
context switches, read from ``/proc/<pid>/task/*`` around the run: on a shared VM these are
steadier than requests/s. A scratch tool like ``model_server_ab.py``; not a test.

    .venv/bin/python bench/grpc_envoy_profile.py --rounds 3
    git archive HEAD~2 | tar -x -C /tmp/old && ln -s $PWD/.venv /tmp/old/.venv
    .venv/bin/python bench/grpc_envoy_profile.py --trees /tmp/old,. --rounds 4   # before/after
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
from edge_bench import HPT, REPO, free_port  # noqa: E402
from serving_bench import envoy_counter, grpc_request_bytes, parse_h2load  # noqa: E402

WORK = REPO / "bench/.work/grpc_profile"


def proc_counts(pid: int) -> tuple[float, int, int]:
    """CPU seconds, voluntary and involuntary context switches, summed over the process's threads."""
    cpu = voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except FileNotFoundError:   # a thread that ended meanwhile
            continue
        cpu += int(fields[11]) + int(fields[12])
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary += int(line.split()[1])
    return cpu / os.sysconf("SC_CLK_TCK"), voluntary, involuntary


def h2load(target: str, body: Path, concurrency: int, seconds: float, cpus: str, pids: dict[str, int],
           counter=None) -> dict:
    before = {name: proc_counts(pid) for name, pid in pids.items()}
    upstream = counter() if counter else 0
    proc = subprocess.run(["taskset", "-c", cpus, "h2load", f"-D{seconds:g}", "-c1", f"-m{concurrency}", "-t1",
                           "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                           f"http://{target}/tensorflow.serving.PredictionService/Predict"],
                          capture_output=True, text=True, timeout=seconds + 60)
    after = {name: proc_counts(pid) for name, pid in pids.items()}
    summary = parse_h2load(proc.stdout)
    ok = summary["succeeded"]
    result = {"rps": round(ok / summary["seconds"], 1), "requests": ok, "loadavg": round(os.getloadavg()[0], 2)}
    if counter:
        result["envoy_upstream_2xx"] = int(counter() - upstream)
    for name in pids:
        used, voluntary, involuntary = (a - b for a, b in zip(after[name], before[name]))
        result[f"{name}_cpu_us"] = round(used / max(1, ok) * 1e6, 1)
        result[f"{name}_switches"] = round((voluntary + involuntary) / max(1, ok), 3)
    return result


def appliance(tree: Path, root: Path, *args: str, cpus: str | None = None) -> str:
    """The appliance CLI of ``tree`` (its code, through PYTHONPATH, is what the node's processes run)."""
    cmd = [str(REPO / ".venv/bin/python"), "-m", "appliance.cli", "--root", str(root), *args]
    result = subprocess.run((["taskset", "-c", cpus] if cpus else []) + cmd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tree)}, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"appliance {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def start_node(label: str, tree: Path, address: str, cpus: str, extra: list[str]) -> dict:
    root = WORK / f"node-{label}"
    if not (root / "data/models" / HPT).exists():
        appliance(tree, root, "builtin-models", "--only", HPT)
    ports = {key: free_port(address) for key in ("http.port", "grpc.port", "serving.rest.port", "serving.grpc.port")}
    admin = free_port("127.0.0.1")
    values = {"model.name": HPT, "node.address": address, "logviewer.enabled": "false", "envoy.admin.port": admin,
              **ports, **dict(item.split("=", 1) for item in extra)}
    config = root / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    appliance(tree, root, "up", "--timeout", "300", cpus=cpus)   # every process inherits the CPU set
    status = json.loads(appliance(tree, root, "status", "--json"))
    pids = {p["name"]: p["pid"] for p in status["processes"] if p["name"] in ("model_server", "envoy")}
    return {"label": label, "tree": tree, "root": root, "pids": pids,
            "targets": {f"{label} via Envoy": (f"{address}:{ports['grpc.port']}",
                                               envoy_counter(f"127.0.0.1:{admin}", "cluster.", "upstream_rq_2xx")),
                        f"{label} direct": (f"127.0.0.1:{ports['serving.grpc.port']}", None)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default=".", help="comma-separated source trees, one node each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--address", default="127.0.13.10", help="the first node's; the next ones count up")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--set", action="append", default=[], help="extra appliance.yaml key=value, every node")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    body = WORK / "predict.bin"
    body.write_bytes(grpc_request_bytes())
    first = args.address.rsplit(".", 1)
    nodes: list[dict] = []
    try:
        for number, tree in enumerate(args.trees.split(",")):
            nodes.append({"root": WORK / f"node-{number}", "tree": Path(tree).resolve()})  # stopped if `up` fails
            nodes[-1] = start_node(str(number), Path(tree).resolve(), f"{first[0]}.{int(first[1]) + number}",
                                   args.server_cpus, args.set)
        targets = {name: (target, counter, node["pids"]) for node in nodes
                   for name, (target, counter) in node["targets"].items()}
        for target, _, pids in targets.values():
            h2load(target, body, 8, 1, args.client_cpus, pids)   # warm-up
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for round_no in range(args.rounds):
            for name in list(targets) if round_no % 2 == 0 else list(targets)[::-1]:
                target, counter, pids = targets[name]
                result = h2load(target, body, args.concurrency, args.duration, args.client_cpus, pids, counter)
                runs[name].append(result)
                print(f"round {round_no + 1} {name:14s} {json.dumps(result)}", file=sys.stderr)
        summary: dict[str, object] = {"trees": {node["label"]: str(node["tree"]) for node in nodes}}
        for node in nodes:
            via, direct = runs[f"{node['label']} via Envoy"], runs[f"{node['label']} direct"]
            ratios = [v["rps"] / d["rps"] for v, d in zip(via, direct)]
            summary[node["label"]] = {
                "via Envoy / direct, per round": [round(r, 3) for r in ratios],
                "median": round(statistics.median(ratios), 3),
                **{f"{side} {key} (median)": statistics.median(r[key] for r in rs)
                   for side, rs in (("via Envoy", via), ("direct", direct))
                   for key in rs[0] if key.endswith(("_us", "_switches")) or key == "rps"}}
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        for node in nodes:
            try:
                appliance(node["tree"], node["root"], "down")
            except RuntimeError as exc:
                print(exc, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
