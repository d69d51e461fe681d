"""What a shadow costs the clients: REST p50/p99 and requests/s with a shadow off vs on.

One model server (``taskset -c 1``) serves ``classifier`` (tests/tfmodels.py: 4-class softmax,
``versions: specific: 1``) with version 2 on disk (answers 1e-7 off); wrk (``taskset -c 0``,
bench/post.lua) posts 20-row requests naming no version. Rounds alternate the shadow off and on
(``shadow: {version: 2, sample: P}`` in the model settings file, applied by the server's file
poll; each round waits until the server took it). Per round: wrk's requests, rate, p50 and p99;
the model server's own count of OK requests (its Prometheus page) as the cross-check; and, with
the shadow on, its report's copied / compared / dropped counts. Prints the medians and the on/off
ratios. A scratch tool like the other bench scripts; not a test.

    flock /tmp/bench.lock .venv/bin/python bench/shadow_bench.py --rounds 4 --sample 10
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
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


def settings(path: Path, sample: float | None) -> str:
    shadow = None if sample is None else {"version": 2, "sample": sample}
    data = json.dumps({"models": {"classifier": {"shadow": shadow}}}).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def served(url: str) -> int:
    page = get(url + "/monitoring/prometheus/metrics").decode()
    return sum(int(count) for labels, count in COUNT.findall(page)
               if 'model_name="classifier"' in labels and 'status="OK"' in labels)


def wrk(url: str, body: Path, concurrency: int, duration: float, cpus: str) -> dict:
    proc = subprocess.run(["taskset", "-c", cpus, "wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s",
                           "--timeout=10s", "-s", str(REPO / "bench/post.lua"), url],
                          capture_output=True, text=True, env={**os.environ, "WRK_BODY": str(body)}, check=True)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of off + on")
    parser.add_argument("--sample", type=float, default=10.0, help="shadow.sample in percent")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    build(WORK / "models/classifier")
    config = WORK / "models.config"
    config.write_text("model_config_list { config { name: 'classifier' base_path: '%s' model_platform: 'tensorflow' "
                      "model_version_policy { specific { versions: 1 } } } }\n" % (WORK / "models/classifier"))
    (WORK / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    settings_file = WORK / "model-settings.json"
    settings(settings_file, None)
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
        results: dict[str, list[dict]] = {"off": [], "on": []}
        for round_no in range(args.rounds):
            for side in (("off", "on") if round_no % 2 == 0 else ("on", "off")):
                digest = settings(settings_file, args.sample if side == "on" else None)
                while json.loads(get(url + "/appliance/v1/applied-config"))["model_settings_file"] != digest:
                    time.sleep(0.2)
                while side == "on" and '"state": "AVAILABLE"' not in get(url + "/v1/models/classifier/versions/2").decode():
                    time.sleep(0.2)
                before = served(url)
                shadow_before = json.loads(get(url + "/appliance/v1/shadow"))["models"].get("classifier", {})
                run = wrk(predict, body, args.concurrency, args.duration, args.client_cpus)
                time.sleep(0.5)
                run["server_ok"] = served(url) - before
                report = json.loads(get(url + "/appliance/v1/shadow"))["models"].get("classifier", {})
                if side == "on":
                    counts, old = report["requests"], shadow_before.get("requests", {})
                    run["shadow"] = {k: counts[k] - (old.get(k, 0) if shadow_before.get("started") == report["started"]
                                                     else 0) for k in ("seen", "sampled", "compared", "dropped")}
                    run["verdict"] = report["verdict"]
                results[side].append(run)
                print(f"round {round_no + 1} {side:3}: {run['rps']:8.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                      f"p99 {run['p99_ms']:6.2f} ms  wrk {run['requests']} / server {run['server_ok']} OK  "
                      f"errors {run['errors']}  {run.get('shadow', '')}", flush=True)
        print(f"\nload average: {os.getloadavg()}")
        med = {side: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
               for side, runs in results.items()}
        for key in ("rps", "p50_ms", "p99_ms"):
            ratios = [on[key] / off[key] for off, on in zip(results["off"], results["on"])]
            print(f"{key:7}: off {med['off'][key]:8.2f}  on {med['on'][key]:8.2f}  on/off of medians "
                  f"{med['on'][key] / med['off'][key]:.3f}  median per-round ratio {statistics.median(ratios):.3f}"
                  f"  (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
        (WORK / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        os.killpg(server.pid, 15)
        server.wait(15)


if __name__ == "__main__":
    main()
