"""What a shadow costs the clients: REST p50/p99 and requests/s with a shadow off vs on.

One model server (``taskset -c 1``) serves ``classifier`` (tests/tfmodels.py: 4-class softmax,
``versions: specific: 1``) with version 2 on disk (answers 1e-7 off); wrk (``taskset -c 0``,
bench/post.lua) posts 20-row requests naming no version. Rounds alternate the shadow off and on
(``shadow: {version: 2, sample: P}`` in the model settings file, applied by the server's file
poll; each round waits until the server took it). Per round: wrk's requests, rate, p50 and p99;
the model server's own count of OK requests (its Prometheus page) as the cross-check; and, with
the shadow on, its report's copied / compared / dropped counts; and the model server's CPU time
(/proc/<pid>/stat) per OK request, the figure that stays readable when other work shares the
machine. Two loads: ``saturated`` (wrk's closed loop, no pause: the core never idles) and
``paced`` (``--delay-ms``: each connection pauses a random time of that mean between an answer
and its next request, bench/post.lua's WRK_DELAY_MS, so the server has idle time -- where a
shadow is meant to run). ``--keep-candidate`` keeps version 2 loaded on both sides, so a switch
loads and unloads nothing (without it, every switch on loads version 2, every switch off drops
it). Prints the medians and the on/off ratios per load, the pooled percentiles (every round's
latencies of one side together) and a 95 % bootstrap interval of the pooled ratios, drawn over
round pairs. Short rounds and many of them (the server looks at its settings file every 0.1 s) keep
the two sides in the same seconds of a VM whose speed drifts by 2x within minutes. A scratch tool
like the other bench scripts; not a test.

    flock /tmp/bench.lock .venv/bin/python bench/shadow_bench.py --paced-only --keep-candidate \
        --rounds 100 --duration 1 --settle 0.3 --sample 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from serving_bench import percentile  # noqa: E402
WORK = REPO / "bench/.work/shadow"
# One series per version, signature, API and entrypoint: summed.
COUNT = re.compile(r':tensorflow:serving:request_count\{([^}]*)\} (\d+)')


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def free_port() -> int:
    from tests.conftest import free_port as free

    return free()


def build(models: Path) -> None:
    from tests.tfmodels import classifier, save_version

    for version, model in ((1, classifier()), (2, classifier(perturb=1e-7))):
        if not (models / str(version) / "saved_model.pb").exists():
            save_version(models / str(version), model)


def settings(path: Path, sample: float | None, keep: bool = False) -> str:
    """The model settings file of one side; ``keep``: version 2 stays loaded on both sides (a
    rollout that sends it 0 %), so that only the copies differ, not a version load and unload."""
    entry: dict = {"shadow": None if sample is None else {"version": 2, "sample": sample}}
    if keep:
        entry["rollout"] = {"version": 2, "percent": 0}
    data = json.dumps({"models": {"classifier": entry}}).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def served(url: str) -> int:
    page = get(url + "/monitoring/prometheus/metrics").decode()
    return sum(int(count) for labels, count in COUNT.findall(page)
               if 'model_name="classifier"' in labels and 'status="OK"' in labels)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: Path, concurrency: int, duration: float, cpus: str, delay_ms: float = 0.0) -> dict:
    """One wrk run: its summary, and ``latency_us``: every latency it recorded, {microseconds: count}."""
    histogram = WORK / "latency.txt"
    histogram.unlink(missing_ok=True)
    proc = subprocess.run(["taskset", "-c", cpus, "wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s",
                           "--timeout=10s", "-s", str(REPO / "bench/post.lua"), url],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "WRK_BODY": str(body), "WRK_DELAY_MS": f"{delay_ms:g}",
                               "WRK_HISTOGRAM": str(histogram)})
    run = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    run["latency_us"] = {int(value): int(count) for value, count in
                         (line.split() for line in histogram.read_text().splitlines())}
    return run


def pooled_percentile(runs: list[dict], percent: float) -> float:
    """The ``percent`` percentile in ms of every request of ``runs`` together (their histograms
    summed): one distribution of ~10^5 requests per side instead of a median of noisy rounds."""
    counts: Counter[int] = Counter()
    for run in runs:
        counts.update(run["latency_us"])
    return percentile(sorted(counts.elements()), percent) / 1000


def pair_intervals(sides: dict[str, list[dict]], percents: tuple[float, ...], resamples: int = 1000,
                   seed: int = 0) -> dict[float, tuple[float, float]]:
    """95 % bootstrap intervals of the pooled percentiles' on/off ratios: the round pairs (an off
    round and the on round next to it) drawn again with replacement, each draw pooled per side
    and read at every one of ``percents``. Rounds, not requests, are the unit drawn: a slow second
    of the VM slows every request in it, so requests of one round are not independent."""
    import numpy as np

    def latencies(run: dict) -> np.ndarray:
        values = run["latency_us"]
        return np.repeat(np.fromiter(values, dtype=np.int64, count=len(values)),
                         np.fromiter(values.values(), dtype=np.int64, count=len(values)))
    arrays = {side: [latencies(run) for run in runs] for side, runs in sides.items()}
    pairs = len(arrays["off"])
    rng = np.random.default_rng(seed)
    ratios: dict[float, list[float]] = {p: [] for p in percents}
    for _ in range(resamples):
        draw = rng.integers(0, pairs, pairs)
        value: dict[str, dict[float, float]] = {}
        for side, rounds in arrays.items():
            pooled = np.concatenate([rounds[i] for i in draw])
            ranks = [min(len(pooled) - 1, int(len(pooled) * p / 100)) for p in percents]  # nearest rank
            ordered = np.partition(pooled, ranks)
            value[side] = {p: ordered[rank] for p, rank in zip(percents, ranks)}
        for p in percents:
            ratios[p].append(value["on"][p] / value["off"][p])
    return {p: tuple(float(x) for x in np.percentile(ratios[p], [2.5, 97.5])) for p in percents}


KEYS = ("rps", "p50_ms", "p99_ms", "cpu_us", "busy")


def one_round(url: str, predict: str, body: Path, settings_file: Path, args: argparse.Namespace, side: str,
              delay: float, pid: int, duration: float | None = None) -> dict:
    """One wrk run with the shadow ``side`` ("on"/"off"), cross-checked with the server's counters."""
    digest = settings(settings_file, args.sample if side == "on" else None, args.keep_candidate)
    while json.loads(get(url + "/appliance/v1/applied-config"))["model_settings_file"] != digest:
        time.sleep(0.02)     # the server looks at its settings file every 0.1 s
    while (side == "on" or args.keep_candidate) and '"state": "AVAILABLE"' not in get(url + "/v1/models/classifier/versions/2").decode():
        time.sleep(0.2)
    before, cpu_before = served(url), cpu_seconds(pid)
    shadow_before = json.loads(get(url + "/appliance/v1/shadow"))["models"].get("classifier", {})
    run = wrk(predict, body, args.concurrency, duration or args.duration, args.client_cpus, delay)
    time.sleep(args.settle)   # the copies still queued run now: their CPU is the shadow's, counted here
    run["server_ok"] = served(url) - before
    run["cpu_us"] = (cpu_seconds(pid) - cpu_before) * 1e6 / max(run["server_ok"], 1)
    run["busy"] = run["cpu_us"] * run["rps"] / 1e6     # the share of the server's core in use
    run["loadavg"] = os.getloadavg()[0]
    report = json.loads(get(url + "/appliance/v1/shadow"))["models"].get("classifier", {})
    if side == "on":
        counts, old = report["requests"], shadow_before.get("requests", {})
        same = shadow_before.get("started") == report["started"]
        run["shadow"] = {k: counts[k] - (old.get(k, 0) if same else 0) for k in ("seen", "sampled", "compared", "dropped")}
        # The server's own account of the copies' CPU (their runs and comparisons, on the
        # comparing thread), next to the bench's: the CPU per request on vs off.
        spent = report.get("cpu_seconds", 0.0) - (shadow_before.get("cpu_seconds", 0.0) if same else 0.0)
        run["shadow"]["cpu_us_per_copy"] = round(spent * 1e6 / max(run["shadow"]["compared"], 1), 1)
        run["verdict"] = report["verdict"]
    return run


def calibrate(url: str, predict: str, body: Path, settings_file: Path, args: argparse.Namespace, pid: int) -> float:
    """The mean pause (ms) that keeps the server's core ``args.utilization`` busy with the shadow
    off: a few short runs, each moving the pause by the busy share it measured (a connection's
    cycle is its answer's latency plus its pause; the rate is the connections over the cycle)."""
    delay = args.delay_ms
    for _ in range(4):
        run = one_round(url, predict, body, settings_file, args, "off", delay, pid, duration=3.0)
        busy = run["busy"]
        latency = run["p50_ms"]
        delay = max(0.05, (delay + latency) * busy / args.utilization - latency)
        print(f"calibrating: {busy:.0%} busy at {run['rps']:.0f} req/s -> mean pause {delay:.2f} ms", flush=True)
    return delay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of off + on")
    parser.add_argument("--sample", type=float, default=10.0, help="shadow.sample in percent")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--delay-ms", type=float, default=4.0,
                        help="the paced load's mean pause per connection between requests; 0: saturated only")
    parser.add_argument("--paced-only", action="store_true", help="skip the saturated load")
    parser.add_argument("--utilization", type=float, default=0.0,
                        help="pace the load to keep the server's core this busy with the shadow off (e.g. 0.5), "
                             "found by short runs first, instead of a fixed --delay-ms")
    parser.add_argument("--keep-candidate", action="store_true",
                        help="keep version 2 loaded with the shadow off too (a 0 %% rollout on both sides): the "
                             "steady state of a running shadow, without a version load or unload at each switch")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds after each round before the server's counters are read (queued copies run)")
    args = parser.parse_args()
    subprocess.run([str(REPO / "bench/load_tools.sh")], check=True)   # wrk, when missing

    WORK.mkdir(parents=True, exist_ok=True)
    build(WORK / "models/classifier")
    config = WORK / "models.config"
    config.write_text("model_config_list { config { name: 'classifier' base_path: '%s' model_platform: 'tensorflow' "
                      "model_version_policy { specific { versions: 1 } } } }\n" % (WORK / "models/classifier"))
    (WORK / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    settings_file = WORK / "model-settings.json"
    settings(settings_file, None, args.keep_candidate)
    rng = random.Random(0)
    rows = [rng.sample([0.1, 0.4, 0.7, 1.0], 4) for _ in range(20)]
    body = WORK / "body.json"
    body.write_text(json.dumps({"instances": rows}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(WORK / "model_server.log", "wb")
    server = subprocess.Popen(["taskset", "-c", args.server_cpus, str(REPO / ".venv/bin/appliance-model-server"),
                               "--listen_address=127.0.0.1", "--port=0", f"--rest_api_port={port}",
                               f"--model_config_file={config}", f"--model_settings_file={settings_file}",
                               f"--monitoring_config_file={WORK / 'monitoring.config'}",
                               "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                get(url + "/v1/models/classifier")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the model server did not start; see " + str(WORK / "model_server.log"))
                time.sleep(0.5)
        predict = url + "/v1/models/classifier:predict"
        wrk(predict, body, args.concurrency, 2, args.client_cpus)        # warm up
        if args.utilization > 0:
            args.delay_ms = calibrate(url, predict, body, settings_file, args, server.pid)
        loads = {**({} if args.paced_only else {"saturated": 0.0}),
                 **({"paced": args.delay_ms} if args.delay_ms > 0 else {})}
        results: dict[str, dict[str, list[dict]]] = {load: {"off": [], "on": []} for load in loads}
        for round_no in range(args.rounds):
            for load, delay in loads.items():
                for side in (("off", "on") if round_no % 2 == 0 else ("on", "off")):
                    results[load][side].append(one_round(url, predict, body, settings_file, args, side, delay,
                                                         server.pid))
                    run = results[load][side][-1]
                    print(f"round {round_no + 1} {load:9} {side:3}: {run['rps']:8.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                          f"p99 {run['p99_ms']:6.2f} ms  wrk {run['requests']} / server {run['server_ok']} OK  "
                          f"{run['cpu_us']:6.1f} us CPU/req  busy {run['busy']:4.0%}  errors {run['errors']}  load {run['loadavg']:.1f}  "
                          f"{run.get('shadow', '')}", flush=True)
        print(f"\nload average: {os.getloadavg()}")
        for load, sides in results.items():
            print(f"\n{load} ({'no pause' if not loads[load] else f'{loads[load]:g} ms mean pause'}, "
                  f"c={args.concurrency}):")
            med = {side: {k: statistics.median(r[k] for r in runs) for k in KEYS} for side, runs in sides.items()}
            for key in KEYS:
                ratios = [on[key] / off[key] for off, on in zip(sides["off"], sides["on"])]
                print(f"{key:7}: off {med['off'][key]:8.2f}  on {med['on'][key]:8.2f}  on/off of medians "
                      f"{med['on'][key] / med['off'][key]:.3f}  median per-round ratio {statistics.median(ratios):.3f}"
                      f"  (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
            pooled = {side: {p: pooled_percentile(runs, p) for p in (50, 99, 99.9)} for side, runs in sides.items()}
            print("pooled : " + "  ".join(
                f"p{p:g} off {pooled['off'][p]:.3f} on {pooled['on'][p]:.3f} ms (on/off {pooled['on'][p] / pooled['off'][p]:.3f})"
                for p in (50, 99, 99.9)) + f"  over {sum(r['requests'] for r in sides['off'])} / "
                f"{sum(r['requests'] for r in sides['on'])} requests")
            if len(sides["off"]) >= 5:
                intervals = pair_intervals(sides, (50, 99))
                print("95 % interval of the pooled on/off ratio (bootstrap over round pairs): " + "  ".join(
                    "p{:g} {:.3f}-{:.3f}".format(p, *low_high) for p, low_high in intervals.items()))
        (WORK / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        os.killpg(server.pid, 15)
        server.wait(15)


if __name__ == "__main__":
    main()
