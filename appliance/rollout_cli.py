"""``appliance rollout start|status|pause|resume|abort`` and ``appliance fleet show|set|unset``.

Both act on the cluster settings in the model repository (:mod:`appliance.fleet`), so they may
be typed on any node of the cluster; a rollout's controller is the agent of the node where
``rollout start`` was typed.
"""

from __future__ import annotations

import argparse
import json

from . import rollout as canary
from . import runconfig
from .config import Config, NodePaths, load_config, parse_overrides
from .errors import ApplianceError, ConfigError
from .fleet import Fleet

COMMANDS = ("fleet", "rollout")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="cluster-wide model settings: every node applies them "
                           "within about a second")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    fsub.add_parser("show", help="the cluster settings and which revision each node applied")
    change = fsub.add_parser("set", help="set a model's settings on every node")
    change.add_argument("model")
    change.add_argument("pairs", nargs="+", metavar="KEY=VALUE",
                        help="KEY relative to models.MODEL, e.g. batching.enabled=true")
    unset = fsub.add_parser("unset", help="drop cluster settings: each node's own apply again")
    unset.add_argument("model")
    unset.add_argument("keys", nargs="+", metavar="KEY")
    for parser in (change, unset):
        parser.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                            help="how long to wait for every serving node to apply it (default "
                            "%(default)s); exit 1 naming the nodes that did not")

    roll = sub.add_parser("rollout", help="canary: move a model's traffic to a new version in "
                          "steps, with automatic rollback")
    rsub = roll.add_subparsers(dest="rollout_command", required=True)
    start = rsub.add_parser("start", help="start a rollout, controlled by this node's agent")
    start.add_argument("model")
    start.add_argument("--version", type=int, required=True, help="the candidate version")
    start.add_argument("--from", dest="stable", type=int,
                       help="the current version (default: the one this node's model server "
                       "answers requests naming no version with)")
    g = canary.Guards()
    start.add_argument("--steps", default=",".join(f"{s:g}" for s in canary.DEFAULT_STEPS),
                       help="percentages, rising to 100 (default %(default)s)")
    start.add_argument("--min-seconds", type=float, default=g.min_seconds,
                       help="each step lasts at least this long (default %(default)s)")
    start.add_argument("--min-requests", type=int, default=g.min_requests,
                       help="... and the candidate serves at least this many requests in it; "
                       "guards judge once it has (default %(default)s)")
    start.add_argument("--max-error-increase", type=float, default=g.max_error_increase,
                       help="candidate error rate above the current's, 0.01 = 1 point (default %(default)s)")
    start.add_argument("--max-p99-ratio", type=float, default=g.max_p99_ratio,
                       help="candidate p99 latency over the current's (default %(default)s)")
    start.add_argument("--max-p50-ratio", type=float, default=g.max_p50_ratio,
                       help="candidate median latency over the current's (default %(default)s)")
    start.add_argument("--p99-floor-ms", type=float, default=g.p99_floor_ms,
                       help="a p99 or p50 within this of the current's always passes (default %(default)s)")
    start.add_argument("--min-agreement", type=float, default=g.min_agreement,
                       help="answer agreement a shadow run must have shown (default %(default)s)")
    status = rsub.add_parser("status", help="state, step, numbers and events of the last rollouts")
    status.add_argument("model", nargs="?")
    status.add_argument("--json", action="store_true")
    for name, text in (("pause", "hold the current step (the split stays)"),
                       ("resume", "continue a paused rollout (the step starts again)"),
                       ("abort", "roll every node back to the current version now")):
        rsub.add_parser(name, help=text).add_argument("model")


def dispatch(args: argparse.Namespace, paths: NodePaths) -> int:
    from .agent import load_agent_config

    config = load_agent_config(paths)
    fleet = Fleet.of_node(config, paths=paths)
    if args.command == "fleet":
        return _fleet(args, config, fleet, paths)
    action = args.rollout_command
    if action == "start":
        stable = args.stable if args.stable is not None else _serving_version(config, fleet, args.model,
                                                                               args.version)
        guards = canary.Guards(min_seconds=args.min_seconds, min_requests=args.min_requests,
                               max_error_increase=args.max_error_increase, max_p99_ratio=args.max_p99_ratio,
                               p99_floor_ms=args.p99_floor_ms, min_agreement=args.min_agreement,
                               max_p50_ratio=args.max_p50_ratio)
        steps = [float(s) for s in args.steps.split(",") if s.strip()]
        started = canary.start(fleet, config, args.model, args.version, stable, steps, guards)
        print("\n".join(canary.status_lines(started)))
        return 0
    if action == "status":
        return _status(fleet, args)
    done = {"pause": canary.pause, "resume": canary.resume, "abort": canary.abort}[action](fleet, args.model)
    print("\n".join(canary.status_lines(done)))
    return 0


def _serving_version(config: Config, fleet: Fleet, model: str, candidate: int) -> int:
    """The newest version this node serves that no rollout or shadow names (those are loaded
    on top of the version policy and are not what it serves)."""
    from .modelstatus import ModelServerClient

    if config.node.role != "serving":
        raise ApplianceError("this node serves no model: name the current version with --from")
    status = ModelServerClient.of_node(config).status(model)
    named = {candidate, *(fleet.read().model(model).get(k) for k in ("rollout.version", "shadow.version"))}
    available = [int(row["version"]) for row in status.versions
                 if row.get("state") == "AVAILABLE" and int(row["version"]) not in named]
    if not available:
        raise ApplianceError(f"this node's model server serves no version of {model} "
                             f"({status.error or status.code}): name the current one with --from")
    return max(available)


def _status(fleet: Fleet, args: argparse.Namespace) -> int:
    items = canary.history(fleet)
    if args.model:
        items = [r for r in items if r.model == args.model]
    if args.json:
        print(json.dumps([json.loads(r.to_json()) for r in items], indent=1))
        return 0
    if not items:
        print("no rollout was ever started" + (f" for {args.model}" if args.model else ""))
        return 0
    latest: dict[str, canary.Rollout] = {}
    for item in items:
        latest.setdefault(item.model, item)
    for item in latest.values():
        print("\n".join(canary.status_lines(item)))
    return 0


def _check_here(paths: NodePaths, model: str, values: dict[str, str]) -> None:
    """Refuse settings this node would refuse (ConfigError with their key paths) before any
    node sees them."""
    running = runconfig.read(paths)
    load_config(running.source_file(paths), [*running.overrides, *(f"models.{model}.{k}={v}" for k, v in values.items())])


def _fleet(args: argparse.Namespace, config: Config, fleet: Fleet, paths: NodePaths) -> int:
    action = args.fleet_command
    if action == "show":
        settings = fleet.read()
        print(f"revision {settings.revision}" + (f" ({settings.updated}: {settings.why})" if settings.why else ""))
        for name, entry in sorted(settings.models.items()):
            for key, value in sorted(entry.items()):
                print(f"  models.{name}.{key} = {value}")
        for node, doc in sorted(fleet.reports().items()):
            state = f"refused: {doc['error']}" if doc.get("error") else f"applied revision {doc.get('revision')}"
            print(f"node {node}: {state}")
        return 0
    if action == "set":
        values, problems = parse_overrides(args.pairs)
        if problems:
            raise ConfigError(problems)
        _check_here(paths, args.model, values)
        new = fleet.push(args.model, values, why=f"fleet set {' '.join(args.pairs)}")
    else:
        new = fleet.push(args.model, unset=args.keys, why=f"fleet unset {' '.join(args.keys)}")
    late = fleet.wait_applied(new.revision, config.cluster.members or [config.node.address], args.wait)
    print(f"revision {new.revision} written")
    for node, why in sorted(late.items()):
        print(f"node {node}: {why}")
    return 1 if late else 0
