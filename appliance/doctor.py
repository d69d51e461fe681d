"""``appliance doctor``: check a node and say, for each problem, exactly what to fix.

Each check returns :class:`Finding` s: an ``ok`` line (with what was found: versions, owners)
or a problem with the command or edit that fixes it. Checks never change the node; the one
write is the model store probe (a temp file created and removed), because only a real write
tells a read-only mount from a writable one, whoever runs the doctor.

Checks: config valid (every error with its key path) and private when it holds secrets;
binaries present and their versions; every port free or held by this node's own processes;
disk space; the model store writable; the model repository reachable (the local store and a
version of each model for ``s3.type: none``; TCP + HTTP reachability of ``s3.endpoint``
otherwise; on a repo node the object store's data dir instead); no version directory without a
model, none quarantined by the model server or refused by the agent; supervisord's processes
running when the node is up, and none crashed lately; the certificates (edge, inter-node); the
clock, the systemd unit
(:mod:`appliance.doctor_node`). A check the caller may not run (not root, not the service user)
is one finding saying so, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from modelserver.core.platforms import version_dirs

from . import portowners, subp
from .config import SCHEMA, Config, NodePaths, effective_values, load_config, local_store
from .errors import ApplianceError, ConfigError, SupervisorError

log = logging.getLogger(__name__)

#: Below either limit a filesystem the node writes to is reported (models and logs fill disks).
MIN_FREE_BYTES = 1 << 30
MIN_FREE_FRACTION = 0.05
#: Binaries the node cannot run without, and how each reports its version.
REQUIRED = {"supervisord": ["--version"], "envoy": ["--version"], "appliance-model-server": None}
#: Real servers the install script can add (``--with-tensorflow-model-server``, ``--with-minio``).
OPTIONAL = {"tensorflow_model_server": ["--version"], "minio": ["--version"]}
#: Port keys that only matter for one role, or only when their feature is on.
ROLE_PORTS = {"serving.rest.port": "serving", "serving.grpc.port": "serving", "repo.port": "repo",
              "cluster.port": "serving"}
FEATURE_PORTS = {"logviewer.port": "logviewer.enabled"}
#: Ports bound to 127.0.0.1 whatever node.address says (the model server is reached through Envoy).
LOOPBACK_PORTS = ("envoy.admin.port", "serving.rest.port", "serving.grpc.port")
REINSTALL = "re-run scripts/install-node.sh (or `pip install` the appliance into its venv)"


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``ok`` with what was seen, or a problem with its ``fix``."""

    check: str
    ok: bool
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"check": self.check, "ok": self.ok, "message": self.message, "fix": self.fix}


def _ok(check: str, message: str) -> Finding:
    return Finding(check, True, message)


def _problem(check: str, message: str, fix: str) -> Finding:
    return Finding(check, False, message, fix)


# ----------------------------------------------------------------------------- config


def check_config(paths: NodePaths, config_path: Path | None,
                 overrides: list[str]) -> tuple[Config | None, list[Finding]]:
    try:
        path = config_path or (paths.config_file if paths.config_file.exists() else None)
    except PermissionError:
        return None, [_not_permitted(paths.config_file.parent)]
    shown = str(path) if path else f"{paths.config_file} (absent: defaults)"
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        return None, [_problem("config", f"{key}: {message}",
                               f"fix {key} in {path or paths.config_file}"
                               + (" (or the --set override)" if overrides else "")
                               + "; `appliance validate-config` re-checks it")
                      for key, message in exc.problems]
    findings = [_ok("config", f"valid ({shown})")]
    if path is not None and config_holds_secret(config):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            findings.append(_problem("config", f"{path} holds credentials but is mode {mode:o}",
                                     f"chmod 600 {path}"))
    return config, findings


def _not_permitted(path: Path) -> Finding:
    import pwd

    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = f"uid {os.geteuid()}"
    return _problem("permissions", f"{path} is not readable by {me}: the node's files belong to its "
                    "service user", "run the doctor as root: `sudo appliance doctor`")


def config_holds_secret(config: Config) -> bool:
    return bool(config.s3.access_key or config.s3.secret_key)


# ----------------------------------------------------------------------------- binaries


def _find(name: str, extra_dirs: Iterable[Path]) -> str | None:
    for directory in extra_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _version(binary: str, args: list[str] | None) -> str:
    if args is None:
        return ""
    try:
        result = subp.run([binary, *args], timeout=30, check=False)
    except ApplianceError as exc:
        return f"(does not run: {exc})"
    text = (result.stdout or result.stderr).strip().splitlines()
    if not text:
        return f"(exit code {result.returncode})"
    return text[0].replace(binary, "").strip()[:160]


def check_binaries(paths: NodePaths, bin_dir: Path) -> list[Finding]:
    """Required binaries in the venv (or PATH); the optional real servers when installed."""
    dirs = [bin_dir, paths.local("/opt/appliance/bin")]
    findings = []
    for name, args in REQUIRED.items():
        found = _find(name, dirs)
        if found is None:
            findings.append(_problem("binaries", f"{name} is not installed (looked in "
                                     f"{', '.join(map(str, dirs))} and PATH)", reinstall_fix(name, bin_dir)))
            continue
        version = _version(found, args)
        if version.startswith("(does not run"):
            findings.append(_problem("binaries", f"{found} {version}", reinstall_fix(name, bin_dir)))
        else:
            findings.append(_ok("binaries", f"{name}: {found} {version}".rstrip()))
    for name, args in OPTIONAL.items():
        found = _find(name, dirs)
        if found is not None:
            findings.append(_ok("binaries", f"{name} (optional): {found} {_version(found, args)}"))
    return findings


def reinstall_fix(name: str, bin_dir: Path) -> str:
    """The command that puts ``name`` back: reinstall the distribution whose files list it.

    Re-running install-node.sh would not (its venv is "up to date" by its source stamp, and pip
    skips a distribution whose metadata is installed, even with its files gone). The venv is
    the one ``bin_dir`` belongs to.
    """
    from importlib import metadata

    site = sorted(bin_dir.parent.glob("lib/python3*/site-packages"))
    dists = metadata.distributions(path=[str(p) for p in site]) if site else metadata.distributions()
    for dist in dists:
        for entry in dist.files or ():
            if entry.name == name and entry.parent.name in ("bin", "scripts"):
                python = bin_dir / "python"
                return (f"{python if python.exists() else 'python'} -m pip install --force-reinstall "
                        f"--no-deps '{dist.metadata['Name']}=={dist.version}'")
    return REINSTALL


# ----------------------------------------------------------------------------- ports


def node_ports(config: Config) -> dict[str, int]:
    """Every port this node listens on, by config key (read from the schema: new keys count too)."""
    values = effective_values(config)
    ports = {}
    for key in SCHEMA:
        if not key.name.endswith(".port"):
            continue
        if ROLE_PORTS.get(key.name, config.node.role) != config.node.role:
            continue
        feature = FEATURE_PORTS.get(key.name)
        if feature is not None and str(values.get(feature)).lower() != "true":
            continue
        if key.name == "cluster.port" and not config.cluster.ca_cert:
            continue   # no inter-node listener without the cluster CA
        ports[key.name] = int(values[key.name])
    return ports


def _bind_error(address: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc
    return None


def our_pids(paths: NodePaths) -> set[int]:
    """supervisord of this node root and every process it runs (empty when it is down)."""
    from .render import supervisor_socket
    from .supervision import Supervisor

    supervisor = Supervisor(supervisor_socket(paths))
    try:
        pids = {supervisor.pid()}
        pids |= {p.pid for p in supervisor.processes() if p.pid}
    except SupervisorError:
        return set()
    # ... and their children: the object store's server runs under `appliance objectstore`.
    return pids | portowners.descendants(pids)


def check_ports(config: Config, paths: NodePaths) -> list[Finding]:
    ours = our_pids(paths)
    config_file = paths.config_file
    findings = []
    for key, port in node_ports(config).items():
        address = "127.0.0.1" if key in LOOPBACK_PORTS else config.node.address
        error = _bind_error(address, port)
        if error is None:
            findings.append(_ok("ports", f"{key} {port} is free on {address}"))
            continue
        if error.errno != errno.EADDRINUSE:
            findings.append(_problem("ports", f"{key} {port} cannot be bound on {address}: "
                                     f"{error.strerror}",
                                     f"set node.address to an address of this machine, or "
                                     f"another {key} in {config_file}"))
            continue
        owners = portowners.listeners(port)
        mine = [o for o in owners if o.pid in ours]
        if mine:
            findings.append(_ok("ports", f"{key} {port} is held by this node's "
                                f"{mine[0].command} (pid {mine[0].pid})"))
            continue
        who = (", ".join(f"{o.command} (pid {o.pid})" for o in owners) if owners
               else "a process this user cannot see (run the doctor as root, or `ss -ltnp`)")
        findings.append(_problem(
            "ports", f"{key} {port} on {address} is taken by {who}, not by this node",
            f"stop that process, or give {key} a free port: `{key}: <port>` in {config_file} "
            f"(or `--set {key}=<port>`), then `appliance up`"))
    return findings


# ----------------------------------------------------------------------------- storage


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(paths: NodePaths, config: Config | None, min_free: int = MIN_FREE_BYTES) -> list[Finding]:
    targets = {"logs": paths.logs, "run dir": paths.run}
    if config is not None and config.s3.type == "none":
        targets["model store"] = paths.local(config.model.base_path)
    findings = []
    for label, path in targets.items():
        where = _existing_ancestor(path)
        usage = shutil.disk_usage(where)
        free_mib = usage.free // (1 << 20)
        if usage.free < min_free or usage.free < usage.total * MIN_FREE_FRACTION:
            findings.append(_problem("disk", f"{label} {path}: only {free_mib} MiB free "
                                     f"({usage.free * 100 // max(usage.total, 1)}%) on its filesystem",
                                     f"free space on the filesystem of {where} (old model versions "
                                     f"in the store, rotated logs in {paths.logs}) or move it to a "
                                     "bigger disk"))
        else:
            findings.append(_ok("disk", f"{label} {path}: {free_mib} MiB free"))
    return findings


def _write_probe(directory: Path) -> OSError | None:
    """Create and remove a temp file in ``directory``: the only test a read-only mount fails for root."""
    try:
        fd, name = tempfile.mkstemp(prefix=".doctor-probe.", dir=directory)
    except OSError as exc:
        return exc
    os.close(fd)
    os.unlink(name)
    return None


def service_user(paths: NodePaths) -> str:
    """The service user that owns ``/etc/appliance`` on an installed node ('' if root or unknown)."""
    import pwd

    try:
        uid = paths.config_file.parent.stat().st_uid
        return pwd.getpwuid(uid).pw_name if uid != 0 else ""
    except (OSError, KeyError):
        return ""


def _user_can_write(path: Path, user: str) -> bool:
    import grp
    import pwd

    entry = pwd.getpwnam(user)
    st = path.stat()
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == entry.pw_uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def unwritable(directory: Path, user: str) -> OSError | None:
    """Why ``directory`` would refuse the node's writes, or None: a temp file created and removed
    (the only test a read-only mount fails for root), then, when root checks on behalf of the
    service user ``user``, that user's permission bits. The error's ``strerror`` completes
    "<directory> is not writable: ..."."""
    error = _write_probe(directory)
    if error is None and os.geteuid() == 0 and user and not _user_can_write(directory, user):
        error = PermissionError(errno.EACCES, f"the service user {user} lacks write permission")
    return error


def check_model_store(paths: NodePaths, config: Config) -> list[Finding]:
    """The local store must exist and take writes (the sync agent stages versions into it)."""
    if config.node.role == "repo":
        return []       # a repo node serves no model: its models are in the object store
    store = paths.local("/data/models") if config.s3.type != "none" else paths.local(config.model.base_path)
    if not store.is_dir():
        return []   # reported by check_repository with its fix
    user = service_user(paths)
    error = unwritable(store, user)
    if error is None:
        return [_ok("model store", f"{store} is writable")]
    if error.errno == errno.EROFS:
        fix = (f"remount the filesystem of {store} read-write (see `findmnt -T {store}`), "
               "or set model.base.path to a writable directory")
    elif user and os.geteuid() == 0:
        fix = f"chown -R {user}: {store}"
    else:
        fix = f"give the node write access: chown -R <service user> {store} (or chmod u+w)"
    return [_problem("model store", f"{store} is not writable: {error.strerror}", fix)]


# ----------------------------------------------------------------------------- repository


def check_repository(paths: NodePaths, config: Config, timeout: float = 5.0) -> list[Finding]:
    if config.node.role == "repo":
        from .doctor_node import check_repo_data

        return check_repo_data(paths, config, service_user(paths))
    if config.s3.type != "none":
        return [endpoint_reachable(s3_endpoint(config), timeout)]
    store = paths.local(config.model.base_path)
    if not store.is_dir():
        return [_problem("repository", f"the model repository {store} (model.base.path "
                         f"{config.model.base_path}) does not exist",
                         f"create it (mkdir -p {store}) and put each model in "
                         f"{store}/<name>/<version>/ (`appliance builtin-models` builds the built-in "
                         "ones), or fix model.base.path")]
    findings = []
    for name in config.model.names:
        versions = [p.name for p in version_dirs(store / name)]
        if versions:
            findings.append(_ok("repository", f"model {name}: version(s) {', '.join(versions)} "
                                f"in {store / name}"))
        else:
            findings.append(_problem("repository", f"model {name} has no version in {store / name}",
                                     f"put a SavedModel in {store / name}/<version>/ (e.g. "
                                     f"{store / name}/1/saved_model.pb), run `appliance builtin-models` "
                                     "for a built-in model, or remove it from model.name"))
    return findings


def s3_endpoint(config: Config) -> str:
    """s3.endpoint, else the preset's endpoint for s3.type, else AWS's regional endpoint."""
    if config.s3.endpoint:
        return config.s3.endpoint
    try:
        from .sources.presets import PRESETS
    except ImportError:
        return ""
    preset = PRESETS.get(config.s3.type)
    if preset is None:
        return ""
    region = config.s3.region or preset.region
    return preset.endpoint_for("", region) or f"https://s3.{region}.amazonaws.com"


def endpoint_reachable(endpoint: str, timeout: float = 5.0) -> Finding:
    """Whether an S3 endpoint answers HTTP at all (any status counts: credentials are not checked)."""
    if not endpoint:
        return _problem("repository", "s3.endpoint is empty", "set s3.endpoint to the object "
                        "store's URL, e.g. http://<repo node>:9000")
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme not in ("http", "https") or not url.hostname:
        return _problem("repository", f"s3.endpoint {endpoint!r} is not an http(s) URL",
                        "set s3.endpoint like http://<host>:<port> or https://<host>")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        sock = socket.create_connection((url.hostname, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return _problem("repository", f"the model repository s3.endpoint {endpoint} is unreachable "
                        f"({url.hostname}:{port}: {reason})",
                        f"check that the object store runs (on a repo node: `appliance status` "
                        f"there), that {url.hostname} resolves and that port {port} is open "
                        "between the nodes; or fix s3.endpoint")
    with sock:
        if url.scheme == "http":     # https: a TCP connect is as far as we go without TLS
            try:
                sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {url.hostname}\r\nConnection: close\r\n\r\n"
                             .encode("ascii"))
                head = sock.recv(64)
            except OSError:
                head = b""
            if not head.startswith(b"HTTP/"):
                return _problem("repository", f"s3.endpoint {endpoint} accepts connections but "
                                "does not answer HTTP",
                                "point s3.endpoint at the object store's S3 API port")
    return _ok("repository", f"s3.endpoint {endpoint} answers")


def check_versions(paths: NodePaths, config: Config) -> list[Finding]:
    """Versions that cannot serve: quarantined by the model server, refused by the agent, or
    version directories that hold no model at all (the model server never loads them)."""
    from .agent.state import version_notes

    if config.node.role != "serving":
        return []
    store = local_store(config, paths)
    findings = []
    for name in config.model.names:
        notes = version_notes(paths, store, name)
        broken = _not_models(store / name, notes)
        if not notes and not broken:
            findings.append(_ok("versions", f"model {name}: no version quarantined or refused"))
        for number, note in sorted(notes.items()):
            if note.startswith("refused"):
                fix = (f"fix version {number} of {name} in the repository and push it again under the "
                       f"same number (`appliance models push DIR --name {name} --version {number}`); "
                       "the agent retries it when its objects change")
            elif config.s3.type == "none":
                fix = (f"replace the files of {store / name}/{number} with a working model (the model "
                       "server loads it again once its files change), or remove that directory")
            else:
                fix = (f"push a fixed copy under the same number (`appliance models push DIR --name {name} "
                       f"--version {number}`) or delete the version from the repository; the model "
                       "server loads it again once its files change")
            findings.append(_problem("versions", f"model {name} version {number}: {note}", fix))
        findings += broken
    return findings


def _not_models(model_dir: Path, notes: dict[int, str]) -> list[Finding]:
    """Version directories that hold no model (empty, garbage), unless already noted otherwise.

    The agent's check (:func:`appliance.modelfiles.check_version`): what a running model server
    would fail to load, said before it tries, and on a node that is down.
    """
    from .modelfiles import NotAModel, check_version

    findings = []
    for version in version_dirs(model_dir):
        if int(version.name) in notes:
            continue
        try:
            check_version(version)
        except NotAModel as exc:
            findings.append(_problem("versions", f"model {model_dir.name} version {version.name} "
                                     f"({version}) is not a model: {exc}",
                                     f"put a working model in {version} (a SavedModel's saved_model.pb "
                                     f"and variables/, or model.onnx), or remove it: rm -r {version}"))
    return findings


# ----------------------------------------------------------------------------- processes


def check_processes(paths: NodePaths) -> list[Finding]:
    from .render import supervisor_socket
    from .supervision import Supervisor

    supervisor = Supervisor(supervisor_socket(paths))
    try:
        infos = supervisor.processes()
    except SupervisorError:
        return [_ok("processes", "the node is not running (start it: `appliance up`, or "
                    "`systemctl start appliance` on an image)")]
    from .doctor_node import crash_loop_findings

    findings = crash_loop_findings(paths, {i.name: i.logfile for i in infos})
    looping = {f.message.split(" ", 1)[0] for f in findings}
    for info in infos:
        if info.name in looping:
            continue
        if info.state == "RUNNING":
            findings.append(_ok("processes", f"{info.name} RUNNING (pid {info.pid})"))
        else:
            findings.append(_problem("processes", f"{info.name} is {info.state} ({info.description})",
                                     f"read {info.logfile}, fix the cause, then `appliance up`"))
    return findings


# ----------------------------------------------------------------------------- certificates


def check_certificates(config: Config, paths: NodePaths) -> list[Finding]:
    """The edge certificate, and this node's inter-node one: present, not close to expiry,
    signed by the cluster CA and made for node.address (what `up` would otherwise reissue)."""
    from . import pki

    from .membership import no_ca_warning, peers_left_out

    findings = []
    left_out = peers_left_out(config)
    if left_out:
        findings.append(_problem("certificates", no_ca_warning(config, left_out),
                                 "`appliance cluster-ca FILE` once, then its cluster.ca.cert and "
                                 "cluster.ca.key into every node's config"))
    running = bool(our_pids(paths))
    for report in pki.reports(config, paths):
        if not report.problem:
            findings.append(_ok("certificates", report.text()))
            continue
        made_at_up = report.role == "inter-node" or report.note != "tls.cert.file"
        if report.info.problem.startswith("missing") and made_at_up and not running:
            findings.append(_ok("certificates", f"{report.role} certificate: made at the first `up`"))
            continue
        if report.role == "edge" and not report.info.problem and "tls.cert.file" == report.note:
            fix = f"renew the certificate in tls.cert.file ({report.info.path}), then `appliance reload`"
        else:
            fix = "`appliance up` (or `reload` on a running node) issues it anew"
        findings.append(_problem("certificates", report.text(), fix))
    return findings


# ----------------------------------------------------------------------------- the report


def run_checks(paths: NodePaths, config_path: Path | None = None, overrides: list[str] | None = None,
               bin_dir: Path | None = None) -> list[Finding]:
    from .doctor_node import (check_applied, check_clock, check_metrics, check_releases, check_runtimes,
                              check_unit)
    from .render import bin_dir as default_bin_dir

    config, findings = check_config(paths, config_path, overrides or [])
    checks: list[tuple] = [(check_binaries, paths, bin_dir or default_bin_dir()),
                           (check_disk, paths, config)]
    if config is not None:
        checks += [(check_ports, config, paths), (check_model_store, paths, config),
                   (check_repository, paths, config), (check_versions, paths, config),
                   (check_processes, paths), (check_applied, paths, config),
                   (check_releases, paths, our_pids(paths)), (check_unit, paths),
                   (check_certificates, config, paths), (check_metrics, config, paths),
                   (check_runtimes, paths, config)]
        if config.s3.type != "none" and config.node.role == "serving":
            checks.append((check_clock, s3_endpoint(config)))
    for check, *args in checks:
        try:
            findings += check(*args)
        except PermissionError as exc:
            # Not root nor the service user: say so once, never with a traceback.
            denied = _not_permitted(Path(exc.filename or paths.root))
            if not any(f.check == denied.check for f in findings):
                findings.append(denied)
    if config is None and not any(f.check == "permissions" for f in findings):
        findings.append(Finding("config", False, "ports, model store and repository are not "
                                "checked until the config is valid", "fix the config errors above"))
    return findings


def report(findings: list[Finding], paths: NodePaths) -> str:
    lines = [f"appliance doctor: node root {paths.root}"]
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        lines.append(f"  {mark} [{finding.check}] {finding.message}")
        if finding.fix:
            lines.append(f"       fix: {finding.fix}")
    problems = sum(not f.ok for f in findings)
    lines.append(f"{problems} problem(s) found" if problems else "no problems found")
    return "\n".join(lines)
