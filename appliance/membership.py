"""Cluster membership -> Envoy endpoints, through file-based EDS.

Every node's Envoy balances over the model servers of all serving nodes. The set of serving
nodes (``cluster.members``, plus whatever ``cluster.dns`` resolves to) is written as one EDS
file per upstream cluster; Envoy watches those files and swaps the endpoints in place, so a
node joining or leaving never restarts Envoy or drops an in-flight request. Envoy only notices
a *rename* into place (ref/envoy.md §9), which is exactly what :func:`write_atomic` does, and
unchanged bytes are not rewritten.

Two kinds of endpoint, told apart by endpoint metadata (``transport_socket_matches`` in
envoy/cds.yaml.j2): this node's own model server is reached on 127.0.0.1 in plain text (no
extra hop, no TLS on loopback); a peer is reached on its ``internode`` listener
(``cluster.port``) over mutual TLS, and that listener hands the request to the peer's own model
server. Every endpoint carries the node's address as its ``hostname``: that is how the admin
view (:mod:`appliance.envoy_admin`) and the access log (``%UPSTREAM_HOST_NAME%``) name a node.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import yaml

from modelserver.atomic import write_atomic
from .config import Config, NodePaths

log = logging.getLogger(__name__)

# Upstream cluster name -> which model server port it reaches.
CLUSTERS = {"model_server_rest": "rest", "model_server_grpc": "grpc"}
#: Endpoint metadata that selects the inter-node mTLS transport socket (envoy/cds.yaml.j2).
INTERNODE_MATCH = {"envoy.transport_socket_match": {"internode": True}}
#: Where a node's model server listens: loopback only, reached through the node's own Envoy.
MODEL_SERVER_HOST = "127.0.0.1"
#: The one route configuration of every public listener (envoy/rds.yaml.j2): one copy in Envoy,
#: so the node's token bucket on it is one bucket for REST and gRPC, plain and TLS.
PUBLIC_ROUTES = "public"


def xds_dir(paths: NodePaths) -> Path:
    return paths.run / "xds"


def eds_path(paths: NodePaths, cluster: str) -> Path:
    return xds_dir(paths) / f"eds_{cluster}.yaml"


def resolve(name: str) -> list[str]:
    """Every IPv4/IPv6 address ``name`` resolves to (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        log.warning("cluster.dns %s does not resolve: %s", name, exc)
        return []
    return sorted({info[4][0] for info in infos})


def members(config: Config) -> list[str]:
    """The serving nodes' addresses: static members plus DNS, or this node alone."""
    found = list(config.cluster.members)
    if config.cluster.dns:
        found += [addr for addr in resolve(config.cluster.dns) if addr not in found]
    if not found and not config.cluster.dns and config.node.role == "serving":
        found = [config.connect_address()]
    return found


def is_self(config: Config, address: str) -> bool:
    """``address`` is this serving node: its own model server is then reached on loopback."""
    if config.node.role != "serving":
        return False
    if address == config.node.address:
        return True
    if config.node.address not in ("0.0.0.0", "::"):
        return False
    try:   # bound to every address: the member is this machine if one of its addresses is it
        with socket.socket(socket.AF_INET6 if ipaddress.ip_address(address).version == 6
                           else socket.AF_INET) as probe:
            probe.bind((address, 0))
        return True
    except (OSError, ValueError):
        return False


def _endpoint(config: Config, address: str) -> dict:
    if is_self(config, address):
        # REST and gRPC alike over HTTP/2 to the gRPC port, which answers REST too (issue 15).
        port = config.serving.grpc_port
        # gRPC has no health service in stock TF Serving: health-check the REST port.
        return {"endpoint": {
            "address": {"socket_address": {"address": MODEL_SERVER_HOST, "port_value": port}},
            "hostname": address,
            "health_check_config": {"port_value": config.serving.rest_port}}}
    # The peer's internode listener routes gRPC to its gRPC port and the rest (health checks
    # included) to its REST port: one port for both clusters.
    return {"endpoint": {
                "address": {"socket_address": {"address": address, "port_value": config.cluster.port}},
                "hostname": address},
            "metadata": {"filter_metadata": INTERNODE_MATCH}}


def peers_left_out(config: Config, addresses: list[str] | None = None) -> list[str]:
    """Members this node does not send to: every peer, when it has no cluster CA (inter-node
    traffic is mutual TLS or nothing). Such a node serves through its own model server only."""
    if config.cluster.ca_cert:
        return []
    return [a for a in (members(config) if addresses is None else addresses) if not is_self(config, a)]


def no_ca_warning(config: Config, left_out: list[str]) -> str:
    return (f"no cluster CA (cluster.ca.cert, cluster.ca.key): this node sends no request to its peers "
            f"({', '.join(left_out)}) and serves through its own model server only; give every node "
            "the same cluster CA (`appliance cluster-ca FILE` makes one) and the agent applies it")


def eds_documents(config: Config, addresses: list[str]) -> dict[str, str]:
    """The EDS DiscoveryResponse of each upstream cluster, as YAML text."""
    docs = {}
    left_out = peers_left_out(config, addresses)
    for cluster in CLUSTERS:   # the same endpoints: REST and gRPC both go to the gRPC port
        endpoints = [_endpoint(config, addr) for addr in addresses if addr not in left_out]
        doc = {
            "version_info": ",".join(addresses) or "none",
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
            }],
        }
        header = "# Written by the appliance from cluster.members / cluster.dns -- do not edit.\n"
        docs[cluster] = header + yaml.safe_dump(doc, sort_keys=False)
    return docs


def write_endpoints(config: Config, paths: NodePaths, addresses: list[str] | None = None) -> list[Path]:
    """Install the EDS files for the current membership; return those that changed."""
    addresses = members(config) if addresses is None else addresses
    xds_dir(paths).mkdir(parents=True, exist_ok=True)
    changed = []
    for cluster, text in eds_documents(config, addresses).items():
        path = eds_path(paths, cluster)
        if write_atomic(path, text):
            changed.append(path)
    if changed:
        log.info("serving members: %s", ", ".join(addresses) or "(none)")
    return changed


class MembershipWatch:
    """Follows the running config and ``cluster.dns``; re-points Envoy.

    The agent's membership thread calls :meth:`refresh` as soon as the running config changed
    (an ``up``, a ``reload``, the agent applying an edited config file) and every sync interval,
    for DNS, and the EDS files are swapped.
    """

    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths
        self.last: list[str] | None = None

    def refresh(self) -> list[str]:
        from . import runconfig

        config = runconfig.read(self.paths).config
        addresses = members(config)
        write_endpoints(config, self.paths, addresses)
        if addresses != self.last:
            log.info("cluster members: %s", ", ".join(addresses) or "(none)")
            if config.rate.cluster and self.last is not None and len(addresses) != len(self.last):
                _share_cluster_rate(config, self.paths, addresses)
            self.last = addresses
        return addresses


def _share_cluster_rate(config: Config, paths: NodePaths, addresses: list[str]) -> None:
    """rate.cluster is divided over the members: a DNS change of their number re-renders the
    listeners' bucket (a cluster.members edit re-renders everything anyway)."""
    from . import render

    envoy = [f for f in render.render_all(config, paths, addresses) if f.path.name in render.ENVOY_FILES]
    render.install(envoy, paths)
