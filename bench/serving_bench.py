"""Serving benchmarks: the appliance (through Envoy and direct) vs MLServer and KServe, one run.

Every scenario of bench/README.md is measured side by side in one run, because the machine is
noisy and only ratios taken minutes apart mean anything. What runs (all on loopback, on free
ports of ``--address``; every process is started here and stopped here by PID):

1. REST ``saved_model_half_plus_two_mkl``: through Envoy, direct to the model server, MLServer
   (V2 protocol) and KServe (V1 protocol) serving the same SavedModel; wrk, concurrency 1/8/64.
2. gRPC: the same model through Envoy and direct (``bench/grpc_load.py``, TF Serving's stubs).
1b. The same, Envoy vs direct at the highest concurrency, with no CPU pinning at all.
3. ``resnet`` with base64 JPEGs at batch 1 and 32 through Envoy vs ``bench/inprocess.py``,
   alternating in rounds.
4. Server-side batching on vs off at concurrency 64 for both models (direct model servers).
5. Cold start (``appliance up`` to the first successful predict) and resident memory.

CPU split (the machine has 2 cores): the servers (Envoy + model server, or a peer) run under
``taskset -c --server-cpus`` and the load generators under ``taskset -c --client-cpus``; the same
split is used for every compared setup. Results: a JSON file and Markdown tables in ``--out``.

    .venv/bin/python bench/serving_bench.py [--rounds 2] [--duration 5] [--quick]
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
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
APPLIANCE = [str(VENV_BIN / "appliance")]
HPT = "saved_model_half_plus_two_mkl"
HPT_V1 = b'{"instances": [1.0, 2.0, 5.0]}'
HPT_V2 = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 5.0]}]}'
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
max_enqueued_batches { value: 1000 }
"""


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
        self.results: dict[str, Any] = {"rest": [], "rest_unpinned": [], "grpc": [], "resnet": [], "batching": [],
                                        "memory": {}, "settings": {}}
        self.bodies: dict[str, Path] = {}
        self.node_root = args.work / "node"
        self.node_up = False

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
        return json.loads(lines[-1])

    def h2load(self, target: str, concurrency: int, duration: float) -> dict:
        """gRPC with nghttp2's h2load: one HTTP/2 connection, ``concurrency`` streams in flight.

        The body is a length-prefixed ``PredictRequest`` serialized with TF Serving's own stubs
        (``grpc_request_bytes``); latencies come from h2load's per-request log. h2load sees HTTP
        status codes, not ``grpc-status`` trailers, so the Python client run next to it checks that
        the answers are OK.
        """
        log_file = self.out / "h2load.log"
        cmd = ["taskset", "-c", self.args.client_cpus, "h2load", f"-D{duration:g}", "--warm-up-time=1", "-c1",
               f"-m{concurrency}", "-t1", "-d", str(self.bodies["grpc_hpt"]), "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"--log-file={log_file}",
               f"http://{target}/tensorflow.serving.PredictionService/Predict"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line.count("\t") == 2]
        latencies = sorted(int(row[2]) / 1000 for row in rows)
        ok = sum(1 for row in rows if row[1] == "200")
        done = len(latencies)
        return {"requests": done, "rps": done / duration, "p50_ms": latencies[done // 2] if done else float("nan"),
                "p99_ms": latencies[min(done - 1, int(done * 0.99))] if done else float("nan"),
                "errors": done - ok, "client_cpu": float("nan"), "client": "h2load"}

    def grpc(self, target: str, concurrency: int, duration: float) -> dict:
        cmd = ["taskset", "-c", self.args.client_cpus, sys.executable, str(BENCH / "grpc_load.py"),
               "--target", target, "--model", HPT, "--input", "x=float32:1.0,2.0,5.0",
               "--concurrency", str(concurrency), "--duration", f"{duration:g}", "--warmup", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"grpc_load failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return {**json.loads(lines[-1]), "client": "grpc_load.py"}

    def warm(self, url: str, body: Path, cpus: str | None = None) -> None:
        """A short unmeasured run: connections, caches and the runtime's first calls."""
        self.wrk(url, body, 8, 1, cpus=cpus)

    # ------------------------------------------------------------------ stacks

    def start_node(self) -> dict:
        """``appliance up`` of a node with both built-in models; cold start measured here."""
        address = self.args.address
        models = self.node_root / "data/models"
        if not (models / "resnet").is_dir() or not (models / HPT).is_dir():
            log("building the built-in models (once; kept in the work dir)")
            subprocess.run(APPLIANCE + ["--root", str(self.node_root), "builtin-models"], check=True,
                           capture_output=True)
        ports = {key: free_port(address) for key in ("http.port", "grpc.port", "envoy.admin.port",
                                                     "serving.rest.port", "serving.grpc.port")}
        # Envoy's workers = the CPUs it is pinned to: two workers on one core measured 42-106%
        # (median 70%) of one worker's requests/s (bench/README.md, bench/envoy_ab.py).
        sets = {"node.address": address, "envoy.concurrency": cpu_count(self.args.server_cpus),
                "model.name": f"{HPT},resnet", "logviewer.enabled": "false", **ports}
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
        cold = {"first_predict_s": first, "first_resnet_predict_s": resnet_first, "appliance_up_returned_s": up_done,
                "model_server_rss_mb": rss_mb(self.node_pids["model_server"]),
                "envoy_rss_mb": rss_mb(self.node_pids["envoy"])}
        self.results["cold_start"] = cold
        log(f"node up: first predict after {first:.1f}s, `appliance up` returned after {up_done:.1f}s")
        return cold

    def start_model_server(self, name: str, models: list[str], extra: list[str] | None = None) -> tuple[str, str, Proc]:
        address = self.args.address
        rest, grpc = free_port(address), free_port(address)
        config = self.out / f"{name}.models.config"
        config.write_text("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{self.node_root / "data/models" / m}" model_platform: "tensorflow" }}\n'
            for m in models) + "}\n")
        cmd = [str(VENV_BIN / "appliance-model-server"), f"--port={grpc}", f"--rest_api_port={rest}",
               f"--listen_address={address}", f"--model_config_file={config}",
               f"--rest_api_num_threads={self.args.threads}", *(extra or [])]
        proc = self.spawn(name, cmd)
        url = f"http://{address}:{rest}"
        wait_until(lambda: proc.check() or http(f"{url}/v1/models/{models[0]}") == 200, 300, name)
        return url, f"{address}:{grpc}", proc

    def start_kserve(self) -> str:
        port = free_port("0.0.0.0")
        python = BENCH / ".venv-kserve/bin/python"
        cmd = [str(python), str(BENCH / "peers/kserve_model.py"), "--model_name", HPT,
               "--base_path", str(self.node_root / "data/models" / HPT), "--http_port", str(port),
               "--workers", str(self.args.peer_workers)]
        proc = self.spawn("kserve", cmd, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.check() or http(f"{url}/v1/models/{HPT}:predict", HPT_V1) == 200, 180, "kserve")
        self.results["memory"]["kserve_rss_mb"] = tree_rss_mb(proc.pid)
        return f"{url}/v1/models/{HPT}:predict"

    def start_mlserver(self) -> str:
        port, grpc, metrics = free_port(self.args.address), free_port(self.args.address), free_port(self.args.address)
        home = self.out / "mlserver"
        shutil.rmtree(home, ignore_errors=True)
        (home / HPT).mkdir(parents=True)
        settings = {"host": self.args.address, "http_port": port, "grpc_port": grpc, "metrics_port": metrics,
                    "debug": False, "parallel_workers": self.args.peer_workers - 1 if self.args.peer_workers > 1 else 0,
                    "metrics_endpoint": None, "gzip_enabled": False}
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
        return url

    # ------------------------------------------------------------------ scenarios

    def best_of(self, runs: list[dict]) -> dict:
        """The median round by requests/s; of an even count the best one (noise only ever slows a round down)."""
        runs = sorted(runs, key=lambda r: r["rps"])
        return runs[len(runs) // 2] if len(runs) % 2 else runs[-1]

    def scenario_rest(self, targets: dict[str, tuple[str, Path]]) -> None:
        for url, body in targets.values():
            self.warm(url, body)
        for concurrency in self.args.concurrency:
            rounds: dict[str, list[dict]] = {name: [] for name in targets}
            for _ in range(self.args.rounds):
                for name, (url, body) in targets.items():  # interleaved: each round runs every target
                    rounds[name].append(self.wrk(url, body, concurrency, self.args.duration))
            for name, runs in rounds.items():
                row = {"target": name, "concurrency": concurrency, **self.best_of(runs),
                       "all_rps": [round(r["rps"]) for r in runs]}
                self.results["rest"].append(row)
                log(f"REST {name:22s} c={concurrency:<3d} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                    f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}")

    def scenario_grpc(self, targets: dict[str, str]) -> None:
        """h2load at every concurrency, then the Python stubs client at the highest one."""
        clients = [("h2load", c, self.h2load) for c in self.args.concurrency]
        clients.append(("grpc_load.py", max(self.args.concurrency), self.grpc))
        for client, concurrency, run in clients:
            rounds: dict[str, list[dict]] = {name: [] for name in targets}
            for _ in range(self.args.rounds):
                for name, target in targets.items():
                    rounds[name].append(run(target, concurrency, self.args.duration))
            for name, runs in rounds.items():
                row = {"target": name, "concurrency": concurrency, **self.best_of(runs),
                       "all_rps": [round(r["rps"]) for r in runs], "client": client}
                self.results["grpc"].append(row)
                log(f"gRPC {name:22s} c={concurrency:<3d} {client:12s} {row['rps']:8.0f} req/s  p50 "
                    f"{row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  client CPU "
                    f"{row['client_cpu']:.2f}")

    def sequential(self, url: str, body: Path, count: int) -> dict:
        """``count`` requests one after another on one keep-alive connection (a fixed count, not a
        time box: a time-boxed client leaves a multi-second request running in the server when it
        stops, and that request would steal CPU from the next measurement)."""
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        data = body.read_bytes()
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
        return {"requests": count, "rps": count / elapsed, "p50_ms": latencies[count // 2],
                "p99_ms": latencies[min(count - 1, int(count * 0.99))], "errors": errors, "seconds": elapsed}

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

    def scenario_rest_unpinned(self, targets: dict[str, tuple[str, Path]]) -> None:
        """The second CPU layout: no pinning at all, the kernel schedules everything on every core.

        The node's Envoy and model server (all their threads) are re-pinned to every CPU with
        ``taskset -a -p`` for this scenario and pinned back afterwards; wrk runs unpinned too.
        Envoy keeps the worker count it was started with (measured: 1 vs 2 workers make no
        clear difference unpinned; bench/README.md). Rounds alternate which side goes first.
        """
        every = f"0-{(os.cpu_count() or 1) - 1}"
        pids = [self.node_pids["envoy"], self.node_pids["model_server"]]
        concurrency = max(self.args.concurrency)
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        try:
            for pid in pids:
                subprocess.run(["taskset", "-a", "-p", "-c", every, str(pid)], check=True, capture_output=True)
            for url, body in targets.values():
                self.warm(url, body, every)
            for index in range(self.args.unpinned_rounds):
                order = list(targets) if index % 2 == 0 else list(reversed(targets))
                for name in order:
                    url, body = targets[name]
                    rounds[name].append({**self.wrk(url, body, concurrency, self.args.duration, cpus=every),
                                         "load": os.getloadavg()[0]})
        finally:
            for pid in pids:
                subprocess.run(["taskset", "-a", "-p", "-c", self.args.server_cpus, str(pid)], capture_output=True)
        envoy, direct = rounds["appliance via Envoy"], rounds["appliance direct"]
        ratios = [e["rps"] / d["rps"] for e, d in zip(envoy, direct)]
        for name, runs in rounds.items():
            row = {"target": name, "concurrency": concurrency, "cpus": every, **median_run(runs),
                   "all_rps": [round(r["rps"]) for r in runs], "loads": [round(r["load"], 1) for r in runs]}
            self.results["rest_unpinned"].append(row)
            log(f"REST unpinned {name:22s} c={concurrency:<3d} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  rounds {row['all_rps']}")
        self.results["rest_unpinned_ratios"] = ratios
        log(f"REST unpinned via Envoy / direct per round: {', '.join(f'{r:.0%}' for r in ratios)}")

    def scenario_resnet(self, envoy: str, jpeg: Path) -> None:
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
            url = f"{envoy}/v1/models/resnet:predict"
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
                            served_runs.append({**self.sequential(url, body, count), "load": os.getloadavg()[0]})
                        else:
                            inprocess_runs.append(inprocess(batch, count))
                ratios = [s["rps"] * batch / i["images_per_s"] for s, i in zip(served_runs, inprocess_runs)]
                served = median_run(served_runs)
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

    def scenario_batching(self, off_url: str) -> None:
        params = self.out / "batching_parameters.txt"
        params.write_text(BATCHING_PARAMETERS)
        self.results["settings"]["batching_parameters"] = BATCHING_PARAMETERS
        on_url, _, proc = self.start_model_server(
            "model_server_batching", [HPT, "resnet"],
            ["--enable_batching", f"--batching_parameters_file={params}"])
        cases = [(HPT, self.bodies["hpt"], self.args.duration, 10.0),
                 ("resnet", self.bodies["resnet1"], self.args.resnet_duration, 60.0)]
        pids = [self.node_pids["model_server"], proc.pid]
        for model, body, duration, timeout in cases:
            path = f"/v1/models/{model}:predict"
            runs = {}
            for side, url in (("off", off_url), ("on", on_url)):
                self.wait_idle(pids)
                self.wrk(url + path, body, 64 if model == HPT else 4, 2, timeout)
                self.wait_idle(pids)
                runs[side] = self.wrk(url + path, body, 64, duration, timeout)
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
            _, _, proc = self.start_model_server(f"model_server_{name}", models)
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
            envoy = f"http://{address}:{self.ports['http.port']}"
            direct = f"http://{address}:{self.ports['serving.rest.port']}"
            targets = {"appliance via Envoy": (f"{envoy}/v1/models/{HPT}:predict", self.bodies["hpt"]),
                       "appliance direct": (f"{direct}/v1/models/{HPT}:predict", self.bodies["hpt"])}
            if not self.args.no_peers:
                targets["MLServer"] = (self.start_mlserver(), self.bodies["hpt_v2"])
                targets["KServe"] = (self.start_kserve(), self.bodies["hpt"])
            self.scenario_rest(targets)
            self.scenario_rest_unpinned({name: targets[name] for name in ("appliance via Envoy", "appliance direct")})
            for proc in [p for p in self.procs if p.name in ("mlserver", "kserve")]:
                proc.stop()
                self.procs.remove(proc)
            self.body("grpc_hpt", grpc_request_bytes())
            self.scenario_grpc({"appliance via Envoy": f"{address}:{self.ports['grpc.port']}",
                                "appliance direct": f"{address}:{self.ports['serving.grpc.port']}"})
            self.scenario_resnet(envoy, jpeg)
            self.scenario_batching(direct)
            self.scenario_memory()
        finally:
            self.stop_all()
        self.results["wall_s"] = time.monotonic() - started
        return self.results


def median_run(runs: list[dict]) -> dict:
    """The median run by requests/s (of an even count, the upper middle one)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def cpu_count(cpus: str) -> int:
    """How many CPUs a taskset list names (``0``, ``0,1``, ``0-3``)."""
    count = 0
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


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
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell (best is kept)")
    parser.add_argument("--threads", type=int, default=0,
                        help="--rest_api_num_threads of the direct model servers (0: as the node: one per CPU)")
    parser.add_argument("--peer-workers", type=int, default=1, help="MLServer/KServe workers")
    parser.add_argument("--no-peers", action="store_true", help="skip MLServer and KServe")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
