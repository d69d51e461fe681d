"""The node's one scrape page: every process of the node in Prometheus text, each series with a
``node`` label.

Served read-only at ``GET /metrics`` on the logviewer's port (the one address of a node that is
meant to face people and tools). Nothing here opens another process's port to the network: the
model server's page and Envoy's admin are read on loopback, server side, and re-exposed.

Sources, each read when the page is asked for (nothing is sampled in between):

* the model server's own page (TF Serving's names, ``modelserver/monitoring.py``), as it is;
* Envoy: a filtered ``/stats/prometheus`` of its admin (clusters of the model servers,
  listeners' requests; cluster-level latency histograms, retries, ejections) plus, per upstream
  node, the per-host counters of ``/clusters`` (``appliance_envoy_upstream_*``);
* the agent, from its state file (``appliance_agent_*``);
* every supervisord program's CPU and resident memory from ``/proc`` (``appliance_process_*``).

A source that does not answer leaves its series out and says so in
``appliance_metrics_source_up{source}`` (0), so a scrape never fails because one process is
restarting.

Authentication: a bearer token (``Authorization: Bearer <token>``), the value of
``metrics.token`` when set (one value for a whole cluster, so one Prometheus job scrapes every
node), else a token generated once per node in ``<etc>/metrics.token`` (0600). There is no
default token.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import quote
from urllib.request import HTTPRedirectHandler

from modelserver.cpus import usable_cpus

from .config import Config, NodePaths
from .localhttp import get_text

TOKEN_FILE = "metrics.token"
#: A peer's page read into memory at most (one model's is ~50 KB).
MAX_PAGE = 32 << 20
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Envoy's stats worth a scrape (of thousands): the model server clusters' requests, latency,
# retries, ejections and health checks (also the local ones the internode listener feeds), and
# the listeners' downstream requests. Matched against
# Envoy's stat names before tag extraction (``cluster.model_server_rest.upstream_rq_total``).
ENVOY_FILTER = (r"^(cluster\.(local_)?model_server_[a-z]+\.(upstream_rq|upstream_cx_(active|connect_fail"
                r"|total)|retry|outlier_detection|health_check|membership_(healthy|total))"
                r"|http\.(rest|grpc|internode)\.downstream_(rq|cx_active))")
# Per-host counters of Envoy's /clusters (per upstream node; /stats has per-cluster ones only).
HOST_STATS = ("rq_total", "rq_success", "rq_error", "rq_timeout", "rq_active", "cx_connect_fail")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- auth


def token_file(paths: NodePaths) -> Path:
    return paths.etc / TOKEN_FILE


def scrape_token(config: Config, paths: NodePaths) -> str:
    """The bearer token of this node's page: ``metrics.token``, else the node's own (generated
    on first use, 0600, never overwritten)."""
    if config.metrics.token:
        return config.metrics.token
    path = token_file(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        if os.geteuid() == 0:
            # `sudo appliance prometheus-config` (or capacity) may be first: the file must stay
            # readable by the logviewer, which runs as the owner of etc (the service user).
            owner = path.parent.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text(encoding="ascii").strip()
    if len(token) < 16:
        raise ValueError(f"{path} is too short to be a token; delete it to regenerate")
    return token


def authorized(config: Config, paths: NodePaths, header: str | None) -> bool:
    """Whether an ``Authorization`` header carries this node's token (constant-time compare)."""
    scheme, _, sent = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not sent.strip():
        return False
    return hmac.compare_digest(sent.strip().encode(), scrape_token(config, paths).encode())


# ----------------------------------------------------------------------------- the page


def node_name(config: Config) -> str:
    """The ``node`` label: the node's address (what membership and file_sd name it by), or its
    host name when it binds a wildcard."""
    if config.node.address in ("0.0.0.0", "::"):
        return socket.gethostname()
    return config.node.address


def model_server_url(config: Config) -> str:
    from .modelstatus import local_rest_base

    return local_rest_base(config) + config.metrics.path


def scrape_address(address: str, port: int) -> str:
    """``host:port`` of a node's scrape page (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):   # noqa: ANN002, ANN003 - urllib's signature
        return None     # urllib then raises the 3xx as an HTTPError


def read_page(config: Config, paths: NodePaths, address: str, timeout: float = 10.0) -> tuple[str | None, str]:
    """(page, "") of the node at ``address``, or (None, why not): this node's computed here, a
    peer's fetched from its scrape address with the token.

    Over TLS (the logviewer's port takes plain HTTP from its own machine only), not verified: a
    node's edge certificate is self-signed unless ``tls.cert.file`` names one. What a man in the
    middle could take is the token, which reads metrics and nothing else.
    """
    if address in (config.node.address, config.connect_address()):
        return node_metrics_text(config, paths), ""
    from urllib.request import HTTPSHandler, Request, build_opener

    url = f"https://{scrape_address(address, config.logviewer.port)}/metrics"
    request = Request(url, headers={"Authorization": f"Bearer {scrape_token(config, paths)}"})
    # Whatever answers at a member's address gets no further than this: no redirect (urllib
    # would send the token along, even to plain HTTP), no page bigger than MAX_PAGE in memory.
    opener = build_opener(_NoRedirect, HTTPSHandler(context=ssl._create_unverified_context()))
    try:
        with opener.open(request, timeout=timeout) as resp:
            page = resp.read(MAX_PAGE + 1)
        if len(page) > MAX_PAGE:
            return None, f"{url}: the page is larger than {MAX_PAGE >> 20} MiB"
        return page.decode("utf-8"), ""
    except (OSError, UnicodeDecodeError) as exc:
        hint = " (is metrics.token the same on every node?)" if "401" in str(exc) else ""
        return None, f"{url}: {exc}{hint}"


def node_metrics_text(config: Config, paths: NodePaths) -> str:
    """The node's whole page: every source's series with ``node="<node_name>"`` added."""
    node = node_name(config)
    up: dict[str, int] = {}
    parts: list[str] = []
    if config.node.role == "serving" and config.metrics.enabled:
        code, text = get_text(model_server_url(config))
        up["model_server"] = int(code == 200)
        if code == 200:
            parts.append(text)
    admin = f"http://127.0.0.1:{config.envoy.admin_port}"
    code, text = get_text(f"{admin}/stats/prometheus?usedonly&filter={quote(ENVOY_FILTER)}")
    up["envoy"] = int(code == 200)
    if code == 200:
        parts.append(text)
        parts.append(_envoy_hosts(config))
    agent = _agent(config, paths)
    up["agent"] = int(bool(agent))
    parts.append(agent)
    parts.append(_processes(paths))
    parts.append(_family("appliance_metrics_source_up", "gauge",
                         "Whether a source of this page answered the scrape.",
                         [({"source": s}, v) for s, v in sorted(up.items())]))
    parts.append(_family("appliance_node_info", "gauge", "The node's role.",
                         [({"role": config.node.role}, 1)]))
    parts.append(_family("appliance_node_cpu_cores", "gauge",
                         "CPUs the node's processes may use: the fewest of the machine's, the affinity and the quota.",
                         [({}, usable_cpus())]))
    return "".join(with_label(part, "node", node) for part in parts if part)


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{)?")


def with_label(text: str, name: str, value: str) -> str:
    """``text`` (Prometheus text) with ``name="value"`` added first to every sample's labels."""
    pair = f'{name}="{_escape(value)}"'
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            out.append(line)
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue   # not a sample: drop it rather than break the page
        end = match.end()
        if match.group(2):
            rest = line[end:]
            out.append(f"{match.group(1)}{{{pair}{'' if rest.startswith('}') else ','}{rest}")
        else:
            out.append(f"{match.group(1)}{{{pair}}}{line[end:]}")
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str,
            samples: Iterable[tuple[dict[str, str], float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# ----------------------------------------------------------------------------- Envoy per host


def _envoy_hosts(config: Config) -> str:
    """Per upstream node (``upstream`` label: the serving node's address, whichever way Envoy
    reaches it) and cluster: Envoy's per-host request counters and whether it is ejected."""
    from .envoy_admin import read_cluster_view

    status, clusters = read_cluster_view(config.envoy.admin_port)
    if status != "ok":
        return ""
    families: dict[str, list[tuple[dict[str, str], float]]] = {s: [] for s in HOST_STATS}
    healthy, ejected = [], []
    for cluster in clusters:
        for host in cluster.hosts:
            labels = {"cluster": cluster.name, "upstream": host.node}
            for stat in HOST_STATS:
                families[stat].append((labels, host.stats.get(stat, 0)))
            healthy.append((labels, int(host.health == "HEALTHY")))
            ejected.append((labels, int("ejected (outlier)" in host.flags)))
    out = [_family(f"appliance_envoy_upstream_{stat}" + ("" if stat.endswith(("_active", "_total"))
                                                           else "_total"),
                   "gauge" if stat == "rq_active" else "counter",
                   f"Envoy's {stat} of one upstream node (per-host /clusters counter).",
                   samples) for stat, samples in families.items()]
    out.append(_family("appliance_envoy_upstream_healthy", "gauge",
                       "1 while Envoy routes to the upstream node.", healthy))
    out.append(_family("appliance_envoy_upstream_ejected", "gauge",
                       "1 while outlier detection ejects the upstream node.", ejected))
    return "".join(out)


# ----------------------------------------------------------------------------- agent


def _agent(config: Config, paths: NodePaths) -> str:
    """The agent's state file as gauges and counters; empty when the agent wrote none."""
    from .agent.state import read_state, state_path
    from .supervision import pid_alive

    try:
        doc = read_state(state_path(paths))
    except ValueError:
        doc = None
    if not doc:
        return ""
    now = time.time()
    last = doc.get("last_cycle") or {}
    totals = doc.get("totals") or {}
    alive = isinstance(doc.get("pid"), int) and pid_alive(doc["pid"])
    out = [_family("appliance_agent_up", "gauge", "1 while the agent that writes the state file runs.",
                   [({}, int(alive))])]
    if doc.get("last_ok_at"):
        out.append(_family("appliance_agent_last_success_timestamp_seconds", "gauge",
                           "When a sync cycle last completed without failing.",
                           [({}, float(doc["last_ok_at"]))]))
        out.append(_family("appliance_agent_sync_lag_seconds", "gauge",
                           "Seconds since the local store last matched the repository.",
                           [({}, round(now - float(doc["last_ok_at"]), 3))]))
    if last:
        out.append(_family("appliance_agent_last_cycle_seconds", "gauge",
                           "How long the last sync cycle took.", [({}, float(last.get("seconds", 0)))]))
        out.append(_family("appliance_agent_failures_in_a_row", "gauge",
                           "Sync cycles failed in a row (0: the last one worked).",
                           [({}, int(last.get("failures_in_a_row", 0)))]))
    out.append(_family("appliance_agent_cycles_total", "counter",
                       "Sync cycles since the agent started, by result.",
                       [({"result": r}, int(totals.get(r, 0))) for r in ("ok", "refused", "failed")]))
    out.append(_family("appliance_agent_sync_bytes_total", "counter",
                       "Bytes the agent downloaded since it started.", [({}, int(totals.get("bytes", 0)))]))
    pending = [({"model_name": name}, sum(1 for v in (m or {}).get("repository", [])
                                          if isinstance(v, dict) and v.get("status") == "pending"))
               for name, m in sorted((doc.get("models") or {}).items())]
    out.append(_family("appliance_agent_pending_versions", "gauge",
                       "Repository versions the agent has not installed yet.", pending))
    members = (doc.get("membership") or {}).get("members") or []
    out.append(_family("appliance_agent_members", "gauge", "Serving nodes Envoy balances over.",
                       [({}, len(members))]))
    return "".join(out)


# ----------------------------------------------------------------------------- processes


def _processes(paths: NodePaths) -> str:
    """CPU seconds and resident memory of every supervisord program with its descendants."""
    from .errors import SupervisorError
    from .render import supervisor_socket
    from .supervision import Supervisor

    try:
        programs = Supervisor(supervisor_socket(paths)).processes()
    except SupervisorError:
        return ""
    children = _children()
    up, cpu, rss = [], [], []
    for program in programs:
        labels = {"process": program.name}
        up.append((labels, int(program.state == "RUNNING")))
        if not program.pid:
            continue
        ticks, pages = 0, 0
        for pid in _tree(program.pid, children):
            stat = _stat(pid)
            if stat:
                ticks += int(stat[11]) + int(stat[12])    # utime, stime
                pages += int(stat[21])                    # rss
        cpu.append((labels, round(ticks / _CLK_TCK, 2)))
        rss.append((labels, pages * _PAGE))
    return "".join([
        _family("appliance_process_up", "gauge", "1 while supervisord has the program RUNNING.", up),
        _family("appliance_process_cpu_seconds_total", "counter",
                "CPU time (user + system) of the program and its child processes.", cpu),
        _family("appliance_process_resident_memory_bytes", "gauge",
                "Resident memory of the program and its child processes.", rss)])


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (field 3 on), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat:
                out.setdefault(int(stat[1]), []).append(int(entry))
    return out


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out
