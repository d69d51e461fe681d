"""The node's configuration: one YAML file, validated once into a typed :class:`Config`.

Keys are the user guide's dotted parameter names (``model.name``, ``model.base.path``,
``s3.type``, ``http.port``, ``enable.access.log``, ...). A YAML file may spell them nested
(``model: {name: resnet}``) or dotted (``model.name: resnet``); both flatten to the same key,
and ``--set key=value`` overrides use the same names. Validation collects *every* problem
with its key path before failing (Patroni's validator), so a user fixes a file in one go.
The per-model keys ``models.<name>.*`` are defined in ``appliance/modelsettings.py``, the value
parsers both use in ``appliance/configkeys.py``; the README's key reference is generated from
these schemas (``appliance/config_reference.py``).

Local paths in the config (``model.base.path`` when ``s3.type`` is ``none``) are relative to
the node root prefix, so a trial from a checkout or a test under a temp dir uses exactly the
layout of a VM image (``/data/models``, ``/var/lib/appliance/run``, ...).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import apikeys, modelsettings
from .apikeys import ApiKey
from .configkeys import (Invalid, Key, assemble, boolean, choice, integer, items, non_negative,
                         number_between, positive, string, value_of)
from .errors import ConfigError
from .modelsettings import ModelEntry
from .sources.presets import PRESETS, split_s3_path

DEFAULT_CONFIG = Path("/etc/appliance/appliance.yaml")
# TF Serving's own ports: the user guide reserves them for the model server.
RESERVED_PORTS = (8500, 8501)
S3_TYPES = ("none", *PRESETS)  # object stores are presets of one S3 source
NODE_ROLES = ("serving", "repo")
BUILTIN_DEFAULT_MODELS = ("saved_model_half_plus_two_mkl", "resnet")
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"   # TF Serving's default metrics page


# ----------------------------------------------------------------------------- typed config


@dataclass(frozen=True)
class NodeSettings:
    role: str
    address: str


@dataclass(frozen=True)
class ModelSettings:
    names: tuple[str, ...]
    base_path: str
    settings: Mapping[str, ModelEntry]   # one entry per name, in model.name's order

    @property
    def default(self) -> str:
        """The user guide's default model: the first one named."""
        return self.names[0]


@dataclass(frozen=True)
class S3Settings:
    type: str
    endpoint: str
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class EnvoySettings:
    admin_port: int
    concurrency: int
    log_level: str


@dataclass(frozen=True)
class ServingSettings:
    rest_port: int
    grpc_port: int
    poll_seconds: int
    num_threads: int
    max_body_bytes: int
    body_budget_bytes: int
    idle_timeout_seconds: int
    read_timeout_seconds: int
    runtime_cache_bytes: int


@dataclass(frozen=True)
class ClusterSettings:
    members: tuple[str, ...]
    dns: str
    port: int
    ca_cert: str = field(repr=False)
    ca_key: str = field(repr=False)


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str
    key_file: str
    plaintext: bool


@dataclass(frozen=True)
class LogviewerSettings:
    enabled: bool
    port: int
    secure_cookies: bool


@dataclass(frozen=True)
class SyncSettings:
    interval_seconds: int
    concurrency: int
    verify: str


@dataclass(frozen=True)
class RepoSettings:
    port: int
    internal_port_base: int
    data_path: str


@dataclass(frozen=True)
class StartupSettings:
    timeout_seconds: int


@dataclass(frozen=True)
class LogSettings:
    max_total_mb: int


@dataclass(frozen=True)
class DashboardSettings:
    sample_seconds: int
    retention_hours: int


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool
    path: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class CapacitySettings:
    latency_objective_ms: float
    latency_percentile: float
    cpu_target_percent: float
    min_nodes: int
    window_seconds: int
    hook: str


@dataclass(frozen=True)
class AuthSettings:
    required: bool
    keys: Mapping[str, ApiKey]      # keys.<name>.* (appliance/apikeys.py)


@dataclass(frozen=True)
class IpSettings:
    allow: tuple[str, ...]          # CIDRs, normalized
    deny: tuple[str, ...]
    trusted_proxies: int


@dataclass(frozen=True)
class RateSettings:
    node: int
    cluster: int


@dataclass(frozen=True)
class Config:
    """Everything a node needs, validated. Build it with :func:`load_config`."""

    node: NodeSettings
    model: ModelSettings
    s3: S3Settings
    http_port: int
    grpc_port: int
    access_log: bool
    envoy: EnvoySettings
    serving: ServingSettings
    sync: SyncSettings
    repo: RepoSettings
    logviewer: LogviewerSettings
    cluster: ClusterSettings
    startup: StartupSettings
    log: LogSettings
    metrics: MetricsSettings
    tls: TlsSettings
    capacity: CapacitySettings
    auth: AuthSettings
    ip: IpSettings
    rate: RateSettings
    dashboard: DashboardSettings

    def connect_address(self) -> str:
        """Where local clients reach this node's listeners (a wildcard bind means loopback)."""
        return "127.0.0.1" if self.node.address in ("0.0.0.0", "::") else self.node.address


@dataclass(frozen=True)
class NodePaths:
    """The node's directory layout under one root prefix (DESIGN.md)."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.etc / "appliance.yaml"

    @property
    def models(self) -> Path:
        return self.root / "data/models"

    @property
    def run(self) -> Path:
        return self.root / "var/lib/appliance/run"

    @property
    def quarantine(self) -> Path:
        """Records of model versions that failed to load (written by the model server)."""
        return self.root / "var/lib/appliance/quarantine"

    @property
    def runtime_cache(self) -> Path:
        """Converted models and platform auto's measurements (the model server's runtime cache)."""
        return self.root / "var/lib/appliance/runtime-cache"

    @property
    def dashboard(self) -> Path:
        """The logviewer's dashboard history (logviewer/samples.py)."""
        return self.root / "var/lib/appliance/dashboard.sqlite"

    @property
    def logs(self) -> Path:
        return self.root / "var/log/appliance"

    @property
    def etc(self) -> Path:
        return self.root / "etc/appliance"

    def local(self, path: str) -> Path:
        """A path from the config, placed under the root prefix."""
        return self.root / path.lstrip("/")


# ----------------------------------------------------------------------------- the schema


def _port(value: Any) -> int:
    port = integer(value)
    if not 1 <= port <= 65535:
        raise Invalid(f"port must be between 1 and 65535, got {port}")
    return port


def _public_port(value: Any) -> int:
    port = _port(value)
    if port in RESERVED_PORTS:
        raise Invalid(f"{port} is reserved for the model server (8500 gRPC, 8501 REST); "
                      "pick another port, e.g. 8080 or 9000")
    return port


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model, or None when it can: the one rule for config keys,
    ``models push`` and the log browser. A name is a directory in the model store, a path segment
    in ``/v1/models/NAME`` and an S3 key prefix, so no '/', no ':' (TF Serving's ``NAME:predict``)
    and no leading '.' (hidden entries, '..')."""
    if not name:
        return "a model name may not be empty"
    if "/" in name or ":" in name or name.startswith("."):
        return f"model name {name!r} may not contain '/' or ':' or start with '.'"
    return None


def _model_names(value: Any) -> tuple[str, ...]:
    names = tuple(items(value))
    if not names or any(not n for n in names):
        raise Invalid("expected one model name or a comma-separated list of names")
    for name in names:
        if problem := model_name_problem(name):
            raise Invalid(problem)
    if len(set(names)) != len(names):
        raise Invalid("a model is named twice")
    return names


def _address(value: Any) -> str:
    text = string(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(f"expected an IP address to bind, got {value!r}") from None
    return text


def _addresses(value: Any) -> tuple[str, ...]:
    members = tuple(item for item in items(value) if item)
    for member in members:
        try:
            ipaddress.ip_address(member)
        except ValueError:
            raise Invalid(f"{member!r} is not an IP address (use cluster.dns for a DNS name)") from None
    if len(set(members)) != len(members):
        raise Invalid("an address is listed twice")
    return members


def _pem(kind: str) -> Any:
    """A PEM block of ``kind`` (or empty); the message never quotes the value (a secret)."""
    def parse(value: Any) -> str:
        text = string(value).strip()
        if text and not (text.startswith("-----BEGIN ") and f"{kind}-----" in text.splitlines()[0]
                         and text.endswith("-----")):
            raise Invalid(f"expected a PEM block (-----BEGIN ...{kind}-----)")
        return text
    return parse


def _cidrs(value: Any) -> tuple[str, ...]:
    found = []
    for item in items(value):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise Invalid(f"{item!r} is not an address or CIDR (e.g. 10.0.0.0/8, 192.0.2.7)") from None
    return tuple(found)


def _hostname(value: Any) -> str:
    text = string(value).strip().rstrip(".")
    if text and not all(part and len(part) < 64 and part.replace("-", "").isalnum()
                        for part in text.split(".")):
        raise Invalid(f"{value!r} is not a DNS name")
    return text


#: Below this the log budget cannot hold one rotation of each log (see appliance/logbudget.py).
MIN_LOG_BUDGET_MB = 16


def _log_budget(value: Any) -> int:
    number = integer(value)
    if number < MIN_LOG_BUDGET_MB:
        raise Invalid(f"must be at least {MIN_LOG_BUDGET_MB} (MiB), got {number}")
    return number


def _url_path(value: Any) -> str:
    text = string(value).strip()
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise Invalid(f"expected an URL path such as {PROMETHEUS_PATH}, got {value!r}")
    return text


def _token(value: Any) -> str:
    text = string(value).strip()
    if text and (len(text) < 16 or not text.isprintable() or " " in text):
        raise Invalid("a token needs at least 16 printable characters and no space "
                      "(e.g. the output of `openssl rand -hex 32`)")
    return text


SCHEMA: tuple[Key, ...] = (
    Key("node.role", "node", "role", choice(*NODE_ROLES), "serving",
        "serving runs a model server; repo runs the object store (both run Envoy)."),
    Key("node.address", "node", "address", _address, "0.0.0.0",
        "Address the node's listeners bind (Envoy's public ports and the model server)."),
    Key("model.name", "model", "names", _model_names, ",".join(BUILTIN_DEFAULT_MODELS),
        "Model(s) to serve: a name or a comma-separated list; the first is the default model."),
    Key("model.base.path", "model", "base_path", string, "/data/models",
        "Model repository root: a local directory (under the node root) or s3://bucket[/prefix]."),
    Key("s3.type", "s3", "type", choice(*S3_TYPES), "none",
        "Where models live: none (local disk), minio, s3, qingstor or seaweedfs."),
    Key("s3.endpoint", "s3", "endpoint", string, "",
        "S3 endpoint URL; empty means the preset of s3.type."),
    Key("s3.region", "s3", "region", string, "", "S3 region; empty means the preset of s3.type."),
    Key("s3.access.key", "s3", "access_key", string, "", "S3 access key.", secret=True),
    Key("s3.secret.key", "s3", "secret_key", string, "", "S3 secret key.", secret=True),
    Key("http.port", "", "http_port", _public_port, 8080, "Envoy's public REST port."),
    Key("grpc.port", "", "grpc_port", _public_port, 9000, "Envoy's public gRPC port."),
    Key("enable.access.log", "", "access_log", boolean, False,
        "Write Envoy's access log: one line per inference request, with the node that served it."),
    Key("envoy.admin.port", "envoy", "admin_port", _port, 8001,
        "Envoy's admin port, always bound to 127.0.0.1."),
    Key("envoy.concurrency", "envoy", "concurrency", non_negative, 0,
        "Envoy worker threads; 0 means one per CPU the node may use."),
    Key("envoy.log.level", "envoy", "log_level",
        choice("trace", "debug", "info", "warning", "error", "critical", "off"), "info",
        "Envoy's own log level."),
    Key("serving.rest.port", "serving", "rest_port", _port, 8501, "The model server's REST port."),
    Key("serving.grpc.port", "serving", "grpc_port", _port, 8500, "The model server's gRPC port."),
    Key("serving.poll.seconds", "serving", "poll_seconds", positive, 1,
        "How often the model server looks for new or removed model versions."),
    Key("serving.threads", "serving", "num_threads", non_negative, 0,
        "Runtime threads of the model server; 0 means one per CPU the node may use."),
    Key("serving.rest.max.body.bytes", "serving", "max_body_bytes", positive, 2 ** 31 - 1,
        "Largest REST request body the model server reads; a bigger one gets 413."),
    Key("serving.rest.body.budget.bytes", "serving", "body_budget_bytes", positive, 2 ** 30,
        "REST request body bytes the model server holds across all connections; past it a request gets 429."),
    Key("serving.rest.idle.timeout.seconds", "serving", "idle_timeout_seconds", positive, 50,
        "The model server closes a REST connection idle (or not reading its answers) this long."),
    Key("serving.rest.read.timeout.seconds", "serving", "read_timeout_seconds", positive, 50,
        "The model server answers 408 and closes when a request's headers take this long or its body stalls."),
    Key("serving.runtime.cache.bytes", "serving", "runtime_cache_bytes", positive, 4 * 2 ** 30,
        "Disk the model server's runtime cache may use (models converted for OpenVINO, platform auto's "
        "measurements); least recently used entries go first."),
    Key("sync.interval.seconds", "sync", "interval_seconds", positive, 10,
        "How often the agent polls the model repository (s3.type other than none)."),
    Key("sync.concurrency", "sync", "concurrency", positive, 10,
        "Concurrent downloads (whole small objects, parts of big ones) while syncing."),
    Key("sync.verify", "sync", "verify", choice("etag", "size"), "etag",
        "etag: check every object's content -- against the push manifest's block checksums "
        "when `appliance models push` wrote one (sizes and ETags are compared with it first), "
        "else against its size and MD5 ETag (an ETag that is not an MD5, e.g. with AWS SSE-KMS, "
        "is then skipped); size: sizes only, no content checks."),
    Key("repo.port", "repo", "port", _port, 8333,
        "S3 port of the object store on a repo node (node.role: repo): Envoy listens on "
        "node.address:repo.port and passes connections to the store, which listens on loopback."),
    Key("repo.internal.port.base", "repo", "internal_port_base", _port, 18333,
        "First of 8 consecutive 127.0.0.1 ports of the repo node's object store: SeaweedFS's "
        "master, volume, filer (HTTP and gRPC each) and S3 gRPC, then the store's S3 API."),
    Key("repo.data.path", "repo", "data_path", string, "/data/objectstore",
        "Where the repo node's object store keeps its data (under the node root)."),
    Key("cluster.members", "cluster", "members", _addresses, "",
        "Serving nodes' addresses (comma-separated IPs); Envoy on every node balances over them. "
        "Empty: this node alone (on a serving node)."),
    Key("cluster.dns", "cluster", "dns", _hostname, "",
        "A DNS name resolving to every serving node; re-resolved by the agent, joined to members."),
    Key("cluster.port", "cluster", "port", _public_port, 7443,
        "Inter-node port: each serving node's Envoy takes its peers' traffic here, over mutual "
        "TLS (a client certificate signed by the cluster CA is required)."),
    Key("cluster.ca.cert", "cluster", "ca_cert", _pem("CERTIFICATE"), "",
        "The cluster CA's certificate (PEM), the same on every node: `appliance cluster-ca` "
        "makes one. Needed as soon as a node has peers: without it a node sends its peers "
        "nothing.", secret=True),
    Key("cluster.ca.key", "cluster", "ca_key", _pem("PRIVATE KEY"), "",
        "The cluster CA's private key (PEM): each node signs its own inter-node certificate "
        "with it at start.", secret=True),
    Key("tls.cert.file", "tls", "cert_file", string, "",
        "Certificate (PEM, chain first-to-last) served on the public REST, gRPC and logviewer "
        "ports; empty: a self-signed one made at the first start (`status` shows its fingerprint)."),
    Key("tls.key.file", "tls", "key_file", string, "", "Private key (PEM) of tls.cert.file."),
    Key("tls.plaintext", "tls", "plaintext", boolean, True,
        "The public REST and gRPC ports also take plain HTTP (the same port serves TLS and "
        "plaintext); false: TLS only. The logviewer takes plain HTTP from loopback clients only."),
    Key("logviewer.enabled", "logviewer", "enabled", boolean, True,
        "Run the log and model browser (a login-protected web UI) on every node."),
    Key("logviewer.port", "logviewer", "port", _public_port, 8090,
        "Port of the log and model browser, bound to node.address."),
    Key("logviewer.secure.cookies", "logviewer", "secure_cookies", boolean, False,
        "Mark the browser's session cookie Secure even on plain HTTP requests (set it when a "
        "TLS proxy fronts the logviewer; HTTPS requests always get Secure cookies)."),
    Key("startup.timeout.seconds", "startup", "timeout_seconds", positive, 600,
        "How long `appliance up` waits for the node to serve (every model AVAILABLE, Envoy "
        "ready); under `up --foreground` (the systemd unit) a node not ready by then stops and "
        "exits non-zero, so systemd restarts it instead of showing a unit that serves nothing."),
    Key("log.max.total.mb", "log", "max_total_mb", _log_budget, 1024,
        "Disk the node's logs may take in all, in MiB (every log file rotated by size: "
        "supervisord's program logs, Envoy's access log, the object store's)."),
    Key("dashboard.sample.seconds", "dashboard", "sample_seconds", positive, 10,
        "How often the logviewer reads every node's metrics page for its dashboard's charts."),
    Key("dashboard.retention.hours", "dashboard", "retention_hours", positive, 6,
        "Hours of dashboard history the logviewer keeps (var/lib/appliance/dashboard.sqlite, "
        "about 1 MB per node and hour at the default sample interval)."),
    Key("metrics.enabled", "metrics", "enabled", boolean, True,
        "Serve the model server's Prometheus metrics page (TF Serving's --monitoring_config_file)."),
    Key("metrics.path", "metrics", "path", _url_path, PROMETHEUS_PATH,
        "Path of the model server's Prometheus metrics page on its REST port."),
    Key("metrics.token", "metrics", "token", _token, "",
        "Bearer token of the node's scrape page (GET /metrics on logviewer.port): set one value "
        "on every node of a cluster so one Prometheus job scrapes them all; empty: each node "
        "generates its own in etc/appliance/metrics.token (0600).", secret=True),
    Key("capacity.latency.objective.ms", "capacity", "latency_objective_ms",
        number_between(0, 3_600_000), 100,
        "`appliance capacity`: the latency objective of the model servers, in ms (may be a fraction)."),
    Key("capacity.latency.percentile", "capacity", "latency_percentile", number_between(0, 100), 99,
        "`appliance capacity`: which percentile of request latency the objective applies to."),
    Key("capacity.cpu.target.percent", "capacity", "cpu_target_percent", number_between(0, 100), 70,
        "`appliance capacity`: CPU use (model server + Envoy, of the node's CPUs) a node should stay under."),
    Key("capacity.min.nodes", "capacity", "min_nodes", positive, 2,
        "`appliance capacity` never recommends fewer serving nodes than this."),
    Key("capacity.window.seconds", "capacity", "window_seconds", positive, 10,
        "`appliance capacity` measures the load over this many seconds."),
    Key("capacity.hook", "capacity", "hook", string, "",
        "Command `appliance capacity` runs with its recommendation (JSON on stdin; env "
        "APPLIANCE_CAPACITY_ACTION add|remove|none, APPLIANCE_CAPACITY_NODES, "
        "APPLIANCE_CAPACITY_TARGET); split like a shell's words, run without a shell."),
    Key("auth.required", "auth", "required", boolean, False,
        "Every inference request needs an API key (`appliance keys add`); "
        "models.<name>.auth.required asks it for one model only."),
    Key("ip.allow", "ip", "allow", _cidrs, "",
        "Client addresses (CIDRs, comma-separated) allowed to call the public REST and gRPC "
        "ports; empty: any. The node's own address and 127.0.0.1 are always allowed."),
    Key("ip.deny", "ip", "deny", _cidrs, "",
        "Client addresses (CIDRs) refused with 403 (gRPC PERMISSION_DENIED), even when ip.allow lists them."),
    Key("ip.trusted.proxies", "ip", "trusted_proxies", non_negative, 0,
        "Proxies in front of the nodes that append to X-Forwarded-For: the client address is "
        "taken that many hops from its right end; 0: the connection's peer."),
    Key("rate.node", "rate", "node", non_negative, 0,
        "Requests per second this node lets through, REST and gRPC, TLS and plain together "
        "(one bucket); 429 (gRPC RESOURCE_EXHAUSTED) past it. 0: no limit."),
    Key("rate.cluster", "rate", "cluster", non_negative, 0,
        "Requests per second for the whole cluster, divided evenly over the serving members "
        "(cluster.members and cluster.dns) as they join and leave. 0: no limit."),
)
KEYS = {key.name: key for key in SCHEMA}
SECTIONS = {
    "sync": SyncSettings, "repo": RepoSettings,
    "node": NodeSettings, "model": ModelSettings, "s3": S3Settings,
    "envoy": EnvoySettings, "serving": ServingSettings, "logviewer": LogviewerSettings,
    "cluster": ClusterSettings, "startup": StartupSettings, "log": LogSettings,
    "metrics": MetricsSettings, "tls": TlsSettings, "capacity": CapacitySettings,
    "auth": AuthSettings, "ip": IpSettings, "rate": RateSettings, "dashboard": DashboardSettings,
}


# ----------------------------------------------------------------------------- loading


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"base": {"path": x}}}`` -> ``{"model.base.path": x}``; lists stay leaves."""
    flat: dict[str, Any] = {}
    for raw_key, value in tree.items():
        key = f"{prefix}{raw_key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def parse_overrides(pairs: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``["http.port=8081"]`` -> ``({"http.port": "8081"}, problems)``."""
    values: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append((pair, "an override must look like key=value (e.g. http.port=8081)"))
        else:
            values[key.strip()] = value.strip()
    return values, problems


# A quoted token in a PyYAML message (an alias, a tag, a character it found or expected).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# The tokens kept: one punctuation character or an escape (what the parser expected: ',' '\\t').
_SAFE_TOKEN = re.compile(r"[^\w\s]|\\[tnr0]")


def _unquote_content(text: str) -> str:
    return _QUOTED.sub(lambda m: m[0] if _SAFE_TOKEN.fullmatch(m[0][1:-1]) else "'...'", text)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``exc`` as line, column and problem, without a byte of the document.

    PyYAML's own message quotes the offending line (and aliases, tags, characters of it), and a
    config or user data line may be a secret: this text is what reaches a log or the journal.
    """
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character at offset {exc.position}: {exc.reason}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    parts = [part for part in (exc.context, exc.problem) if part]
    text = "; ".join(_unquote_content(part) for part in parts)
    return where + (text or "invalid YAML")


def read_yaml(path: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The flattened contents of a YAML config file, or the problems reading it."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [("(file)", f"cannot read {path}: {exc.strerror}")]
    except yaml.YAMLError as exc:
        return {}, [("(file)", f"not valid YAML: {yaml_problem(exc)}")]
    if tree is None:
        return {}, []
    if not isinstance(tree, Mapping):
        return {}, [("(file)", f"the top level must be a mapping of keys, got {type(tree).__name__}")]
    return flatten(tree), []


def build(values: Mapping[str, Any]) -> Config:
    """Validate flat ``values`` (dotted keys) into a :class:`Config`, reporting every problem."""
    problems: list[tuple[str, str]] = []
    for name in values:
        if name not in KEYS and not modelsettings.is_model_key(name) and not apikeys.is_key_key(name):
            close = difflib.get_close_matches(name, KEYS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append((name, f"unknown key{hint}"))
    parsed: dict[str, Any] = {}
    for key in SCHEMA:
        raw = values.get(key.name, key.default)
        try:
            parsed[key.name] = key.parse(raw)
        except Invalid as exc:
            problems.append((key.name, str(exc)))
    problems += _cross_checks(parsed)
    settings, model_problems = modelsettings.parse(
        {k: v for k, v in values.items() if modelsettings.is_model_key(k)}, parsed.get("model.name"))
    problems += model_problems
    keys, key_problems = apikeys.parse({k: v for k, v in values.items() if apikeys.is_key_key(k)},
                                       parsed.get("model.name"))
    problems += key_problems
    if problems:
        raise ConfigError(problems)
    return assemble(SCHEMA, parsed, SECTIONS, Config, {"model": {"settings": settings},
                                                        "auth": {"keys": keys}})


def _cross_checks(parsed: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rules that involve several keys; skipped for keys that already failed to parse."""
    problems: list[tuple[str, str]] = []
    ports = [k for k in ("http.port", "grpc.port", "envoy.admin.port",
                         "serving.rest.port", "serving.grpc.port", "logviewer.port", "cluster.port")
             if k in parsed]
    seen: dict[int, str] = {}
    for name in ports:
        other = seen.setdefault(parsed[name], name)
        if other != name:
            problems.append((name, f"port {parsed[name]} is already used by {other}"))
    if "repo.port" in parsed and parsed["repo.port"] in seen:
        problems.append(("repo.port", f"port {parsed['repo.port']} is already used by "
                         f"{seen[parsed['repo.port']]}"))
    if parsed.get("repo.internal.port.base", 0) + 7 > 65535:
        problems.append(("repo.internal.port.base", f"{parsed['repo.internal.port.base']} leaves "
                         "no room for the 8 consecutive internal ports of the object store"))
    problems += _tls_checks(parsed)
    s3_type, base = parsed.get("s3.type"), parsed.get("model.base.path")
    if s3_type is not None and base is not None:
        if s3_type == "none" and base.startswith("s3://"):
            problems.append(("model.base.path", "an s3:// path needs s3.type minio, s3 or qingstor"))
        elif s3_type != "none":
            problems += _s3_checks(parsed, s3_type, base)
        elif not base.startswith("/"):
            problems.append(("model.base.path", "a local model store must be an absolute path"))
    return problems


def _tls_checks(parsed: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Pairs given together."""
    problems: list[tuple[str, str]] = []
    for first, second in (("cluster.ca.cert", "cluster.ca.key"), ("tls.cert.file", "tls.key.file")):
        if first in parsed and second in parsed and bool(parsed[first]) != bool(parsed[second]):
            missing = second if parsed[first] else first
            problems.append((missing, f"{first} and {second} are given together or not at all"))
    # A node with peers but no cluster CA is not refused: it serves through its own model
    # server only (membership.peers_left_out), and up/status/doctor say so. A config made for
    # a release before inter-node mTLS then still starts, so a rolling upgrade keeps serving.
    return problems


def _s3_checks(parsed: Mapping[str, Any], s3_type: str, base: str) -> list[tuple[str, str]]:
    """An object-store repository needs an s3:// base path and, for private stores, an endpoint."""
    problems: list[tuple[str, str]] = []
    if split_s3_path(base) is None:
        problems.append(("model.base.path", f"s3.type {s3_type} needs an s3://bucket[/prefix] "
                         f"path (e.g. s3://models), got {base!r}"))
    endpoint = parsed.get("s3.endpoint") or ""
    if PRESETS[s3_type].needs_endpoint and not endpoint:
        problems.append(("s3.endpoint", f"s3.type {s3_type} needs the store's URL, e.g. "
                         "http://<repo node>:8333"))
    if endpoint and not endpoint.startswith(("http://", "https://")):
        problems.append(("s3.endpoint", f"expected an http:// or https:// URL, got {endpoint!r}"))
    return problems


def local_store(config: "Config", paths: NodePaths) -> Path:
    """The node's local model store: model.base.path on local disk, else <root>/data/models.

    With an object-store repository model.base.path names the bucket, and the agent mirrors
    it into this store, which is what the model server reads.
    """
    if config.s3.type == "none":
        return paths.local(config.model.base_path)
    return paths.models


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (absent means all defaults), apply ``--set`` overrides, validate once."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    if path is not None:
        values, problems = read_yaml(path)
    override_values, override_problems = parse_overrides(overrides or [])
    problems += override_problems
    values.update(override_values)
    try:
        config = build(values)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems, str(path or "")) from None
    if problems:
        raise ConfigError(problems, str(path or ""))
    return config


def effective_values(config: Config, mask_secrets: bool = True) -> dict[str, Any]:
    """The config as flat dotted keys, per-model keys included: ``build`` of them is ``config``."""
    out: dict[str, Any] = {}
    for key in SCHEMA:
        value = value_of(key, config)
        out[key.name] = "********" if key.secret and mask_secrets and value else value
    out.update(modelsettings.flat_values(config.model.settings))
    out.update(apikeys.flat_values(config.auth.keys))
    return out


def resolve_root(cli_root: str | None) -> Path:
    """The node root prefix: ``--root``, else ``$APPLIANCE_ROOT``, else ``/``."""
    root = cli_root or os.environ.get("APPLIANCE_ROOT") or "/"
    return Path(root).resolve()
