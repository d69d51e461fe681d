"""Every upstream host as this node's Envoy sees it, read from Envoy's admin on 127.0.0.1.

Only two admin endpoints are read (``/clusters?format=json`` and the outlier-detection
counters of ``/stats?format=json``), server side, and only the parsed fields are shown: the
admin interface itself is never proxied or linked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .localhttp import get_json as http_json
from .membership import CLUSTERS, PUBLIC_ROUTES


@dataclass
class Host:
    address: str   # what Envoy connects to: 127.0.0.1:<port> for this node, peer:cluster.port
    node: str      # the serving node's address (the endpoint's hostname, membership.py)
    health: str
    flags: list[str]
    stats: dict[str, int]
    weight: int


@dataclass
class Cluster:
    name: str
    hosts: list[Host] = field(default_factory=list)
    ejections_active: int = 0
    ejections_total: int = 0


def _int(value: object) -> int:
    try:
        return int(value)  # proto JSON renders uint64 as strings
    except (TypeError, ValueError):
        return 0


HEALTH_FLAGS = {
    "failed_active_health_check": "failed health check",
    "failed_outlier_check": "ejected (outlier)",
    "failed_eds_health": "EDS unhealthy",
    "pending_dynamic_removal": "pending removal",
    "pending_active_hc": "pending first health check",
    "excluded_via_immediate_hc_fail": "excluded (immediate HC fail)",
    "active_hc_timeout": "health check timed out",
}


def parse_clusters(body: dict) -> list[Cluster]:
    clusters = []
    for status in body.get("cluster_statuses", []) or []:
        cluster = Cluster(str(status.get("name", "")))
        for host in status.get("host_statuses", []) or []:
            sock = (host.get("address") or {}).get("socket_address") or {}
            address = f"{sock.get('address', '?')}:{sock.get('port_value', '?')}"
            health = host.get("health_status") or {}
            flags = [label for key, label in HEALTH_FLAGS.items() if health.get(key)]
            eds = str(health.get("eds_health_status", "HEALTHY"))
            state = "HEALTHY" if not flags and eds in ("HEALTHY", "UNKNOWN") else "UNHEALTHY"
            stats = {s.get("name", ""): _int(s.get("value", 0)) for s in host.get("stats", []) or []}
            node = str(host.get("hostname") or sock.get("address", "?"))
            cluster.hosts.append(Host(address, node, state, flags, stats, _int(host.get("weight", 1))))
        clusters.append(cluster)
    return clusters


def read_cluster_view(admin_port: int) -> tuple[str, list[Cluster]]:
    """("ok" or why not, the model server clusters) from the local Envoy admin.

    Only the clusters of serving nodes (membership.CLUSTERS): a repo node's Envoy also has the
    ``objectstore`` cluster, its local store, which is no member of anything.
    """
    base = f"http://127.0.0.1:{admin_port}"
    code, body = http_json(f"{base}/clusters?format=json")
    if code == 0:
        return "Envoy's admin does not answer (is envoy running?)", []
    if code != 200 or not isinstance(body, dict):
        return f"Envoy's admin answered HTTP {code}", []
    clusters = [c for c in parse_clusters(body) if c.name in CLUSTERS]
    code, stats = http_json(f"{base}/stats?format=json&filter=outlier_detection%5C.ejections_")
    if code == 200 and isinstance(stats, dict):
        values = {s.get("name", ""): _int(s.get("value", 0)) for s in stats.get("stats", []) or []
                  if "value" in s}
        for cluster in clusters:
            prefix = f"cluster.{cluster.name}.outlier_detection."
            cluster.ejections_active = values.get(prefix + "ejections_active", 0)
            cluster.ejections_total = values.get(prefix + "ejections_enforced_total", 0)
    return "ok", clusters


def unhealthy_of(admin_port: int, addresses: list[str]) -> list[str]:
    """Which of ``addresses`` this Envoy does not yet route to in every model server cluster.

    An address counts as in rotation once each of those clusters lists it HEALTHY (a repo
    node's ``objectstore`` cluster is not one of them); a node whose Envoy admin does not
    answer has every address still pending.
    """
    _, clusters = read_cluster_view(admin_port)   # the model server clusters only
    if not clusters:
        return list(addresses)
    healthy = [{h.node for h in c.hosts if h.health == "HEALTHY"}
               for c in clusters]
    return [a for a in addresses if not all(a in seen for seen in healthy)]


def xds_updates(admin_port: int) -> dict[str, int]:
    """How many listener (``lds``), public route (``rds``) and cluster (``cds``) files Envoy has
    taken and refused since it started (``{"lds.update_success": 3, "lds.update_rejected": 0, ...}``;
    a refusal: a port it cannot bind, ...); {} when its admin does not answer. The routes' counters
    sit under the connection manager that first asked for them (``http.rest.rds.public.*``)."""
    code, stats = http_json(f"http://127.0.0.1:{admin_port}/stats?format=json&filter="
                            "%5E(listener_manager%5C.lds%7Ccluster_manager%5C.cds%7Chttp%5C.%5B%5E.%5D%2B%5C.rds%5C."
                            f"{PUBLIC_ROUTES}" "%29%5C.update_(success%7Crejected)%24")
    if code != 200 or not isinstance(stats, dict):
        return {}
    counts: dict[str, int] = {}
    for s in stats.get("stats", []) or []:
        parts = str(s.get("name", "")).split(".")
        if "value" in s and len(parts) >= 3:
            key = f"{'rds' if 'rds' in parts else parts[1]}.{parts[-1]}"
            counts[key] = counts.get(key, 0) + _int(s.get("value", 0))
    return counts


def xds_rejected(counts: dict[str, int]) -> int:
    """How many listener and cluster files Envoy had refused, of :func:`xds_updates`' counts."""
    return sum(count for name, count in counts.items() if name.endswith("rejected"))


def xds_taken(before: dict[str, int], now: dict[str, int], kinds: set[str]) -> bool:
    """Envoy has loaded (or refused) a new file of each of ``kinds`` ("lds", "rds", "cds") since ``before``."""
    def seen(counts: dict[str, int], kind: str) -> int:
        return counts.get(f"{kind}.update_success", 0) + counts.get(f"{kind}.update_rejected", 0)
    return all(seen(now, kind) > seen(before, kind) for kind in kinds)
