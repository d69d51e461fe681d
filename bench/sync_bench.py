"""Sync throughput and memory: the agent's sync cycle vs a plain boto3 download of the same objects.

One run starts the repo node's object store (SeaweedFS via `appliance objectstore`) on loopback
under a temp root, pushes a generated model of --size-mb (default 1100 MB: a small SavedModel-like
tree plus big files under assets.extra/) with `appliance models push`, then alternates:

* baseline: `aws s3 cp --recursive`-equivalent -- s3transfer's TransferManager (what the aws CLI
  uses), 10 concurrent requests, 8 MiB ranges, no verification;
* agent: `appliance sync --once` into a fresh node root (list, check sizes and ETags against the
  push manifest, download, verify every byte against the manifest's block checksums, rename
  into place).

Both run as child processes timed wall-clock from spawn to exit (interpreter and boto3 start-up
included on both sides); peak RSS comes from ``wait4``. Prints a table and a JSON line.

    .venv/bin/python bench/sync_bench.py [--size-mb 1100] [--rounds 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "appliance.cli"]

BASELINE = r"""
import sys, os, boto3
from botocore.config import Config
from s3transfer.manager import TransferManager, TransferConfig
endpoint, bucket, prefix, dest = sys.argv[1:5]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, max_pool_connections=20))
keys = [(o["Key"], o["Size"]) for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
with TransferManager(client, TransferConfig(max_request_concurrency=10)) as manager:
    futures = []
    for key, _ in keys:
        path = os.path.join(dest, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        futures.append(manager.download(bucket, key, path))
    for f in futures:
        f.result()
print(sum(size for _, size in keys))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_block(count: int) -> int:
    for _ in range(200):
        base = random.randint(20000, 30000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, int, str]:
    """(seconds, peak RSS in MB, stdout) of a child process."""
    with log.open("w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, env=env, text=True)
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}); see {log}")
    return seconds, usage.ru_maxrss // 1024, stdout


def make_model(path: Path, size_mb: int) -> None:
    (path / "variables").mkdir(parents=True)
    (path / "assets.extra").mkdir()
    (path / "saved_model.pb").write_bytes(os.urandom(200_000))
    (path / "variables/variables.index").write_bytes(os.urandom(2_000))
    (path / "variables/variables.data-00000-of-00001").write_bytes(os.urandom(40 << 20))
    left, index = size_mb - 40, 0
    while left > 0:
        chunk_mb = min(256, left)
        with (path / f"assets.extra/blob{index}.bin").open("wb") as handle:
            for _ in range(chunk_mb):
                handle.write(os.urandom(1 << 20))
        left -= chunk_mb
        index += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--verify", choices=("etag", "size"), default="etag",
                        help="the agent's sync.verify (etag, the default: the push manifest's "
                        "checksums, else MD5 ETags; size: sizes only)")
    parser.add_argument("--keep", type=Path, help="work dir to use and keep (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="sync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repo_root = work / "repo"
    port, base = free_port(), free_block(7)
    sets = ["--set", "node.role=repo", "--set", "node.address=127.0.0.1",
            "--set", f"repo.port={port}", "--set", f"repo.internal.port.base={base}"]
    repo_root.mkdir(exist_ok=True)
    store_log = work / "objectstore.log"
    store = subprocess.Popen(CLI + ["--root", str(repo_root), "objectstore", *sets],
                             stdout=store_log.open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while "object store ready" not in store_log.read_text(errors="replace"):
            if store.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"object store did not start; see {store_log}")
            time.sleep(0.3)
        creds = dict(line.split(": ", 1) for line in
                     (repo_root / "etc/appliance/objectstore.credentials").read_text().splitlines()
                     if line.startswith("s3."))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": creds["s3.access.key"],
               "AWS_SECRET_ACCESS_KEY": creds["s3.secret.key"], "AWS_DEFAULT_REGION": "us-east-1"}
        endpoint = f"http://127.0.0.1:{port}"
        client_sets = ["--set", "s3.type=seaweedfs", "--set", f"s3.endpoint={endpoint}",
                       "--set", "model.base.path=s3://models", "--set", "model.name=bench",
                       "--set", f"sync.verify={args.verify}"]
        model = work / "src/1"
        if not model.exists():
            print(f"generating a {args.size_mb} MB model in {model} ...", flush=True)
            make_model(model, args.size_mb)
        print("pushing it with `appliance models push` ...", flush=True)
        subprocess.run(CLI + ["--root", str(work / "client"), "models", "push", str(model),
                              "--name", "bench", "--version", "1", *client_sets],
                       env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        files = sum(1 for p in model.rglob("*") if p.is_file())
        results: dict[str, list[tuple[float, int]]] = {"boto3": [], "agent": []}
        verifying = "?"

        def run_boto3() -> None:
            dest = work / "baseline"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            seconds, rss, _ = timed([sys.executable, "-c", BASELINE, endpoint, "models", "bench/1/",
                                     str(dest)], env, work / "baseline.log")
            results["boto3"].append((seconds, rss))
            shutil.rmtree(dest, ignore_errors=True)

        def run_agent() -> None:
            nonlocal verifying
            node = work / "node"
            shutil.rmtree(node, ignore_errors=True)
            seconds, rss, out = timed(CLI + ["--root", str(node), "sync", "--once", *client_sets],
                                      env, work / "agent.log")
            if "installed 1" not in out:
                raise SystemExit(f"the sync did not install the version: {out}")
            verifying = next((line.split("; verifying ", 1)[1] for line in out.splitlines()
                              if "; verifying " in line), "?")
            results["agent"].append((seconds, rss))
            shutil.rmtree(node, ignore_errors=True)

        for round_no in range(1, args.rounds + 1):
            # Alternate which side goes first, so neither always meets a warmer object store.
            for side in (run_boto3, run_agent) if round_no % 2 else (run_agent, run_boto3):
                side()
            print(f"round {round_no}: boto3 {results['boto3'][-1][0]:.2f}s, "
                  f"agent {results['agent'][-1][0]:.2f}s "
                  f"(agent/boto3 {results['boto3'][-1][0] / results['agent'][-1][0]:.0%}; "
                  f"load average {os.getloadavg()[0]:.1f}; agent verified {verifying})",
                  flush=True)
    finally:
        try:
            os.killpg(store.pid, 15)
        except ProcessLookupError:
            pass
        store.wait(60)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # The machine is shared: take each side's median round (rounds alternate, so both sides
    # see the same background load on average).
    best = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    peak = {k: max(r for _, r in v) for k, v in results.items()}
    rate = {k: total / 1e6 / best[k][0] for k in best}
    ratio = rate["agent"] / rate["boto3"]
    paired = sorted(b / a for (b, _), (a, _) in zip(results["boto3"], results["agent"]))
    print(f"\nmodel: {total / 1e6:.0f} MB in {files} files; median of {args.rounds} rounds, "
          "wall clock incl. process start-up")
    print(f"{'':<34}{'seconds':>9}{'MB/s':>9}{'peak RSS MB':>13}")
    print(f"{'plain boto3 (aws s3 cp -r equiv.)':<34}{best['boto3'][0]:>9.2f}{rate['boto3']:>9.0f}"
          f"{peak['boto3']:>13}")
    print(f"{'agent sync (verify + rename)':<34}{best['agent'][0]:>9.2f}{rate['agent']:>9.0f}"
          f"{peak['agent']:>13}")
    print(f"per-round agent/boto3: {', '.join(f'{r:.0%}' for r in paired)} "
          f"(median {statistics.median(paired):.0%})")
    print(f"agent throughput = {ratio:.0%} of plain boto3 (target >= 90%); "
          f"agent peak memory {peak['agent']} MB (target < 200 MB)")
    print(json.dumps({"bytes": total, "rounds": results, "ratio": round(ratio, 3),
                      "paired_ratios": [round(r, 3) for r in paired],
                      "agent_peak_rss_mb": peak["agent"]}))
    return 0 if ratio >= 0.9 and peak["agent"] < 200 else 1


if __name__ == "__main__":
    sys.exit(main())
