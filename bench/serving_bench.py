"""Serving benchmarks: the appliance (through Envoy and direct) vs MLServer and KServe, one run.

Every scenario of bench/README.md is measured side by side in one run, because the machine is
noisy and only ratios taken minutes apart mean anything. What runs (all on loopback, on free
ports of ``--address``; every process is started here and stopped here by PID):

1. REST ``saved_model_half_plus_two_mkl``: through Envoy, direct to a model server, Envoy alone
   answering with ``direct_response`` (the floor), MLServer (V2 protocol) and KServe (V1)
   serving the same SavedModel; wrk, concurrency 1/8/64.
1b. Envoy vs direct at the highest concurrency, with no CPU pinning at all.
2. gRPC: the same model through Envoy and direct (h2load; ``bench/grpc_load.py`` at the top).
2b. REST and gRPC, through Envoy and direct, in the same rounds at the top concurrency.
3. ``resnet`` with base64 JPEGs at batch 1 and 32 through Envoy vs ``bench/inprocess.py``,
   alternating in rounds.
4. Server-side batching on vs off at concurrency 64 for both models (direct model servers).
5. Cold start (``appliance up`` to the first successful predict) and resident memory.

Every run is confirmed by the server's own counter (``Bench.measured``): a load tool's count
that the server does not confirm, or a run with failed requests, fails the run (exit 1) after
the results are written. Each cell is ``--rounds`` interleaved rounds, reported as medians with
the worst round's p99 next to the median one.

CPU split (the machine has 2 cores): the servers (Envoy + model server, or a peer) run under
``taskset -c --server-cpus`` and the load generators under ``taskset -c --client-cpus``; the same
split is used for every compared setup. Results: a JSON file and Markdown tables in ``--out``.

    .venv/bin/python bench/serving_bench.py [--rounds 3] [--duration 5] [--scenarios rest,grpc] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
# Through this interpreter, not the venv's console scripts: a script's shebang names the
# interpreter it was installed with, and a reinstall elsewhere can leave it pointing at nothing.
APPLIANCE = [sys.executable, "-m", "appliance.cli"]
MODEL_SERVER = [sys.executable, "-m", "modelserver.main"]
HPT = "saved_model_half_plus_two_mkl"
HPT_V1 = b'{"instances": [1.0, 2.0, 5.0]}'
HPT_V2 = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 5.0]}]}'
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
max_enqueued_batches { value: 1000 }
"""


PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
KSERVE_METRIC = "request_predict_seconds_count"
MLSERVER_METRIC = "model_infer_request_success_total"
# Envoy alone: every request answered by Envoy itself (what the node's Envoy costs at the least).
FLOOR_YAML = """\
admin: {address: {socket_address: {address: ADDRESS, port_value: ADMIN}}}
static_resources:
  listeners:
  - name: floor
    address: {socket_address: {address: ADDRESS, port_value: PORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: floor
          route_config:
            virtual_hosts:
            - name: floor
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: '{"predictions": [2.5, 3.0, 4.5]}'}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""


@dataclass
class Target:
    """One server under load: where to send (a URL, or host:port for gRPC), what, and its own counter."""

    name: str
    url: str
    body: Path | None
    counter: Callable[[], float]
    counter_name: str
    pids: list[int] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def http(url: str, body: bytes | None = None, timeout: float = 5.0) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def sequential(url: str, data: bytes, count: int) -> dict:
    """``count`` requests one after another on one keep-alive connection (a fixed count, not a
    time box: a time-boxed client leaves a multi-second request running in the server when it
    stops, and that request would steal CPU from the next measurement)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    latencies, errors = [], 0
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        conn.request("POST", parts.path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        errors += response.status != 200
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    conn.close()
    latencies.sort()
    return {"requests": count, "ok": count - errors, "rps": count / elapsed, "p50_ms": latencies[count // 2],
            "p99_ms": latencies[min(count - 1, int(count * 0.99))], "errors": errors, "seconds": elapsed}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and its children (multi-process peers)."""
    total = rss_mb(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        total += tree_rss_mb(int(child))
    return total


class Proc:
    """A server started here, in its own process group, stopped by PID."""

    def __init__(self, name: str, cmd: list[str], cpus: str, log_dir: Path, env: dict | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.handle = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=self.handle, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.handle.close()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.results: dict[str, Any] = {"rest": [], "rest_unpinned": [], "grpc": [], "protocols": [], "resnet": [],
                                        "batching": [],
                                        "memory": {}, "settings": {}, "checks": []}
        self.bodies: dict[str, Path] = {}
        self.node_root = args.work / "node"
        self.node_up = False
        self.runs = 0

    # ------------------------------------------------------------------ processes

    def spawn(self, name: str, cmd: list[str], **kwargs: Any) -> Proc:
        proc = Proc(name, cmd, self.args.server_cpus, self.logs, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.node_up:
            subprocess.run(APPLIANCE + ["--root", str(self.node_root), "down"], capture_output=True)
            self.node_up = False

    def body(self, name: str, data: bytes) -> Path:
        path = self.out / f"body_{name}.json"
        path.write_bytes(data)
        self.bodies[name] = path
        return path

    # ------------------------------------------------------------------ load generators

    def wrk(self, url: str, body: Path, concurrency: int, duration: float, timeout: float = 10.0,
            cpus: str | None = None) -> dict:
        cpus = cpus or self.args.client_cpus
        threads = min(concurrency, cpu_count(cpus))
        cmd = ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{concurrency}",
               f"-d{duration:g}s", f"--timeout={timeout:g}s", "-s", str(BENCH / "post.lua"), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WRK_BODY": str(body)})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        result = json.loads(lines[-1])
        return {**result, "ok": result["requests"] - result["error_kinds"]["status"], "client": "wrk"}

    def h2load(self, target: str, concurrency: int, duration: float) -> dict:
        """gRPC with nghttp2's h2load: one HTTP/2 connection, ``concurrency`` streams in flight.

        The body is a length-prefixed ``PredictRequest`` serialized with TF Serving's own stubs
        (``grpc_request_bytes``). Every run writes a log file of its own (h2load appends to an
        existing one: a shared file once made each run count every earlier run's requests too);
        the request count and rate are h2load's own summary, the latencies its per-request log,
        and the two must agree on the count. h2load sees HTTP statuses, not ``grpc-status``
        trailers: the server's own counter (``measured``) is what confirms the answers were OK.
        """
        self.runs += 1
        log_file = self.logs / f"h2load-{self.runs}.log"
        log_file.unlink(missing_ok=True)
        cmd = ["taskset", "-c", self.args.client_cpus, "h2load", f"-D{duration:g}", "-c1", f"-m{concurrency}",
               "-t1", "-d", str(self.bodies["grpc_hpt"]), "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"--log-file={log_file}",
               f"http://{target}/tensorflow.serving.PredictionService/Predict"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        summary = parse_h2load(proc.stdout)
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line.count("\t") == 2]
        latencies = sorted(int(row[2]) / 1000 for row in rows)
        if abs(len(rows) - summary["done"]) > max(0.01 * summary["done"], 2):
            raise RuntimeError(f"h2load's log has {len(rows)} requests, its summary {summary['done']}: {log_file}")
        return {"requests": summary["done"], "ok": summary["succeeded"], "rps": summary["succeeded"] / summary["seconds"],
                "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                "errors": summary["done"] - summary["succeeded"], "seconds": summary["seconds"],
                "client_cpu": float("nan"), "client": "h2load"}

    def grpc(self, target: str, concurrency: int, duration: float) -> dict:
        """The Python client on TF Serving's stubs (``grpc_load.py``): it reads every ``grpc-status``."""
        cmd = ["taskset", "-c", self.args.client_cpus, sys.executable, str(BENCH / "grpc_load.py"),
               "--target", target, "--model", HPT, "--input", "x=float32:1.0,2.0,5.0",
               "--concurrency", str(concurrency), "--duration", f"{duration:g}", "--warmup", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"grpc_load failed ({proc.returncode}): {proc.stderr[-2000:]}")
        result = json.loads(lines[-1])
        return {**result, "ok": result["requests"], "client": "grpc_load.py"}

    def measured(self, target: "Target", concurrency: int, run: Callable[[], dict]) -> dict:
        """``run()`` (one load-tool run) with the target's server-side counter read around it.

        The load tool's count of answered requests and the server's own count of requests it
        answered OK over the same run (Envoy's ``upstream_rq_total``, the model server's
        ``request_count``, a peer's metrics) are two independent measures of the same thing: when
        they differ by more than ``--tolerance`` the run is recorded as a failed check, and the
        bench exits non-zero at the end (after writing its results). The requests in flight when
        the tool stops (at most ``concurrency``) may be answered, and counted, after it stopped.
        """
        cpus = cpu_list(self.args.server_cpus)
        before, sched, stolen, started = target.counter(), schedstat(target.pids), steal_ms(cpus), time.monotonic()
        result = run()
        served = target.counter() - before
        after, elapsed = schedstat(target.pids), time.monotonic() - started
        result["steal_ms"] = steal_ms(cpus) - stolen
        result["served"] = served
        # The profile of the run from the kernel's side: the servers' CPU per answered request,
        # how long their threads were runnable but waiting for a CPU (per second of the run), and
        # how long the hypervisor took the servers' CPU away (steal): the causes of a tail that
        # are not in any of our processes.
        result["server_us"] = (after[0] - sched[0]) / 1e3 / max(served, 1)
        result["runq_ms_per_s"] = (after[1] - sched[1]) / 1e6 / elapsed
        what = f"{target.name} c={concurrency}: {result.get('client', 'wrk')}"
        self.check(f"{what} vs {target.counter_name}", result["ok"], served, slack=concurrency)
        self.check(f"{what}: failed requests vs none", result["errors"], 0)
        return result

    def check(self, what: str, tool: float, server: float, slack: float = 0, tolerance: float | None = None) -> None:
        """Record (and log when failed) whether two measures of one quantity agree."""
        tolerance = self.args.tolerance if tolerance is None else tolerance
        gap = max(abs(tool - server) - slack, 0) / max(server, tool, 1)
        entry = {"what": what, "tool": round(tool, 1), "server": round(server, 1), "gap": round(gap, 4),
                 "ok": gap <= tolerance}
        self.results["checks"].append(entry)
        if not entry["ok"]:
            log(f"CHECK FAILED: {what}: {tool:.0f} vs {server:.0f} ({gap:.1%} apart, tolerance {tolerance:.0%})")

    def warm(self, url: str, body: Path, cpus: str | None = None) -> None:
        """A short unmeasured run: connections, caches and the runtime's first calls."""
        self.wrk(url, body, 8, 1, cpus=cpus)

    # ------------------------------------------------------------------ stacks

    def start_node(self) -> dict:
        """``appliance up`` of a node with both built-in models; cold start measured here.

        Envoy runs with the product's worker count (``envoy.concurrency`` unset: one per CPU the
        node may use, modelserver/cpus.py: 1 under ``taskset -c 1``); ``--set`` overrides settings.
        """
        address = self.args.address
        models = self.node_root / "data/models"
        if not (models / "resnet").is_dir() or not (models / HPT).is_dir():
            log("building the built-in models (once; kept in the work dir)")
            subprocess.run(APPLIANCE + ["--root", str(self.node_root), "builtin-models"], check=True,
                           capture_output=True)
        ports = {key: free_port(address) for key in ("http.port", "grpc.port", "envoy.admin.port",
                                                     "serving.rest.port", "serving.grpc.port")}
        sets = {"node.address": address, "model.name": f"{HPT},resnet", "logviewer.enabled": "false", **ports,
                **dict(item.split("=", 1) for item in self.args.set)}
        self.results["settings"]["node"] = sets
        cmd = ["taskset", "-c", self.args.server_cpus, *APPLIANCE, "--root", str(self.node_root), "up"]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        self.ports = ports
        envoy = f"http://{address}:{ports['http.port']}"
        start = time.monotonic()
        up = subprocess.Popen(cmd, stdout=open(self.logs / "appliance_up.log", "wb"), stderr=subprocess.STDOUT)
        self.node_up = True
        first = wait_until(lambda: http(f"{envoy}/v1/models/{HPT}:predict", HPT_V1, 1.0) == 200, 300,
                           "the first predict through Envoy")
        resnet_first = wait_until(
            lambda: http(f"{envoy}/v1/models/resnet:predict", self.bodies["resnet1"].read_bytes(), 30) == 200,
            300, "the first resnet predict") + first
        if up.wait(300) != 0:
            raise RuntimeError(f"appliance up failed; see {self.logs / 'appliance_up.log'}")
        up_done = time.monotonic() - start
        status = json.loads(subprocess.run(APPLIANCE + ["--root", str(self.node_root), "status", "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        self.node_pids = {p["name"]: p["pid"] for p in status["processes"]}
        from appliance.node import envoy_worker_threads   # REPO is on sys.path from main() on
        self.envoy_workers = envoy_worker_threads(self.node_pids["envoy"])
        self.results["settings"]["envoy_workers"] = self.envoy_workers
        cold = {"first_predict_s": first, "first_resnet_predict_s": resnet_first, "appliance_up_returned_s": up_done,
                "model_server_rss_mb": rss_mb(self.node_pids["model_server"]),
                "envoy_rss_mb": rss_mb(self.node_pids["envoy"])}
        self.results["cold_start"] = cold
        log(f"node up: first predict after {first:.1f}s, `appliance up` returned after {up_done:.1f}s; "
            f"Envoy workers: {self.envoy_workers}")
        return cold

    def start_model_server(self, name: str, models: list[str], extra: list[str] | None = None
                           ) -> tuple[str, str, Proc, Callable[[], float]]:
        """A model server of its own (the node's has no metrics page), with Prometheus metrics on:
        its ``request_count`` of OK answers for half_plus_two is the counter returned."""
        address = self.args.address
        rest, grpc = free_port(address), free_port(address)
        config = self.out / f"{name}.models.config"
        config.write_text("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{self.node_root / "data/models" / m}" model_platform: "tensorflow" }}\n'
            for m in models) + "}\n")
        monitoring = self.out / "monitoring.config"
        monitoring.write_text(f'prometheus_config {{ enable: true path: "{PROMETHEUS_PATH}" }}\n')
        cmd = [*MODEL_SERVER, f"--port={grpc}", f"--rest_api_port={rest}",
               f"--listen_address={address}", f"--model_config_file={config}",
               f"--monitoring_config_file={monitoring}", f"--rest_api_num_threads={self.args.threads}", *(extra or [])]
        proc = self.spawn(name, cmd)
        url = f"http://{address}:{rest}"
        wait_until(lambda: proc.check() or http(f"{url}/v1/models/{models[0]}") == 200, 300, name)
        counter = prometheus_counter(url + PROMETHEUS_PATH, ":tensorflow:serving:request_count", status="OK")
        return url, f"{address}:{grpc}", proc, counter

    def start_floor(self) -> Target:
        """Envoy alone answering every request itself (``direct_response``): Envoy's own limit,
        with the node Envoy's worker count on the same CPUs (the issue's "Envoy floor")."""
        address = self.args.address
        port, admin = free_port(address), free_port(address)
        config = self.out / "envoy_floor.yaml"
        config.write_text(FLOOR_YAML.replace("ADDRESS", address).replace("ADMIN", str(admin))
                          .replace("PORT", str(port)))
        proc = self.spawn("envoy_floor", [str(VENV_BIN / "envoy"), "-c", str(config), "--concurrency",
                                          str(self.envoy_workers), "--disable-hot-restart", "--log-level", "warn",
                                          "--base-id", str(admin)])
        url = f"http://{address}:{port}/v1/models/{HPT}:predict"
        wait_until(lambda: proc.check() or http(url, HPT_V1) == 200, 60, "the Envoy floor")
        return Target("Envoy floor", url, self.bodies["hpt"],
                      envoy_counter(f"{address}:{admin}", "http.floor.", "downstream_rq_2xx"),
                      "Envoy floor's downstream_rq_2xx", [proc.pid])

    def start_kserve(self) -> Target:
        port = free_port("0.0.0.0")
        python = BENCH / ".venv-kserve/bin/python"
        cmd = [str(python), str(BENCH / "peers/kserve_model.py"), "--model_name", HPT,
               "--base_path", str(self.node_root / "data/models" / HPT), "--http_port", str(port),
               "--workers", str(self.args.peer_workers)]
        proc = self.spawn("kserve", cmd, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.check() or http(f"{url}/v1/models/{HPT}:predict", HPT_V1) == 200, 180, "kserve")
        self.results["memory"]["kserve_rss_mb"] = tree_rss_mb(proc.pid)
        return Target("KServe", f"{url}/v1/models/{HPT}:predict", self.bodies["hpt"],
                      prometheus_counter(f"{url}/metrics", KSERVE_METRIC), KSERVE_METRIC, [proc.pid])

    def start_mlserver(self) -> Target:
        port, grpc, metrics = free_port(self.args.address), free_port(self.args.address), free_port(self.args.address)
        home = self.out / "mlserver"
        shutil.rmtree(home, ignore_errors=True)
        (home / HPT).mkdir(parents=True)
        settings = {"host": self.args.address, "http_port": port, "grpc_port": grpc, "metrics_port": metrics,
                    "debug": False, "parallel_workers": self.args.peer_workers - 1 if self.args.peer_workers > 1 else 0,
                    "gzip_enabled": False}
        self.results["settings"]["mlserver"] = settings
        (home / "settings.json").write_text(json.dumps(settings))
        (home / HPT / "model-settings.json").write_text(json.dumps({
            "name": HPT, "implementation": "mlserver_model.TFSavedModel",
            "parameters": {"uri": str(self.node_root / "data/models" / HPT)}}))
        cmd = [str(BENCH / ".venv-mlserver/bin/mlserver"), "start", str(home)]
        proc = self.spawn("mlserver", cmd, env={"TF_CPP_MIN_LOG_LEVEL": "2",
                                                "PYTHONPATH": str(BENCH / "peers")}, cwd=home)
        url = f"http://{self.args.address}:{port}/v2/models/{HPT}/infer"
        wait_until(lambda: proc.check() or http(url, HPT_V2) == 200, 180, "mlserver")
        self.results["memory"]["mlserver_rss_mb"] = tree_rss_mb(proc.pid)
        return Target("MLServer", url, self.bodies["hpt_v2"],
                      prometheus_counter(f"http://{self.args.address}:{metrics}/metrics", MLSERVER_METRIC),
                      MLSERVER_METRIC, [proc.pid])

    # ------------------------------------------------------------------ scenarios

    def rounds(self, targets: list[Target], concurrency: int, run: Callable[[Target], dict], count: int,
               rotate: bool = True) -> dict[str, list[dict]]:
        """``count`` rounds; each runs every target once (the order rotates per round, so no target
        always goes first), each run confirmed by the target's server-side counter."""
        results: dict[str, list[dict]] = {t.name: [] for t in targets}
        for index in range(count):
            shift = index % len(targets) if rotate else 0
            for target in targets[shift:] + targets[:shift]:
                results[target.name].append({**self.measured(target, concurrency, lambda: run(target)),
                                             "load": os.getloadavg()[0]})
        return results

    def scenario_rest(self, targets: list[Target]) -> None:
        for target in targets:
            self.warm(target.url, target.body)
        for concurrency in self.args.concurrency:
            runs = self.rounds(targets, concurrency, lambda t: self.wrk(t.url, t.body, concurrency,
                                                                          self.args.duration), self.args.rounds)
            for name, cell in runs.items():
                row = {"target": name, "concurrency": concurrency, **summarize(cell)}
                self.results["rest"].append(row)
                log_row("REST", row)

    def scenario_grpc(self, targets: list[Target]) -> None:
        """h2load at every concurrency, then the Python stubs client at the highest one.

        The two clients are a cross-check of each other at the highest concurrency when the
        Python client is not the bottleneck itself (its CPU under 90% of a core).
        """
        for target in targets:
            self.h2load(target.url, 8, 1)  # warm: connections, the inline path's run-cost samples
        clients = [("h2load", c, self.h2load) for c in self.args.concurrency]
        clients.append(("grpc_load.py", max(self.args.concurrency), self.grpc))
        cells: dict[tuple[str, str], dict] = {}
        for client, concurrency, run in clients:
            runs = self.rounds(targets, concurrency, lambda t: run(t.url, concurrency, self.args.duration),
                               self.args.rounds)
            for name, cell in runs.items():
                row = {"target": name, "concurrency": concurrency, **summarize(cell), "client": client}
                self.results["grpc"].append(row)
                if concurrency == max(self.args.concurrency):
                    cells[client, name] = row
                log_row("gRPC", row)
        for target in targets:
            h2, py = cells.get(("h2load", target.name)), cells.get(("grpc_load.py", target.name))
            if h2 and py and py["client_cpu"] < 0.9:
                self.check(f"gRPC {target.name}: h2load vs grpc_load.py req/s", h2["rps"], py["rps"], tolerance=0.2)

    def scenario_protocols(self, rest: list[Target], grpc: list[Target]) -> None:
        """REST and gRPC in the same rounds at the highest concurrency (wrk and h2load taking turns):
        the gRPC-vs-REST targets of issue 15 from runs seconds apart, not scenarios minutes apart."""
        top = max(self.args.concurrency)
        named = [replace(t, name=f"REST {t.name}") for t in rest] + [replace(t, name=f"gRPC {t.name}") for t in grpc]

        def run(target: Target) -> dict:
            if target.name.startswith("gRPC"):
                return self.h2load(target.url, top, self.args.duration)
            return self.wrk(target.url, target.body, top, self.args.duration)
        for name, cell in self.rounds(named, top, run, self.args.rounds).items():
            row = {"target": name, "concurrency": top, **summarize(cell)}
            self.results["protocols"].append(row)
            log_row("REST+gRPC", row)

    def sequential(self, url: str, body: Path, count: int) -> dict:
        return sequential(url, body.read_bytes(), count)

    def wait_idle(self, pids: list[int], timeout: float = 120.0) -> None:
        """Until ``pids`` use under 10% of a CPU: an abandoned request must not run into the next test."""
        def cpu() -> float:
            total = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
                except (OSError, IndexError):
                    pass
            return total / os.sysconf("SC_CLK_TCK")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = cpu()
            time.sleep(0.5)
            if cpu() - before < 0.05:
                return

    def scenario_rest_unpinned(self, targets: list[Target]) -> None:
        """The second CPU layout: no pinning at all, the kernel schedules everything on every core.

        The servers (all their threads) are re-pinned to every CPU with ``taskset -a -p`` for this
        scenario and pinned back afterwards; wrk runs unpinned too. Envoy keeps the worker count it started with.
        Rounds alternate which side goes first.
        """
        every = f"0-{(os.cpu_count() or 1) - 1}"
        pids = [pid for target in targets for pid in target.pids]
        concurrency = max(self.args.concurrency)
        try:
            for pid in pids:
                subprocess.run(["taskset", "-a", "-p", "-c", every, str(pid)], check=True, capture_output=True)
            for target in targets:
                self.warm(target.url, target.body, every)
            runs = self.rounds(targets, concurrency, lambda t: self.wrk(t.url, t.body, concurrency, self.args.duration,
                                                                          cpus=every), self.args.unpinned_rounds)
        finally:
            for pid in pids:
                subprocess.run(["taskset", "-a", "-p", "-c", self.args.server_cpus, str(pid)], capture_output=True)
        envoy, direct = runs["appliance via Envoy"], runs["appliance direct"]
        ratios = [e["rps"] / d["rps"] for e, d in zip(envoy, direct)]
        for name, cell in runs.items():
            row = {"target": name, "concurrency": concurrency, "cpus": every, **summarize(cell)}
            self.results["rest_unpinned"].append(row)
            log_row("REST unpinned", row)
        self.results["rest_unpinned_ratios"] = ratios
        log(f"REST unpinned via Envoy / direct per round: {', '.join(f'{r:.0%}' for r in ratios)}")

    def scenario_resnet(self, envoy: Target, jpeg: Path) -> None:
        """Through Envoy vs in-process, alternating in rounds on the same batch and CPU set.

        The in-process runtime (``bench/inprocess.py --rounds``) is loaded once and stays idle
        while the node serves, and the other way round; each round runs both sides back to back,
        alternating which goes first, and the ratio reported is the median of the per-round ratios.
        """
        model_dir = self.node_root / "data/models/resnet/1"
        cmd = ["taskset", "-c", self.args.server_cpus, sys.executable, str(BENCH / "inprocess.py"),
               "--model-dir", str(model_dir), "--jpeg", str(jpeg), "--rounds"]
        runner = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  stderr=open(self.logs / "inprocess.log", "wb"), start_new_session=True)

        def inprocess(batch: int, count: int) -> dict:
            runner.stdin.write(f"{batch} {count}\n")
            runner.stdin.flush()
            line = runner.stdout.readline()
            if not line.startswith("{"):
                raise RuntimeError(f"inprocess.py failed; see {self.logs / 'inprocess.log'}")
            return json.loads(line)

        try:
            if not json.loads(runner.stdout.readline() or "{}").get("ready"):
                raise RuntimeError(f"inprocess.py did not start; see {self.logs / 'inprocess.log'}")
            pids = [*self.node_pids.values(), runner.pid]
            url = envoy.url.replace(f"/{HPT}:", "/resnet:")
            for batch in (1, 32):
                count = self.args.resnet_requests if batch == 1 else max(self.args.resnet_requests // 8, 2)
                body = self.bodies[f"resnet{batch}"]
                served_runs, inprocess_runs = [], []
                for index in range(self.args.resnet_rounds):
                    sides = ["envoy", "inprocess"] if index % 2 == 0 else ["inprocess", "envoy"]
                    for side in sides:
                        self.wait_idle(pids)
                        if side == "envoy":
                            self.sequential(url, body, 1)  # untimed, like in-process's first call
                            run = self.measured(envoy, 1, lambda: self.sequential(url, body, count))
                            served_runs.append({**run, "load": os.getloadavg()[0]})
                        else:
                            inprocess_runs.append(inprocess(batch, count))
                ratios = [s["rps"] * batch / i["images_per_s"] for s, i in zip(served_runs, inprocess_runs)]
                served = summarize(served_runs)
                cores = cpu_count(self.args.server_cpus)
                row = {"batch": batch, "envoy_images_per_s": served["rps"] * batch, "envoy_p50_ms": served["p50_ms"],
                       "envoy_p99_ms": served["p99_ms"], "envoy_errors": sum(r["errors"] for r in served_runs),
                       "envoy_requests": count, "inprocess_calls": count, "cores": cores,
                       "inprocess_images_per_s": statistics.median(i["images_per_s"] for i in inprocess_runs),
                       "round_ratios": ratios, "ratio": statistics.median(ratios),
                       "envoy_rounds": [round(r["rps"] * batch, 2) for r in served_runs],
                       "inprocess_rounds": [round(i["images_per_s"], 2) for i in inprocess_runs],
                       "loads": [round(r["load"], 1) for r in served_runs]}
                self.results["resnet"].append(row)
                log(f"resnet batch {batch}: through Envoy {row['envoy_images_per_s']:.1f} img/s, in-process "
                    f"{row['inprocess_images_per_s']:.1f} img/s; per round {', '.join(f'{r:.0%}' for r in ratios)} "
                    f"(median {row['ratio']:.0%})")
        finally:
            runner.stdin.close()
            try:
                runner.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()

    def scenario_batching(self, off: Target) -> None:
        params = self.out / "batching_parameters.txt"
        params.write_text(BATCHING_PARAMETERS)
        self.results["settings"]["batching_parameters"] = BATCHING_PARAMETERS
        url, _, proc, counter = self.start_model_server(
            "model_server_batching", [HPT, "resnet"], ["--enable_batching", f"--batching_parameters_file={params}"])
        on = Target("batching on", f"{url}/v1/models/{HPT}:predict", off.body, counter, off.counter_name, [proc.pid])
        cases = [(HPT, self.bodies["hpt"], self.args.duration, 10.0),
                 ("resnet", self.bodies["resnet1"], self.args.resnet_duration, 60.0)]
        pids = [*off.pids, proc.pid]
        for model, body, duration, timeout in cases:
            runs = {}
            for side, target in (("off", off), ("on", on)):
                model_url = target.url.replace(f"/{HPT}:", f"/{model}:")
                self.wait_idle(pids)
                self.wrk(model_url, body, 64 if model == HPT else 4, 2, timeout)
                self.wait_idle(pids)
                runs[side] = self.measured(target, 64, lambda: self.wrk(model_url, body, 64, duration, timeout))
            for side, run in runs.items():
                row = {"model": model, "batching": side, "concurrency": 64, **run}
                self.results["batching"].append(row)
                log(f"batching {side:3s} {model:30s} {run['rps']:8.1f} req/s  p50 {run['p50_ms']:8.2f} ms  "
                    f"p99 {run['p99_ms']:8.2f} ms  errors {run['errors']}")
        proc.stop()
        self.procs.remove(proc)

    def scenario_memory(self) -> None:
        memory = self.results["memory"]
        for name, models in (("hpt_only", [HPT]), ("resnet_only", ["resnet"])):
            proc = self.start_model_server(f"model_server_{name}", models)[2]
            memory[f"model_server_{name}_rss_mb"] = rss_mb(proc.pid)
            proc.stop()
            self.procs.remove(proc)
        memory["node_model_server_rss_after_run_mb"] = rss_mb(self.node_pids["model_server"])
        memory["node_envoy_rss_after_run_mb"] = rss_mb(self.node_pids["envoy"])
        log(f"memory: {json.dumps({k: round(v) for k, v in memory.items()})}")

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        from tests.jpeg import make_jpeg

        jpeg = self.out / "image.jpg"
        jpeg.write_bytes(make_jpeg(seed=7, size=(240, 320)))
        import base64

        b64 = base64.b64encode(jpeg.read_bytes()).decode("ascii")
        self.body("hpt", HPT_V1)
        self.body("hpt_v2", HPT_V2)
        for batch in (1, 32):
            self.body(f"resnet{batch}", json.dumps({"instances": [{"b64": b64}] * batch}).encode())
        started = time.monotonic()
        self.results["machine"] = machine()
        self.results["settings"].update(server_cpus=self.args.server_cpus, client_cpus=self.args.client_cpus,
                                        duration_s=self.args.duration, rounds=self.args.rounds,
                                        peer_workers=self.args.peer_workers, runtime_threads=self.args.threads)
        try:
            self.start_node()
            address = self.args.address
            envoy_admin = f"127.0.0.1:{self.ports['envoy.admin.port']}"  # admin stays on loopback
            via_envoy = Target("appliance via Envoy", f"http://{address}:{self.ports['http.port']}/v1/models/{HPT}:predict",
                               self.bodies["hpt"], envoy_counter(envoy_admin, "cluster.", "upstream_rq_2xx"),
                               "Envoy's upstream_rq_2xx", [self.node_pids["envoy"], self.node_pids["model_server"]])
            url, grpc_direct, proc, counter = self.start_model_server("model_server_direct", [HPT, "resnet"])
            direct = Target("appliance direct", f"{url}/v1/models/{HPT}:predict", self.bodies["hpt"], counter,
                            "the model server's request_count", [proc.pid])
            only = set(self.args.scenarios.split(","))
            if "rest" in only:
                targets = [via_envoy, direct, self.start_floor()]
                if not self.args.no_peers:
                    targets += [self.start_mlserver(), self.start_kserve()]
                self.scenario_rest(targets)
                self.scenario_rest_unpinned([via_envoy, direct])
                for proc in [p for p in self.procs if p.name in ("mlserver", "kserve", "envoy_floor")]:
                    proc.stop()
                    self.procs.remove(proc)
            grpc_targets = [replace(via_envoy, url=f"{address}:{self.ports['grpc.port']}"),
                            replace(direct, url=grpc_direct)]
            if "grpc" in only or "protocols" in only:
                self.body("grpc_hpt", grpc_request_bytes())
            if "grpc" in only:
                self.scenario_grpc(grpc_targets)
            if "protocols" in only:
                self.scenario_protocols([via_envoy, direct], grpc_targets)
            if "resnet" in only:
                self.scenario_resnet(via_envoy, jpeg)
            if "batching" in only:
                self.scenario_batching(direct)
            if "memory" in only:
                self.scenario_memory()
        finally:
            self.stop_all()
        self.results["wall_s"] = time.monotonic() - started
        return self.results


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of sorted ``values`` (nearest rank)."""
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    """A cell over its rounds: medians, with the spread of requests/s and the worst round's p99.

    p99 is reported as the median and the worst of the per-round p99s, never the p99 of one
    chosen round: a tail that shows up in one round of three is part of the result.
    """
    rps = [r["rps"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    cpu = [r["client_cpu"] for r in runs if r.get("client_cpu") == r.get("client_cpu") and "client_cpu" in r]
    return {"rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs), "p99_ms": statistics.median(p99),
            "p99_worst_ms": max(p99), "errors": sum(r["errors"] for r in runs),
            "client_cpu": statistics.median(cpu) if cpu else float("nan"),
            "server_us": statistics.median(r.get("server_us", float("nan")) for r in runs),
            "runq_ms_per_s": statistics.median(r.get("runq_ms_per_s", float("nan")) for r in runs),
            "all_rps": [round(x) for x in rps], "all_p99": [round(x, 1) for x in p99],
            "all_runq": [round(r.get("runq_ms_per_s", float("nan")), 1) for r in runs],
            "all_steal_ms": [round(r.get("steal_ms", float("nan"))) for r in runs],
            "served": [r["served"] for r in runs]}


def log_row(kind: str, row: dict) -> None:
    log(f"{kind} {row['target']:22s} c={row['concurrency']:<3d} {row.get('client', 'wrk'):12s} "
        f"{row['rps']:8.0f} req/s ({row['rps_min']:.0f}-{row['rps_max']:.0f})  p50 {row['p50_ms']:6.2f} ms  "
        f"p99 {row['p99_ms']:7.2f} ms (worst {row['p99_worst_ms']:.2f})  errors {row['errors']}  "
        f"server {row['server_us']:.0f} us/req  run-queue wait {row['runq_ms_per_s']:.0f} ms/s  "
        f"steal {row['all_steal_ms']} ms")


def parse_h2load(stdout: str) -> dict:
    """h2load's own summary: ``finished in 5.00s, ...`` and ``requests: N total, ... N done, N succeeded``."""
    import re

    finished = re.search(r"^finished in ([\d.]+)(ms|s),", stdout, re.M)
    requests = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", stdout, re.M)
    if not finished or not requests:
        raise RuntimeError(f"cannot read h2load's summary:\n{stdout}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {"seconds": seconds, "done": int(requests.group(3)), "succeeded": int(requests.group(4))}


def schedstat(pids: list[int]) -> tuple[int, int]:
    """CPU time and run-queue wait (ns), summed over every thread of ``pids`` (/proc/PID/task/*/schedstat)."""
    cpu = wait = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                fields = task.read_text().split()
            except OSError:  # a thread that ended meanwhile
                continue
            cpu, wait = cpu + int(fields[0]), wait + int(fields[1])
    return cpu, wait


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def prometheus_counter(url: str, metric: str, **labels: str) -> Callable[[], float]:
    """A reader of the sum of ``metric``'s samples on a Prometheus page whose labels include ``labels``."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]

    def read() -> float:
        total = 0.0
        for line in fetch_text(url).splitlines():
            key, _, value = line.rpartition(" ")
            if key.split("{", 1)[0] == metric and all(label in key for label in wanted):
                total += float(value)
        return total
    return read


def envoy_counter(admin: str, prefix: str, suffix: str) -> Callable[[], float]:
    """A reader of the sum of Envoy's counters named ``prefix...suffix`` (the object store's left out)."""
    def read() -> float:
        total = 0.0
        for line in fetch_text(f"http://{admin}/stats?filter={suffix}$").splitlines():
            name, _, value = line.partition(": ")
            if not (name.startswith(prefix) and name.endswith(suffix)):
                continue
            middle = name[len(prefix):-len(suffix)]
            if middle.count(".") <= 1 and "objectstore" not in middle:  # not cluster.X.external.*, internal.*
                total += float(value)
        return total
    return read


def cpu_list(cpus: str) -> list[int]:
    """The CPUs a taskset list names (``0``, ``0,1``, ``0-3``)."""
    result: list[int] = []
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        result += range(int(low), int(high or low) + 1)
    return result


def cpu_count(cpus: str) -> int:
    return len(cpu_list(cpus))


def steal_ms(cpus: list[int]) -> float:
    """Time the hypervisor ran something else while these (virtual) CPUs had work: /proc/stat's steal."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            total += int(fields[7])
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def grpc_request_bytes() -> bytes:
    """A gRPC frame (uncompressed, 4-byte length) of half_plus_two's PredictRequest, via TF Serving's stubs."""
    import struct

    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = HPT
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0, 5.0], dtype=np.float32)))
    data = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    versions = {}
    for name, cmd in (("envoy", [str(VENV_BIN / "envoy"), "--version"]), ("wrk", ["wrk", "-v"]),
                      ("h2load", ["h2load", "--version"])):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = (proc.stdout + proc.stderr).strip().splitlines()
        versions[name] = next((line for line in text if line.strip()), "")[:120]
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                                   * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
            "kernel": os.uname().release, "loadavg_at_start": [round(x, 2) for x in load], **versions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.91", help="loopback address the servers bind")
    parser.add_argument("--server-cpus", default="1", help="taskset CPU list of every server stack")
    parser.add_argument("--client-cpus", default="0", help="taskset CPU list of the load generators")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--resnet-duration", type=float, default=20.0, help="seconds per resnet batching run")
    parser.add_argument("--resnet-requests", type=int, default=40,
                        help="sequential resnet requests at batch 1 (batch 32: an eighth as many)")
    parser.add_argument("--unpinned-rounds", type=int, default=5,
                        help="alternating rounds of REST via Envoy vs direct with no CPU pinning")
    parser.add_argument("--resnet-rounds", type=int, default=5,
                        help="alternating rounds of resnet through Envoy vs in-process (median ratio reported)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per cell (the median is reported, and the worst p99)")
    parser.add_argument("--tolerance", type=float, default=0.03,
                        help="how far a load tool's request count may be from the server's own counter")
    parser.add_argument("--threads", type=int, default=0,
                        help="--rest_api_num_threads of the direct model servers (0: as the node: one per CPU)")
    parser.add_argument("--peer-workers", type=int, default=1, help="MLServer/KServe workers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a node setting for `appliance up` (A/B runs, e.g. envoy.concurrency=1)")
    parser.add_argument("--no-peers", action="store_true", help="skip MLServer and KServe")
    parser.add_argument("--scenarios", default="rest,grpc,protocols,resnet,batching,memory",
                        help="which to run (comma-separated; the node's cold start is always measured)")
    parser.add_argument("--work", type=Path, default=BENCH / ".work", help="node root and built models (kept)")
    parser.add_argument("--out", type=Path, default=None, help="results dir (default WORK/results-<time>)")
    args = parser.parse_args()
    if not args.threads:
        args.threads = os.cpu_count() or 1
    args.out = args.out or args.work / time.strftime("results-%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    bench = Bench(args)
    results = bench.run()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    from report import markdown

    text = markdown(results)
    (args.out / "results.md").write_text(text)
    print(text)
    log(f"done in {results['wall_s']:.0f}s; results in {args.out}")
    failed = [c for c in results["checks"] if not c["ok"]]
    for check in failed:
        log(f"CHECK FAILED: {check['what']}: {check['tool']} vs {check['server']} ({check['gap']:.1%} apart)")
    if failed:
        log(f"{len(failed)} of {len(results['checks'])} cross-checks FAILED: these figures are not confirmed")
        return 1
    log(f"all {len(results['checks'])} cross-checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
