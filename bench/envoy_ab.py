"""A/B of Envoy settings on the REST hot path: variants of the node's rendered envoy.yaml vs direct.

Starts one model server (half_plus_two) and one Envoy per variant, all on ``--server-cpus``, and
runs wrk at ``--concurrency`` against direct and every variant in interleaved rounds (the order
rotates each round). Per run it prints requests/s, p50/p99, and each server's CPU time per
request (from /proc over the run); then medians and per-round ratios vs direct and vs ``base``.
Variants: ``base`` (the rendered config, ``--envoy-concurrency`` workers), ``conc2`` (2 workers),
one removed feature each (``no_remote_addr``, ``no_retry``, ``no_buffer``, ``http1``, ``no_hc``,
``no_outlier``, ``no_stats``, ``no_reqid``, ``no_envoy_headers``), ``minimal`` (all of them) and
``floor`` (a ``direct_response``: Envoy alone, no upstream; ``floor+EDIT`` with edits such as
``exact_balance``: connections spread evenly over the workers). A scratch tool, not a product path:
the product template is envoy/envoy.yaml.j2.

    bench/run_all.sh --no-peers   # once: builds the models and renders bench/.work/node
    .venv/bin/python bench/envoy_ab.py --rounds 3 --variants base,conc2,no_retry,minimal,floor
    .venv/bin/python bench/envoy_ab.py --server-cpus 0,1 --client-cpus 0,1 --variants base,conc2
"""
from __future__ import annotations

import argparse, json, os, re, signal, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AB = REPO / "bench/.work/ab"
VENV = REPO / ".venv/bin"
NODE = REPO / "bench/.work/node"
MODELS = NODE / "data/models"
HPT = "saved_model_half_plus_two_mkl"
ADDR = "127.0.0.93"
BODY = AB / "body.json"
procs: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDR, 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


SCHED: list[str] = []   # e.g. ["chrt", "--batch", "0"]: every server under SCHED_BATCH


def spawn(cmd, cpus, log):
    p = subprocess.Popen(["taskset", "-c", cpus, *SCHED, *cmd], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    procs.append(p)
    return p


def ok(url, body=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def wait(url, body=None, t=120):
    end = time.time() + t
    while time.time() < end:
        if ok(url, body):
            return
        time.sleep(0.1)
    raise RuntimeError(url)


def remove_block(text, start_re, end_re):
    return re.sub(start_re + r".*?" + end_re, "", text, flags=re.S)


EDITS = {
    "no_remote_addr": lambda t: t.replace("          use_remote_address: true\n", ""),
    "no_retry": lambda t: remove_block(t, r"\n                  retry_policy:\n", r"PreviousHostsPredicate\}\n").replace(
        "timeout: 120s", "timeout: 120s\n"),
    "no_buffer": lambda t: t.replace("                request_body_buffer_limit: 67108864\n", ""),
    "http1": lambda t: t.replace("codec_type: AUTO", "codec_type: HTTP1"),
    "no_hc": lambda t: remove_block(t, r"    health_checks:\n", r"codec_client_type: HTTP1\n"),
    "no_outlier": lambda t: remove_block(t, r"    outlier_detection:\n", r"uneject_host: false\n"),
    "no_reqid": lambda t: t.replace("          request_headers_timeout: 10s\n", "          request_headers_timeout: 10s\n          generate_request_id: false\n"),
    "no_envoy_headers": lambda t: t.replace("router.v3.Router}", "router.v3.Router, suppress_envoy_headers: true}"),
    # at most N upstream HTTP/1.1 connections per model server; the rest wait in Envoy's queue
    **{f"maxconn{n}": (lambda t, n=n: t.replace(
        "    connect_timeout: 1s\n",
        "    connect_timeout: 1s\n    circuit_breakers: {thresholds: [{max_connections: %d, "
        "max_pending_requests: 100000, max_requests: 100000}]}\n" % n)) for n in (1, 2, 4, 8, 16)},
    "no_stats": lambda t: t.replace("static_resources:", "stats_config: {stats_matcher: {reject_all: true}}\n\nstatic_resources:", 1),
    # every listener spreads its connections evenly over the workers (not as the kernel hands them out)
    "exact_balance": lambda t: re.sub(r"(  - name: (?:rest|grpc)\n    address: [^\n]+\n)",
                                      r"\1    connection_balance_config: {exact_balance: {}}\n", t),
}


def variant_yaml(base: str, name: str, ports: dict, eds: dict) -> str:
    t = re.sub(r"(admin:\n  address: \{socket_address: \{address: )[^,]+, port_value: \d+",
               rf"\g<1>127.0.0.1, port_value: {ports['admin']}", base)
    for listener in ("rest", "grpc"):
        t = re.sub(rf"(  - name: {listener}\n    address: \{{socket_address: \{{address: )[^,]+, port_value: \d+",
                   rf"\g<1>{ADDR}, port_value: {ports[listener]}", t)
    for c, p in eds.items():
        if name.startswith("uds") and c == "model_server_rest":
            p = eds["uds"]
        elif c == "uds":
            continue
        t = re.sub(r"\{path: \S*eds_" + c + r"\.yaml\}", "{path: " + str(p) + "}", t)
    name = name.split("~")[0]
    if name == "uds":               # REST upstream over the unix socket (scratch --ms ms_uds.py)
        name = "no_hc"
    parts = [] if name in ("base", "conc2") else (list(EDITS) if name == "minimal" else name.split("+"))
    if name.split("+")[0] == "floor":  # floor, or floor+EDIT: Envoy alone, with those edits
        t = re.sub(r"(              - match: \{prefix: \"/\"\}\n).*?(          http_filters:)",
                   r"\1                direct_response: {status: 200, body: {inline_string: '{\"predictions\": [2.5, 3.0, 4.5]}'}}\n\2",
                   t, count=1, flags=re.S)
        parts = name.split("+")[1:]
    for p in parts:
        new = EDITS[p](t)
        assert new != t, p
        t = new
    return t


def wrk(url, c, d, cpus, threads):
    out = subprocess.run(["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{c}", f"-d{d:g}s", "--timeout=10s", "-s",
                          str(REPO / "bench/post.lua"), url], capture_output=True, text=True,
                         env={**os.environ, "WRK_BODY": str(BODY)})
    return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-cpus", default="1")
    ap.add_argument("--client-cpus", default="0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--variants", default="base,conc2")
    ap.add_argument("--envoy-concurrency", type=int, default=1)
    ap.add_argument("--tag", default="ab")
    ap.add_argument("--ms", default=str(VENV / "appliance-model-server"),
                    help="model server command, or a .py run with the venv's python (scratch patches)")
    ap.add_argument("--sched", choices=("normal", "batch"), default="normal",
                    help="scheduling policy of every server process (batch: no wakeup preemption)")
    ap.add_argument("--direct-batch", action="store_true", help="also direct with SCHED_BATCH (variant~batch)")
    ap.add_argument("--perf", action="store_true", help="perf stat the model server during each run")
    a = ap.parse_args()
    if a.sched == "batch":
        SCHED[:] = ["chrt", "--batch", "0"]
    AB.mkdir(parents=True, exist_ok=True)
    BODY.write_bytes(b'{"instances": [1.0, 2.0, 5.0]}')
    base = (NODE / "var/lib/appliance/run/envoy.yaml").read_text()
    logs = AB / f"logs-{a.tag}"
    logs.mkdir(exist_ok=True)
    rest, grpc = free_port(), free_port()
    cfg = logs / "models.config"
    cfg.write_text('model_config_list { config { name: "%s" base_path: "%s" model_platform: "tensorflow" } }\n'
                   % (HPT, MODELS / HPT))
    nthreads = 2
    ms = spawn(([str(VENV / "python"), a.ms] if a.ms.endswith(".py") else [a.ms]) + [ f"--port={grpc}", f"--rest_api_port={rest}",
                f"--listen_address={ADDR}", f"--model_config_file={cfg}", f"--rest_api_num_threads={nthreads}"],
               a.server_cpus, logs / "ms.log")
    wait(f"http://{ADDR}:{rest}/v1/models/{HPT}")
    eds = {}
    for c, p in (("model_server_rest", rest), ("model_server_grpc", grpc)):
        eds[c] = logs / f"eds_{c}.yaml"
        eds[c].write_text(f"""version_info: x
resources:
- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {c}
  endpoints:
  - lb_endpoints:
    - endpoint:
        address: {{socket_address: {{address: {ADDR}, port_value: {p}}}}}
        health_check_config: {{port_value: {rest}}}
""")
    if os.environ.get("UDS_PATH"):
        eds["uds"] = logs / "eds_uds.yaml"
        eds["uds"].write_text(f"""version_info: x
resources:
- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: model_server_rest
  endpoints:
  - lb_endpoints:
    - endpoint:
        address: {{pipe: {{path: {os.environ['UDS_PATH']}}}}}
""")
    targets = {"direct": (f"http://{ADDR}:{rest}/v1/models/{HPT}:predict", [ms.pid])}
    if a.direct_batch:
        targets["direct~batch"] = targets["direct"]
    try:
        for name in a.variants.split(","):
            ports = {"admin": free_port(), "rest": free_port(), "grpc": free_port()}
            path = logs / f"envoy_{name}.yaml"
            path.write_text(variant_yaml(base, name, ports, eds))
            conc = 2 if name.startswith("conc2") else a.envoy_concurrency
            e = spawn([str(VENV / "envoy"), "-c", str(path), "--concurrency", str(conc), "--disable-hot-restart",
                       "--log-level", "warn", "--base-id", str(ports["admin"])], a.server_cpus, logs / f"envoy_{name}.log")
            url = f"http://{ADDR}:{ports['rest']}/v1/models/{HPT}:predict"
            try:
                wait(url, BODY.read_bytes(), 60)
            except RuntimeError:
                print((logs / f"envoy_{name}.log").read_text()[-3000:])
                raise
            targets[name] = (url, [e.pid] if name.startswith("floor") else [e.pid, ms.pid])
        threads = len(a.client_cpus.split(","))
        for url, _ in targets.values():
            wrk(url, 8, 1, a.client_cpus, threads)
        res = {n: [] for n in targets}
        names = list(targets)
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                url, pids = targets[n]
                if n.endswith("~batch"):     # this run only: no wakeup preemption between the servers
                    for p in pids:
                        subprocess.run(["chrt", "--batch", "--all-tasks", "--pid", "0", str(p)], check=True)
                before = [cpu_s(p) for p in pids]
                load = os.getloadavg()[0]
                stat = subprocess.Popen(["perf", "stat", "-x,", "-e", "task-clock,context-switches,cycles,instructions",
                                         "-p", str(pids[-1]), "--", "sleep", str(a.duration)],
                                        stderr=subprocess.PIPE, text=True) if a.perf else None
                w = wrk(url, a.concurrency, a.duration, a.client_cpus, threads)
                if stat:
                    counters = {l.split(",")[2]: float(l.split(",")[0] or 0) for l in stat.communicate()[1].splitlines()
                                if l.count(",") > 3 and l.split(",")[0].replace(".", "").isdigit()}
                    w["ms_per_req"] = {k: round(v / max(w["requests"], 1), 2) for k, v in counters.items()}
                    print("   model server per request:", w["ms_per_req"])
                used = [cpu_s(p) - b for p, b in zip(pids, before)]
                if n.endswith("~batch"):
                    for p in pids:
                        subprocess.run(["chrt", "--other", "--all-tasks", "--pid", "0", str(p)], check=True)
                w["us_per_req"] = [round(u / max(w["requests"], 1) * 1e6, 1) for u in used]
                w["load"] = load
                res[n].append(w)
                print(f"round {r} {n:16s} {w['rps']:8.0f} req/s p50 {w['p50_ms']:6.2f} p99 {w['p99_ms']:6.2f} "
                      f"err {w['errors']} us/req {w['us_per_req']} load {load:.1f}", flush=True)
        print("\nsummary (median of rounds; ratio = median of per-round ratios vs direct / vs base)")
        for n in names:
            rps = [w["rps"] for w in res[n]]
            vs_direct = [w["rps"] / d["rps"] for w, d in zip(res[n], res["direct"])]
            vs_base = [w["rps"] / b["rps"] for w, b in zip(res[n], res["base"])] if "base" in res else []
            us = [w["us_per_req"] for w in res[n]]
            print(f"{n:16s} rps {statistics.median(rps):8.0f} ({', '.join(f'{x:.0f}' for x in rps)}) "
                  f"p99 {statistics.median([w['p99_ms'] for w in res[n]]):6.2f}  "
                  f"/direct {statistics.median(vs_direct):.0%} ({', '.join(f'{x:.0%}' for x in vs_direct)})  "
                  + (f"/base {statistics.median(vs_base):.0%} ({', '.join(f'{x:.0%}' for x in vs_base)})  " if vs_base else "")
                  + f"us/req(envoy,ms) {[statistics.median(col) for col in zip(*us)]}")
        json.dump(res, open(logs / "results.json", "w"), indent=1)
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except Exception:
                pass


if __name__ == "__main__":
    main()
