"""ResNet-50 on OpenVINO through Envoy vs TensorFlow in-process, one run (issue 19, must-show 3 and 4).

One node (``appliance up``: Envoy + model server, real processes on ``--address``) serves the
built-in ``resnet`` (ResNet-50, JPEG bytes in) three times over:

* ``resnet``: ``platform: tensorflow``, as the product serves it today;
* ``resnet_ov``: ``platform: openvino``, f32 kept (decode and resize in TensorFlow, the network on
  OpenVINO), ``openvino.performance_hint: latency``;
* ``resnet_auto``: ``platform: auto`` with bf16 allowed and a stated tolerance (probabilities
  within 0.02 absolute, top class agreeing wherever the reference's margin exceeds it; ``classes``
  left to that check), on a warmup set of 8 distinct JPEGs shipped with the version.

Against them, TensorFlow's own limit: ``bench/inprocess.py``, the SavedModel called in-process in
a loop (no HTTP, JSON or base64). For batch 1 and 32, each side runs ``--requests`` sequential
requests per round (batch 32: an eighth as many), rounds alternate the order of the sides, the
median round counts; Envoy's ``upstream_rq_2xx`` must confirm every request. Before the node:
cold start (process start to the first OK predict) of a model server serving ``resnet_ov`` with
an empty runtime cache and then with the cache the first run filled.

    flock /tmp/bench.lock .venv/bin/python bench/openvino_bench.py [--rounds 3] [--requests 24]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from runtimes import cpu_isa  # noqa: E402
from serving_bench import (APPLIANCE, VENV_BIN, Proc, envoy_counter, free_port, http, log, machine,  # noqa: E402
                           sequential, wait_until)

USER_GUIDE_PER_CORE = 5.6   # images/s per core: ResNet batch 32 on a 16-core CascadeLake, MKL TensorFlow
MODELS = ("resnet", "resnet_ov", "resnet_auto")
AUTO_SETTINGS = {"platform": "auto", "auto.precisions": "f32,bf16", "auto.tolerances": "probabilities=0.02/0",
                 "auto.ignore": "classes", "openvino.performance_hint": "latency"}
OV_SETTINGS = {"platform": "openvino", "openvino.performance_hint": "latency"}


class InProcess:
    """``bench/inprocess.py --rounds``: TensorFlow's runtime in its own process, measured on demand."""

    def __init__(self, model_dir: Path, jpeg: Path, log_dir: Path) -> None:
        cmd = [sys.executable, str(BENCH / "inprocess.py"), "--model-dir", str(model_dir), "--jpeg", str(jpeg),
               "--rounds"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=open(log_dir / "inprocess.log", "wb"), start_new_session=True)
        if not json.loads(self.proc.stdout.readline() or "{}").get("ready"):
            raise RuntimeError(f"inprocess.py did not start; see {log_dir / 'inprocess.log'}")

    def run(self, batch: int, count: int) -> dict:
        self.proc.stdin.write(f"{batch} {count}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def jpegs(count: int) -> list[bytes]:
    from tests.jpeg import make_jpeg

    return [make_jpeg(seed=seed, size=(240, 320)) for seed in range(count)]


def prepare_models(root: Path, images: list[bytes]) -> Path:
    """The built-in resnet (built once into the work dir) and its two copies; returns the store."""
    store = root / "data/models"
    if not (store / "resnet" / "1").is_dir():
        log("building the built-in models (once; kept in the work dir)")
        subprocess.run([*APPLIANCE, "--root", str(root), "builtin-models"], check=True, capture_output=True)
    for name in MODELS[1:]:
        if not (store / name).is_dir():
            shutil.copytree(store / "resnet", store / name)
    from tests import tfmodels

    tfmodels.write_warmup(store / "resnet_auto" / "1", [tfmodels.predict_log(
        "resnet_auto", {"image_bytes": __import__("numpy").array(images[:8], dtype=object)})])
    return store


def cold_start(store: Path, out: Path, address: str, body: bytes) -> list[dict]:
    """A model server serving resnet_ov, from process start to its first OK predict: with an empty
    runtime cache, then with the cache the first start filled."""
    cache = out / "cold-cache"
    shutil.rmtree(cache, ignore_errors=True)
    config = out / "cold.models.config"
    config.write_text(f'model_config_list {{ config {{ name: "resnet_ov" base_path: "{store / "resnet_ov"}" '
                      f'model_platform: "openvino" }} }}\n')
    rows = []
    for label in ("empty cache", "cache filled by the first start"):
        port = free_port(address)
        cmd = [str(VENV_BIN / "appliance-model-server"), f"--port={free_port(address)}", f"--rest_api_port={port}",
               f"--listen_address={address}", f"--model_config_file={config}", f"--runtime_cache_dir={cache}"]
        started = time.monotonic()
        proc = Proc(f"cold_{len(rows)}", cmd, f"0-{(os.cpu_count() or 1) - 1}", out / "logs")
        try:
            url = f"http://{address}:{port}/v1/models/resnet_ov:predict"
            seconds = wait_until(lambda: proc.check() or http(url, body, 120) == 200, 900, f"cold start ({label})")
        finally:
            proc.stop()
        loaded = re.search(r"Successfully loaded servable version \{name: resnet_ov version: 1\} in ([0-9.]+)s",
                           proc.log_path.read_text(errors="replace"))
        rows.append({"cache": label, "first_predict_s": round(seconds, 1),
                     "model_load_s": float(loaded.group(1)) if loaded else None,
                     "total_s": round(time.monotonic() - started, 1)})
        log(f"cold start, {label}: first predict after {seconds:.1f} s (the model's load: {rows[-1]['model_load_s']} s)")
    return rows


def start_node(root: Path, address: str, out: Path) -> tuple[dict, str]:
    ports = {key: free_port(address) for key in ("http.port", "grpc.port", "envoy.admin.port",
                                                 "serving.rest.port", "serving.grpc.port")}
    sets = {"node.address": address, "model.name": ",".join(MODELS), "logviewer.enabled": "false", **ports,
            "startup.timeout.seconds": 1800,
            "models.resnet.platform": "tensorflow",
            **{f"models.resnet_ov.{k}": v for k, v in OV_SETTINGS.items()},
            **{f"models.resnet_auto.{k}": v for k, v in AUTO_SETTINGS.items()}}
    cmd = [*APPLIANCE, "--root", str(root), "up"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    started = time.monotonic()
    with open(out / "logs" / "appliance_up.log", "wb") as up_log:
        if subprocess.run(cmd, stdout=up_log, stderr=subprocess.STDOUT, timeout=1800).returncode != 0:
            raise RuntimeError(f"appliance up failed; see {out / 'logs' / 'appliance_up.log'}")
    log(f"node up with {', '.join(MODELS)} in {time.monotonic() - started:.0f} s")
    return ports, f"http://{address}:{ports['http.port']}"


def runtimes_report(rest_port: int) -> dict:
    from appliance.membership import MODEL_SERVER_HOST   # the model server listens there, behind Envoy

    with urllib.request.urlopen(f"http://{MODEL_SERVER_HOST}:{rest_port}/appliance/v1/runtimes",
                                timeout=10) as response:
        return json.loads(response.read())["models"]


def measure(args: argparse.Namespace, envoy: str, admin: str, inprocess: InProcess, bodies: dict[int, bytes],
            results: dict) -> None:
    counter = envoy_counter(admin, "cluster.", "upstream_rq_2xx")
    for batch in (1, 32):
        count = args.requests if batch == 1 else max(args.requests // 8, 2)
        sides = [*MODELS, "tensorflow in-process"]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for index in range(args.rounds):
            order = sides if index % 2 == 0 else sides[::-1]
            for side in order:
                if side == "tensorflow in-process":
                    row = inprocess.run(batch, count)
                else:
                    url = f"{envoy}/v1/models/{side}:predict"
                    sequential(url, bodies[batch], 1)   # untimed, like in-process's first call
                    before = counter()
                    row = sequential(url, bodies[batch], count)
                    row["confirmed_by_envoy"] = counter() - before
                    if row["errors"] or row["confirmed_by_envoy"] != count:
                        results["checks_failed"].append(f"{side} batch {batch}: {row}")
                row["images_per_s"] = row["rps" if "rps" in row else "calls_per_s"] * batch
                row["load"] = round(os.getloadavg()[0], 1)
                runs[side].append(row)
        reference = [r["images_per_s"] for r in runs["tensorflow in-process"]]
        for side in sides:
            images = [r["images_per_s"] for r in runs[side]]
            ratios = [a / b for a, b in zip(images, reference)]
            cell = {"batch": batch, "side": side, "requests_per_round": count,
                    "images_per_s": statistics.median(images),
                    "images_per_s_per_core": statistics.median(images) / (os.cpu_count() or 1),
                    "vs_tf_inprocess": statistics.median(ratios), "round_ratios": [round(r, 2) for r in ratios],
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs[side]),
                    "p99_ms_median": statistics.median(r["p99_ms"] for r in runs[side]),
                    "p99_ms_worst": max(r["p99_ms"] for r in runs[side]),
                    "loads": [r["load"] for r in runs[side]]}
            results["cells"].append(cell)
            log(f"batch {batch:2d} {side:22s} {cell['images_per_s']:7.1f} img/s ({cell['images_per_s_per_core']:.1f}"
                f"/core)  x{cell['vs_tf_inprocess']:.2f} TF in-process  p99 {cell['p99_ms_median']:.0f} ms")


def markdown(results: dict) -> str:
    lines = [f"CPU: {results['machine']['cpu']}, {results['machine']['cores']} cores, ISA: "
             f"{', '.join(results['isa'])}; load average at start {results['machine']['loadavg_at_start']}", "",
             "| batch | side | images/s | per core (guide: 5.6) | vs TF in-process (per-round) | p50 ms | p99 ms (median / worst round) |",
             "|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        lines.append(f"| {c['batch']} | {c['side']} | {c['images_per_s']:.1f} | {c['images_per_s_per_core']:.1f} | "
                     f"{c['vs_tf_inprocess']:.2f}x ({', '.join(map(str, c['round_ratios']))}) | {c['p50_ms']:.0f} | "
                     f"{c['p99_ms_median']:.0f} / {c['p99_ms_worst']:.0f} |")
    auto = results["runtimes"].get("resnet_auto", {}).get("versions", {}).get("1", {})
    if auto:
        lines += ["", f"resnet_auto chose {auto['platform']} {auto['precision']} ({auto['how']}):"]
        for c in auto["candidates"]:
            speed = f"{c['seconds_per_pass'] * 1000:.0f} ms/pass" if c["seconds_per_pass"] else "-"
            lines.append(f"- {c['runtime']} {c['precision']}: {c['verdict']}, {speed}, max abs diff "
                         f"{c['max_abs_diff']}, max rel diff {c['max_rel_diff']} {c['reason']}")
    lines += ["", "Cold start of resnet_ov (OpenVINO, converted from the SavedModel):"]
    lines += [f"- {row['cache']}: first predict after {row['first_predict_s']} s (the model's load in the model "
              f"server: {row.get('model_load_s')} s)" for row in results["cold_start"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.17.20", help="loopback address the servers bind")
    parser.add_argument("--requests", type=int, default=24, help="sequential requests per round at batch 1 "
                        "(batch 32: an eighth as many)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/openvino-bench"), help="node root, models (kept)")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold start measurement")
    parser.add_argument("--cold-only", action="store_true", help="only the cold start measurement")
    args = parser.parse_args()
    out = args.work / time.strftime("results-%Y%m%d-%H%M%S")
    (out / "logs").mkdir(parents=True)
    root = args.work / "node"
    images = jpegs(32)
    jpeg = out / "image.jpg"
    jpeg.write_bytes(images[0])
    bodies = {batch: json.dumps({"instances": [{"b64": base64.b64encode(data).decode()} for data in images[:batch]]})
              .encode() for batch in (1, 32)}
    results: dict = {"machine": machine(), "isa": cpu_isa(), "cells": [], "checks_failed": [],
                     "settings": {"resnet_ov": OV_SETTINGS, "resnet_auto": AUTO_SETTINGS}}
    store = prepare_models(root, images)
    results["cold_start"] = [] if args.skip_cold else cold_start(store, out, args.address, bodies[1])
    if args.cold_only:
        print(json.dumps(results["cold_start"]))
        return 0
    inprocess = None
    try:
        ports, envoy = start_node(root, args.address, out)
        results["runtimes"] = runtimes_report(ports["serving.rest.port"])
        inprocess = InProcess(store / "resnet" / "1", jpeg, out / "logs")
        measure(args, envoy, f"127.0.0.1:{ports['envoy.admin.port']}", inprocess, bodies, results)
    finally:
        if inprocess is not None:
            inprocess.stop()
        subprocess.run([*APPLIANCE, "--root", str(root), "down"], capture_output=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "results.md").write_text(text)
    print(text)
    for failed in results["checks_failed"]:
        log(f"CHECK FAILED: {failed}")
    return 1 if results["checks_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
