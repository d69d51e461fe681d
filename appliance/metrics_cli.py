"""``appliance capacity`` and ``appliance prometheus-config``: the node's metrics put to use.

Both read the running config (what the node serves with), with ``--set`` overrides on top for
this one call (e.g. a stricter ``capacity.latency.objective.ms`` to see what it would take).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from . import runconfig
from .config import Config, NodePaths, build, parse_overrides
from .errors import ConfigError

COMMANDS = ("capacity", "prometheus-config")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    capacity = sub.add_parser("capacity", help="serving nodes' load, headroom at the latency "
                              "objective, and how many nodes to add or remove (calls capacity.hook)")
    capacity.add_argument("--json", action="store_true", help="machine-readable output")
    capacity.add_argument("--no-hook", action="store_true", help="do not call capacity.hook")
    prometheus = sub.add_parser("prometheus-config", help="write a Prometheus scrape config for "
                                "the cluster (membership as file_sd, kept up to date by the agent)")
    prometheus.add_argument("--dir", type=Path, required=True,
                            help="where to write prometheus.yml and its token file")
    prometheus.add_argument("--interval", default="15s", help="scrape interval (default 15s)")
    prometheus.add_argument("--ca-file", type=Path, help="CA of the nodes' edge certificates "
                            "(tls.cert.file); without it Prometheus does not verify them")
    for parser in (capacity, prometheus):
        parser.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="KEY=VALUE", help="override a config key for this call")


def _config(args: argparse.Namespace, paths: NodePaths) -> Config:
    values, problems = parse_overrides(args.overrides)
    if problems:
        raise ConfigError(problems)
    return build({**runconfig.read(paths).values, **values})


def dispatch(args: argparse.Namespace, paths: NodePaths) -> int:
    config = _config(args, paths)
    if args.command == "prometheus-config":
        from .membership import members
        from .scrapeconfig import write_config

        path = write_config(config, paths, members(config), args.dir, args.interval, args.ca_file)
        print(f"wrote {path}; run: prometheus --config.file={path}")
        if not config.logviewer.enabled:
            print("note: logviewer.enabled is false on this node, so it has no scrape address")
        return 0
    from .capacity import measure, recommend, report, run_hook

    recommendation = recommend(config, measure(config, paths))
    print(json.dumps(asdict(recommendation), indent=1) if args.json else report(recommendation))
    if not args.no_hook:
        run_hook(config, recommendation)
    return 0
