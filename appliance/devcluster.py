"""A whole cluster on one machine, for development and tests: ``appliance dev-cluster up|down|status``.

Each node is complete (its own root dir, config file, supervisord, Envoy, model server or
object store) and listens on its own loopback address (127.0.0.2, 127.0.0.3, ...), so every
node uses the same public ports, as on real machines; only what always binds 127.0.0.1 --
Envoy's admin and the model server -- gets its own ports per node (:data:`LOOPBACK_PORTS`). With a repo node, the models live in its object store and
the serving nodes' agents sync them; without one, each serving node gets them on local disk.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import yaml

from modelserver.atomic import write_atomic
from .envoy_admin import read_cluster_view, unhealthy_of
from .errors import ApplianceError
from .config import NodePaths
from .releases import Releases, release_env, switch_node

STATE = "dev-cluster.json"
#: The dev cluster's CA (cluster.ca.cert / .key), made once: every node, later ones included,
#: gets the same, as a real cluster's nodes get it in their config or user data.
CLUSTER_CA = "cluster-ca.yaml"
# After a node left every Envoy: requests already sent to it finish on the connections Envoy
# drains (a predict takes milliseconds here); this is their time before the node stops.
DRAIN_SECONDS = 1.0
CLI = [sys.executable, "-m", "appliance.cli"]
#: 127.0.0.1 ports each node takes from the admin port base: Envoy admin, model server gRPC, REST.
LOOPBACK_PORTS = 3


@dataclass
class DevNode:
    name: str
    role: str
    address: str
    root: str
    admin_port: int

    def loopback_ports(self) -> dict[str, int]:
        """The node's own ports on 127.0.0.1 (config keys): the next ones after its admin port."""
        return {"envoy.admin.port": self.admin_port, "serving.grpc.port": self.admin_port + 1,
                "serving.rest.port": self.admin_port + 2}


def _cli(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The node's own ``appliance``: its current release when it runs one, else this checkout's."""
    releases = Releases(root)
    if releases.current() is None:
        return subprocess.run(CLI + ["--root", str(root), *args], capture_output=True, text=True,
                              timeout=timeout)
    return subprocess.run([str(releases.appliance()), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=timeout, env=release_env(), cwd="/")


def _use_release(root: Path, release: Path) -> None:
    """Make the node run ``release`` (a release dir of install-node.sh): the nodes of a dev
    cluster share one releases dir, each with its own ``current`` and ``previous``."""
    releases = Releases(root)
    releases.home.mkdir(parents=True, exist_ok=True)
    if not releases.dir.is_symlink():
        releases.dir.symlink_to(release.resolve().parent)
    releases.switch(release.name)


def _check(result: subprocess.CompletedProcess, what: str) -> str:
    if result.returncode != 0:
        raise ApplianceError(f"{what} failed (exit {result.returncode}):\n"
                             f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


def plan(base: Path, serving: int, repo: int, first: str, admin_base: int) -> list[DevNode]:
    """Names, addresses and admin ports: serving nodes first, then the repo node(s)."""
    start = ipaddress.ip_address(first)
    nodes = []
    for index in range(serving + repo):
        role = "serving" if index < serving else "repo"
        name = f"serving-{index + 1}" if role == "serving" else f"repo-{index - serving + 1}"
        nodes.append(DevNode(name, role, str(start + index), str(base / name),
                             admin_base + LOOPBACK_PORTS * index))
    return nodes


def _write_config(node: DevNode, values: dict[str, object]) -> None:
    path = Path(node.root) / "etc/appliance/appliance.yaml"
    header = f"# dev-cluster node {node.name}: written by `appliance dev-cluster up`.\n"
    write_atomic(path, header + yaml.safe_dump(values, sort_keys=False), mode=0o600)


def up(base: Path, serving: int, repo: int, models: list[str], overrides: dict[str, str],
       first: str = "127.0.0.2", admin_base: int = 8001,
       progress: Callable[[str], None] = print, release: Path | None = None) -> list[DevNode]:
    """Start every node (repo first, so serving nodes can sync from it); idempotent.

    With ``release`` (a dir of ``<prefix>/opt/appliance/releases``) every node runs that release
    of the code instead of this checkout's, and can be upgraded and rolled back.
    """
    if serving < 1 or repo not in (0, 1):
        raise ApplianceError("a dev cluster has 1 or more serving nodes and 0 or 1 repo node")
    base = base.resolve()
    nodes = plan(base, serving, repo, first, admin_base)
    for node in nodes if release else []:
        _use_release(Path(node.root), release)
    write_atomic(base / STATE, json.dumps([asdict(n) for n in nodes], indent=2))
    members = ",".join(n.address for n in nodes if n.role == "serving")
    # One scrape token for every node: one Prometheus job (and the dashboard) reads them all.
    common: dict[str, object] = {"cluster.members": members, "model.name": ",".join(models),
                                 "metrics.token": _cluster_token(base), **cluster_ca(base),
                                 **overrides}
    builtin = base / "builtin-models"
    from .builtin_models import build_all

    build_all(builtin, models, progress=progress)
    s3: dict[str, object] = {}
    for node in (n for n in nodes if n.role == "repo"):
        _write_config(node, {**common, "node.role": "repo", "node.address": node.address,
                             **node.loopback_ports()})
        progress(f"{node.name} ({node.address}): starting the object store")
        _check(_cli(Path(node.root), "up"), f"starting {node.name}")
        creds = yaml.safe_load((Path(node.root) / "etc/appliance/objectstore.credentials").read_text())
        port = overrides.get("repo.port", 8333)
        s3 = {"s3.type": "seaweedfs", "s3.endpoint": f"http://{node.address}:{port}",
              "model.base.path": "s3://models", **creds}
    for node in (n for n in nodes if n.role == "serving"):
        _write_config(node, {**common, **s3, "node.role": "serving", "node.address": node.address,
                             **node.loopback_ports()})
        if not s3:
            store = Path(node.root) / "data/models"
            for name in models:
                if not (store / name).exists():
                    shutil.copytree(builtin / name, store / name, copy_function=_link_or_copy)
    if s3:
        _push_missing(next(n for n in nodes if n.role == "serving"), builtin, models)
    for node in (n for n in nodes if n.role == "serving"):
        progress(f"{node.name} ({node.address}): starting")
        _check(_cli(Path(node.root), "up"), f"starting {node.name}")
    wait_in_rotation(nodes, [n.address for n in nodes if n.role == "serving"], progress)
    progress(f"dev cluster up: {len(nodes)} nodes under {base}; REST on any of "
             + ", ".join(f"http://{n.address}:{overrides.get('http.port', 8080)}" for n in nodes))
    return nodes


def cluster_ca(base: Path) -> dict[str, str]:
    """The dev cluster's CA keys, generated at its first ``up`` (0600, next to the nodes)."""
    from .pki import generate_ca

    path = base / CLUSTER_CA
    if not path.exists():
        cert, key = generate_ca()
        write_atomic(path, yaml.safe_dump({"cluster.ca.cert": cert, "cluster.ca.key": key}), mode=0o600)
    return yaml.safe_load(path.read_text())


def _cluster_token(base: Path) -> str:
    """The dev cluster's metrics token, generated once (0600) so a second ``up`` keeps it."""
    path = base / "metrics.token"
    if not path.exists():
        write_atomic(path, secrets.token_hex(32) + "\n", mode=0o600)
    return path.read_text(encoding="ascii").strip()


def _push_missing(node: DevNode, builtin: Path, models: list[str]) -> None:
    """Upload the built-in models to the repo node's bucket, unless they are there already."""
    from .config import load_config
    from .models_cli import push
    from .sources import open_source

    root = Path(node.root)
    paths = NodePaths(root)
    config = load_config(paths.config_file)
    source = open_source(config, paths)
    for name in models:
        if not source.versions(name):
            push(config, paths, builtin / name, name, None)


def add_serving(base: Path, progress: Callable[[str], None] = print) -> DevNode:
    """Start one more serving node (next free address), then add it on every node.

    A node that is down still gets the new member in its config (it applies it when it starts);
    it is named in the output and not waited for, and the command still succeeds.
    """
    nodes = load(base)
    template = next(n for n in nodes if n.role == "serving")
    last = max(nodes, key=lambda n: ipaddress.ip_address(n.address))
    number = sum(n.role == "serving" for n in nodes) + 1
    while any(n.name == f"serving-{number}" for n in nodes):
        number += 1
    node = DevNode(f"serving-{number}", "serving", str(ipaddress.ip_address(last.address) + 1),
                   str(Path(base).resolve() / f"serving-{number}"),
                   max(n.admin_port for n in nodes) + LOOPBACK_PORTS)
    values = yaml.safe_load((Path(template.root) / "etc/appliance/appliance.yaml").read_text())
    members = [n.address for n in nodes if n.role == "serving"] + [node.address]
    values.update({"node.address": node.address, **node.loopback_ports(),
                   "cluster.members": ",".join(members)})
    _write_config(node, values)
    running = Releases(Path(template.root))
    if running.current():
        _use_release(Path(node.root), running.dir / running.current())
    if values.get("s3.type", "none") == "none":
        store = Path(node.root) / "data/models"
        for name in str(values["model.name"]).split(","):
            shutil.copytree(Path(template.root) / "data/models" / name, store / name,
                            copy_function=_link_or_copy)
    progress(f"{node.name} ({node.address}): starting")
    try:
        _check(_cli(Path(node.root), "up"), f"starting {node.name}")
    except ApplianceError:
        # Not in the cluster's state yet, so `down` would never stop what did start.
        _cli(Path(node.root), "down")
        raise
    nodes.append(node)
    write_atomic(Path(base).resolve() / STATE, json.dumps([asdict(n) for n in nodes], indent=2))
    live = _live_nodes([n for n in nodes if n is not node], progress)
    _change_members([n for n in nodes if n is not node], "add-node", node.address, live, progress)
    wait_in_rotation(live + [node], [node.address], progress)
    progress(f"{node.name} joined: every running node balances over it")
    return node


def remove_serving(base: Path, name: str, progress: Callable[[str], None] = print) -> None:
    """Take a serving node out of every node's Envoy first, then stop it.

    A node that is down still loses the member in its config; it is named in the output and
    not waited for, and the command still succeeds.
    """
    nodes = load(base)
    node = next((n for n in nodes if n.name == name and n.role == "serving"), None)
    if node is None:
        raise ApplianceError(f"no serving node {name} in the dev cluster")
    others = [n for n in nodes if n is not node]
    _take_out(node, others, _live_nodes(others, progress), progress)
    _check(_cli(Path(node.root), "down", timeout=300), f"stopping {name}")
    nodes.remove(node)
    write_atomic(Path(base).resolve() / STATE, json.dumps([asdict(n) for n in nodes], indent=2))
    progress(f"{name} left the cluster and stopped")


def rolling_switch(base: Path, release: str | None, names: list[str] | None = None,
                   progress: Callable[[str], None] = print) -> None:
    """Upgrade (or, with ``release`` None, roll back) the nodes one at a time, serving nodes
    first, then the repo node, without a failed request through any other node's Envoy.

    A serving node is drained first: taken out of every other node's Envoy (its in-flight
    requests finish on connections Envoy keeps until they close), then stopped, switched and
    started from the new release, and put back in once it serves; the next node waits for that.
    A node whose turn would leave no other healthy serving node stops the upgrade, untouched.
    """
    nodes = load(base)
    order = [n for n in nodes if n.role == "serving"] + [n for n in nodes if n.role != "serving"]
    for node in order if names is None else [n for n in order if n.name in names]:
        releases = Releases(Path(node.root))
        target = release or releases.previous()
        if target is None:
            raise ApplianceError(f"{node.name} has no previous release to roll back to")
        if target == releases.current():
            progress(f"{node.name}: already on {target}")
            continue
        others = [n for n in nodes if n is not node]
        live = _live_nodes(others, progress)
        started = time.monotonic()
        if node.role == "serving":
            _check_not_last(node, nodes, live)
            _take_out(node, others, live, progress)
            time.sleep(DRAIN_SECONDS)
        switching = time.monotonic()
        progress(f"{node.name} ({node.address}): {releases.current()} -> {target}")
        switch_node(NodePaths(Path(node.root)), target, progress)
        switched = time.monotonic()
        if node.role == "serving":
            _change_members(others, "add-node", node.address, live, progress)
            wait_in_rotation(live + [node], [node.address], progress)
        progress(f"{node.name} serves on {target} (out {switching - started:.1f}s, switch "
                 f"{switched - switching:.1f}s, back in {time.monotonic() - switched:.1f}s)")


def _take_out(node: DevNode, others: list[DevNode], live: list[DevNode],
              progress: Callable[[str], None]) -> None:
    """Remove ``node`` from every other node's members; wait until no running Envoy lists it."""
    _change_members(others, "remove-node", node.address, live, progress)
    for other in live:
        _wait_gone_from_envoy(other, node.address)


def _check_not_last(node: DevNode, nodes: list[DevNode], live: list[DevNode]) -> None:
    """Refuse to take ``node`` out when no other serving node is healthy in a running Envoy."""
    others = [n.address for n in nodes if n.role == "serving" and n is not node]
    healthy = set(others) - set(unhealthy_of(live[0].admin_port, others)) if live else set()
    if not healthy:
        raise ApplianceError(f"{node.name} is the last healthy serving node: not taken out")


def _live_nodes(nodes: list[DevNode], progress: Callable[[str], None]) -> list[DevNode]:
    """The nodes whose Envoy answers; each other one is named as down."""
    live = []
    for node in nodes:
        problem, _ = read_cluster_view(node.admin_port)
        if problem == "ok":
            live.append(node)
        else:
            progress(f"{node.name} ({node.address}) is down: {problem}; it is not waited for")
    return live


def _change_members(nodes: list[DevNode], action: str, address: str, live: list[DevNode],
                    progress: Callable[[str], None]) -> None:
    """``cluster add-node|remove-node`` on every one of ``nodes`` at once (each is its own node:
    one after another only adds up their apply times); a node that is down only has its config
    file changed, and a failure there is reported, not raised."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        results = list(pool.map(lambda n: _cli(Path(n.root), "cluster", action, address), nodes))
    for node, result in zip(nodes, results):
        if node in live:
            _check(result, f"{action} on {node.name}")
        elif result.returncode != 0:
            progress(f"{node.name} is down and its config was not changed ({action} {address}): "
                     f"{(result.stderr or result.stdout).strip()[-500:]}")


def wait_in_rotation(nodes: list[DevNode], addresses: list[str],
                     progress: Callable[[str], None] = print, timeout: float = 60.0) -> None:
    """Wait until every node's Envoy routes to each of ``addresses`` (REST and gRPC).

    A node's own `up` only waits for itself; the others' Envoys health-check a newcomer once a
    second, so "the cluster is up" means every Envoy has seen every serving node pass.
    """
    deadline = time.monotonic() + timeout
    pending = {n.name: addresses for n in nodes}
    shown = False
    while True:
        pending = {n.name: unhealthy_of(n.admin_port, pending[n.name]) for n in nodes
                   if pending.get(n.name)}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ApplianceError("after {:.0f}s not every Envoy routes to every serving node: {}"
                                 .format(timeout, "; ".join(f"{name} not to {', '.join(a)}"
                                                            for name, a in pending.items())))
        if not shown:
            progress("waiting until every node's Envoy has health-checked every serving node")
            shown = True
        time.sleep(0.2)


def _wait_gone_from_envoy(node: DevNode, address: str, timeout: float = 30.0) -> None:
    """Envoy applies an EDS rename within a moment; wait until it no longer lists ``address``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, clusters = read_cluster_view(node.admin_port)
        if clusters and not any(h.node == address for c in clusters for h in c.hosts):
            return
        time.sleep(0.1)
    raise ApplianceError(f"{node.name}'s Envoy still lists {address} after {timeout:.0f}s")


def _link_or_copy(src: str, dst: str) -> None:
    """Hard links: the models are read-only data and this keeps N copies cheap."""
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def load(base: Path) -> list[DevNode]:
    try:
        return [DevNode(**n) for n in json.loads((base.resolve() / STATE).read_text())]
    except FileNotFoundError:
        raise ApplianceError(f"no dev cluster under {base} ({STATE} is missing)") from None


def down(base: Path, progress: Callable[[str], None] = print) -> None:
    """Stop every node as a real cluster shuts down: the serving nodes (together), then the
    repo node, which they sync from until they stop."""
    nodes = load(base)
    for group in ([n for n in nodes if n.role == "serving"], [n for n in nodes if n.role != "serving"]):
        with ThreadPoolExecutor(max(1, len(group))) as pool:
            results = list(pool.map(lambda n: _cli(Path(n.root), "down", timeout=300), group))
        for node, result in zip(group, results):
            progress(f"{node.name}: {result.stdout.strip() or result.stderr.strip()}")


def status(base: Path) -> str:
    lines = []
    for node in load(base):
        result = _cli(Path(node.root), "status", timeout=60)
        lines.append(f"== {node.name} ({node.role}, {node.address}, admin 127.0.0.1:{node.admin_port})")
        lines.append(result.stdout.rstrip() or result.stderr.rstrip())
    return "\n".join(lines)
