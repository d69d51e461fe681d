"""The ``appliance`` command: validate, render, start, stop and inspect a node."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from .config import Config, NodePaths, effective_values, load_config, resolve_root
from .errors import ApplianceError, ConfigError
from . import keys_cli, metrics_cli, models_cli, releases, rollout_cli, shadow

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    parser.add_argument("--root", help="node root prefix (default $APPLIANCE_ROOT or /)")
    parser.add_argument("--config", type=Path,
                        help="config file (default <root>/etc/appliance/appliance.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_overrides(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set model.name=resnet --set http.port=8081")
        return p

    with_overrides(sub.add_parser("validate-config", help="check the config and print it"))
    render = with_overrides(sub.add_parser("render", help="render the node's files"))
    render.add_argument("--dry-run", action="store_true", help="print every file instead of writing")
    up = with_overrides(sub.add_parser("up", help="render, start every process, wait until serving"))
    up.add_argument("--foreground", action="store_true",
                    help="stay attached; Ctrl-C stops every process")
    up.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait for readiness (default: startup.timeout.seconds, 600)")
    reload = with_overrides(sub.add_parser(
        "reload", help="apply the edited config file to the running node (what `up` does on one)"))
    reload.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for readiness (default: startup.timeout.seconds, 600)")
    sub.add_parser("down", help="stop every process of the node")
    status = sub.add_parser("status", help="processes, their state and uptime; models and versions")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    builtin = sub.add_parser("builtin-models", help="build the built-in models into the local store")
    builtin.add_argument("--only", action="append", help="build only this model (repeatable)")
    models_cli.add_parsers(sub)   # models push|ls, sync --once, agent, objectstore
    keys_cli.add_parser(sub)      # keys add|revoke|rotate|ls
    releases.add_parsers(sub)     # releases, upgrade RELEASE, rollback
    metrics_cli.add_parsers(sub)  # capacity, prometheus-config
    rollout_cli.add_parsers(sub)  # rollout start|status|pause|resume|abort, fleet show|set|unset
    shadow.add_parsers(sub)       # shadow start|stop|report
    password = sub.add_parser("logviewer-password",
                              help="set a new random password of the log browser and print it once")
    password.add_argument("--if-absent", action="store_true",
                          help="only when no password is set yet (what `up` does on first start)")
    doctor = with_overrides(sub.add_parser("doctor", help="check the node; say what to fix"))
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    boot = sub.add_parser("bootstrap", help="write the config from cloud-init user data (boot time)")
    boot.add_argument("--from", dest="from_files", action="append", type=Path, default=[],
                      metavar="FILE", help="a YAML file of appliance keys to merge (repeatable)")
    boot.add_argument("--user-data", type=Path,
                      help="user data file (default <root>/var/lib/cloud/instance/user-data.txt)")
    boot.add_argument("--force", action="store_true", help="re-apply user data applied before")
    ca = sub.add_parser("cluster-ca", help="make the cluster CA (once per cluster) into a 0600 file "
                        "of the keys cluster.ca.cert and cluster.ca.key")
    ca.add_argument("file", type=Path, help="where to write it (must not exist)")
    cluster = sub.add_parser("cluster", help="serving nodes this node's Envoy balances over")
    cluster.add_argument("action", choices=["add-node", "remove-node", "members"])
    cluster.add_argument("addresses", nargs="*", metavar="ADDR", help="serving node IP address(es)")
    dev = with_overrides(sub.add_parser(
        "dev-cluster", help="N complete nodes on this machine, each on its own loopback address"))
    dev.add_argument("action", choices=["up", "down", "status", "add-node", "remove-node",
                                        "upgrade", "rollback"])
    dev.add_argument("name", nargs="?", help="remove-node: the node's name (e.g. serving-2); "
                     "upgrade: the release (one node at a time, no request lost)")
    dev.add_argument("--release", type=Path,
                     help="up: run every node from this release dir (<prefix>/opt/appliance/releases/<id>)")
    dev.add_argument("--dir", type=Path, default=Path(".dev-cluster"),
                     help="where the nodes' roots live (default ./.dev-cluster)")
    dev.add_argument("--serving", type=int, default=3, help="serving nodes (default 3)")
    dev.add_argument("--repo", type=int, default=1, help="repo nodes: 0 or 1 (default 1)")
    dev.add_argument("--models", default="saved_model_half_plus_two_mkl,resnet",
                     help="built-in models to serve (comma-separated)")
    dev.add_argument("--first-address", default="127.0.0.2", help="the first node's address")
    dev.add_argument("--admin-port-base", type=int, default=8001,
                     help="first of the 3 ports on 127.0.0.1 of the first node (Envoy admin, "
                     "model server gRPC and REST); each next node takes the next 3")
    return parser


def _config_file(args: argparse.Namespace, paths: NodePaths) -> Path | None:
    if args.config is None and paths.config_file.exists():
        return paths.config_file
    return args.config


def _config(args: argparse.Namespace, paths: NodePaths) -> Config:
    return load_config(_config_file(args, paths), getattr(args, "overrides", []))


def _node(args: argparse.Namespace, paths: NodePaths):  # -> Node (imported lazily)
    from .node import Node

    return Node(_config(args, paths), paths, _config_file(args, paths), args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = NodePaths(resolve_root(args.root))
    try:
        return COMMANDS[args.command](args, paths)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------ the commands
# Each takes the parsed arguments and the node's paths and returns the exit code. Modules are
# imported inside them, so a light command (`validate-config`) loads no server code.


def _validate_config(args: argparse.Namespace, paths: NodePaths) -> int:
    config = _config(args, paths)
    for key, value in effective_values(config).items():
        # Booleans as the YAML file spells them (true/false), not Python's True/False.
        print(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    print("config is valid")
    return 0


def _render(args: argparse.Namespace, paths: NodePaths) -> int:
    from . import render

    files = render.render_all(_config(args, paths), paths)
    if args.dry_run:
        for rendered in files:
            print(f"==> {rendered.path} (mode {rendered.mode:o})")
            print(rendered.content)
        return 0
    changed = _node(args, paths).render()
    for rendered in files:
        print(f"{'wrote' if rendered.path in changed else 'unchanged'} {rendered.path}")
    return 0


def _up(args: argparse.Namespace, paths: NodePaths) -> int:
    _node(args, paths).up(foreground=args.foreground, timeout=args.timeout)
    return 0


def _reload(args: argparse.Namespace, paths: NodePaths) -> int:
    from . import control
    from .node import Node

    Node.from_run_dir(paths)   # a node must have been started here
    control.apply(paths, args.overrides, config_file=args.config, timeout=args.timeout)
    return 0


def _down(args: argparse.Namespace, paths: NodePaths) -> int:
    from .node import Node

    Node.from_run_dir(paths).down()
    return 0


def _status(args: argparse.Namespace, paths: NodePaths) -> int:
    from .node import Node

    status = Node.from_run_dir(paths).status()
    print(json.dumps(status.as_dict(), indent=2) if args.json else status.text())
    return 0 if status.supervisord == "RUNNING" else 3


def _builtin_models(args: argparse.Namespace, paths: NodePaths) -> int:
    from .builtin_models import build_all

    build_all(paths.local(_config(args, paths).model.base_path), args.only)
    return 0


def _logviewer_password(args: argparse.Namespace, paths: NodePaths) -> int:
    from logviewer import credentials

    if args.if_absent:
        created = credentials.ensure_password(paths.etc)
        print(f"logviewer password (shown once): {created}" if created else
              f"a logviewer password is already set ({credentials.password_file(paths.etc)})")
    else:
        print(f"logviewer password (shown once): {credentials.set_password(paths.etc)}")
        print("every open logviewer session is logged out")
    return 0


def _doctor(args: argparse.Namespace, paths: NodePaths) -> int:
    from . import doctor

    findings = doctor.run_checks(paths, args.config, args.overrides)
    print(json.dumps([f.as_dict() for f in findings], indent=2) if args.json
          else doctor.report(findings, paths))
    return 0 if all(f.ok for f in findings) else 1


def _bootstrap(args: argparse.Namespace, paths: NodePaths) -> int:
    from .bootstrap import bootstrap

    print(bootstrap(paths, args.from_files, args.user_data, args.force).text())
    return 0


def _cluster(args: argparse.Namespace, paths: NodePaths) -> int:
    from .cluster import change_members, show_members

    if args.action == "members":
        print("\n".join(show_members(paths)))
        return 0
    if not args.addresses:
        raise ApplianceError(f"cluster {args.action} needs at least one ADDR")
    add = args.addresses if args.action == "add-node" else []
    remove = args.addresses if args.action == "remove-node" else []
    change_members(paths, args.config or paths.config_file, add, remove)
    return 0


def _cluster_ca(args: argparse.Namespace, paths: NodePaths) -> int:
    import yaml

    from modelserver.atomic import write_atomic
    from .pki import generate_ca

    if args.file.exists():
        raise ApplianceError(f"{args.file} exists: a cluster has one CA; remove the file to make "
                             "a new one (every node then needs the new keys)")
    cert, key = generate_ca()
    write_atomic(args.file, yaml.safe_dump({"cluster.ca.cert": cert, "cluster.ca.key": key}), 0o600)
    print(f"wrote the cluster CA to {args.file} (mode 600). Give every node of the cluster the "
          f"same keys: `appliance bootstrap --from {args.file}` on it, or its two keys in the "
          "user data's appliance: mapping. Each node then issues its own certificate at `up`.")
    return 0


def _dev_cluster(args: argparse.Namespace, paths: NodePaths) -> int:
    from . import devcluster
    from .config import parse_overrides

    if args.action == "up":
        overrides, problems = parse_overrides(args.overrides)
        if problems:
            raise ConfigError(problems)
        devcluster.up(args.dir, args.serving, args.repo, args.models.split(","), overrides,
                      args.first_address, args.admin_port_base, release=args.release)
    elif args.action == "down":
        devcluster.down(args.dir)
    elif args.action == "add-node":
        devcluster.add_serving(args.dir)
    elif args.action == "remove-node":
        if not args.name:
            raise ApplianceError("dev-cluster remove-node needs the node's name, e.g. serving-2")
        devcluster.remove_serving(args.dir, args.name)
    elif args.action == "upgrade":
        if not args.name:
            raise ApplianceError("dev-cluster upgrade needs a release, e.g. 0.1.0-84e0155aacab")
        devcluster.rolling_switch(args.dir, args.name)
    elif args.action == "rollback":
        devcluster.rolling_switch(args.dir, None)
    else:
        print(devcluster.status(args.dir))
    return 0


Command = Callable[[argparse.Namespace, NodePaths], int]

# Every subcommand of _parser() -> its handler; a new command is a parser and one line here.
COMMANDS: dict[str, Command] = {
    "validate-config": _validate_config,
    "render": _render,
    "up": _up,
    "reload": _reload,
    "down": _down,
    "status": _status,
    "builtin-models": _builtin_models,
    "logviewer-password": _logviewer_password,
    "doctor": _doctor,
    "bootstrap": _bootstrap,
    "cluster": _cluster,
    "cluster-ca": _cluster_ca,
    "dev-cluster": _dev_cluster,
    "keys": keys_cli.dispatch,
    **dict.fromkeys(models_cli.COMMANDS, models_cli.dispatch),
    **dict.fromkeys(releases.COMMANDS, releases.dispatch),
    **dict.fromkeys(metrics_cli.COMMANDS, metrics_cli.dispatch),
    **dict.fromkeys(rollout_cli.COMMANDS, rollout_cli.dispatch),
    **dict.fromkeys(shadow.COMMANDS, shadow.dispatch),
}


if __name__ == "__main__":
    sys.exit(main())
