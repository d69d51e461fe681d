"""A real S3 server on loopback for tests: the repo node's `appliance objectstore` (SeaweedFS).

One per test module (it takes a few seconds and ~100 MB): the module fixture starts it under a
temp root with free ports, waits until the bucket exists, and stops it by PID at the end.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from tests.conftest import Processes, free_port, wait_until

CLI = [sys.executable, "-m", "appliance.cli"]


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports that are all free right now."""
    for _ in range(200):
        base = random.randint(20000, 30000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports found")


@dataclass
class ObjectStore:
    root: Path
    port: int
    internal_base: int
    access_key: str
    secret_key: str
    bucket: str = "models"
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """aws-style credentials for a client process (never in a config file of the client)."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client_overrides(self) -> list[str]:
        """--set overrides of a serving node (or CLI) that uses this store."""
        out: list[str] = []
        for key, value in {"s3.type": "seaweedfs", "s3.endpoint": self.endpoint,
                           "model.base.path": f"s3://{self.bucket}"}.items():
            out += ["--set", f"{key}={value}"]
        return out

    def boto3(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def s3cmd(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The user guide's s3cmd, pointed at this store (no ~/.s3cfg involved)."""
        host = f"{self.host}:{self.port}"
        cmd = ["s3cmd", "-c", "/dev/null", "--no-ssl", f"--host={host}", f"--host-bucket={host}",
               f"--access_key={self.access_key}", f"--secret_key={self.secret_key}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def start_objectstore(root: Path, procs: Processes) -> ObjectStore:
    """`appliance objectstore` on a repo-node root; returns once the bucket exists.

    Alone (no supervisord, no Envoy in front of it), so clients use the store's own S3 port on
    127.0.0.1 (repo.internal.port.base + 7), the one the node's Envoy forwards repo.port to.
    """
    from appliance.objectstore import INTERNAL_PORTS

    port, base = free_port(), free_port_block(INTERNAL_PORTS)
    sets = {"node.role": "repo", "node.address": "127.0.0.1", "repo.port": port,
            "repo.internal.port.base": base}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    log = root / "objectstore.log"
    root.mkdir(parents=True, exist_ok=True)
    procs.start(CLI + ["--root", str(root), "objectstore", *args], log=log)
    wait_until(lambda: "object store ready" in log.read_text(errors="replace"), timeout=120,
               what=f"the object store (log {log})")
    creds = yaml.safe_load((root / "etc/appliance/objectstore.credentials").read_text())
    return ObjectStore(root, base + INTERNAL_PORTS - 1, base, creds["s3.access.key"],
                       creds["s3.secret.key"])


def objectstore_for_module(tmp_path_factory) -> Iterator[ObjectStore]:
    """Body of a module-scoped fixture: one real object store per test module, stopped by PID."""
    procs = Processes()
    try:
        yield start_objectstore(tmp_path_factory.mktemp("repo"), procs)
    finally:
        procs.stop_all()
