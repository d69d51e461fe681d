"""Membership changes on a running node: ``appliance cluster add-node|remove-node|members``.

A user edits ``cluster.members`` in the config file, or lets these commands do it; either way
the node's EDS files are rewritten and Envoy swaps its endpoints without a restart. The change
is made on the node it runs on: run it on every node (or use ``cluster.dns``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Callable

import yaml

from . import control, membership, runconfig
from modelserver.atomic import write_atomic
from .config import Config, NodePaths, build, effective_values, yaml_problem
from .errors import ApplianceError, ConfigError
from .node import Node


def static_members(config: Config) -> list[str]:
    """The explicit member list; an empty one means "this node alone" on a serving node."""
    if config.cluster.members:
        return list(config.cluster.members)
    return [config.connect_address()] if config.node.role == "serving" and not config.cluster.dns else []


def _set_members_in_file(path: Path, members: list[str]) -> None:
    """Set ``cluster.members`` in the YAML file, in whichever spelling the file already uses."""
    try:
        tree: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        tree, mode = {}, 0o600
    except yaml.YAMLError as exc:      # the file holds secrets: no line of it in the message
        raise ConfigError([("(file)", f"not valid YAML: {yaml_problem(exc)}")], str(path)) from None
    if not isinstance(tree, dict):
        raise ConfigError([("(file)", "the top level must be a mapping of keys")], str(path))
    value = ",".join(members)
    if isinstance(tree.get("cluster"), dict):
        tree["cluster"]["members"] = value
    else:
        tree["cluster.members"] = value
    write_atomic(path, yaml.safe_dump(tree, sort_keys=False), mode=mode)


def change_members(paths: NodePaths, config_file: Path, add: list[str], remove: list[str],
                   progress: Callable[[str], None] = print) -> list[str]:
    """Add/remove serving nodes: persist in the config file, then apply it to the running node
    (Envoy swaps its endpoints, nothing restarts)."""
    for address in add + remove:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ApplianceError(f"{address!r} is not an IP address") from None
    Node.from_run_dir(paths)  # a node must have been started here
    running = runconfig.read(paths)
    current = running.reread(paths)  # the config file as it is now, plus the recorded overrides
    members = static_members(current)
    missing = [a for a in remove if a not in members]
    if missing:
        raise ApplianceError(f"not a member: {', '.join(missing)} (members: {', '.join(members)})")
    members = [a for a in members if a not in remove] + [a for a in add if a not in members]
    values = effective_values(current, mask_secrets=False)
    values["cluster.members"] = ",".join(members)
    build(values)  # validates the new list before anything changes
    _set_members_in_file(config_file, members)
    # `up --set cluster.members=...` would win over the file: keep the override in step.
    overrides = [o for o in running.overrides if o.split("=", 1)[0].strip() != "cluster.members"]
    if len(overrides) < len(running.overrides):
        overrides.append(f"cluster.members={values['cluster.members']}")
    control.apply(paths, overrides, progress, config_file=config_file)
    progress(f"members: {', '.join(membership.members(runconfig.read(paths).config)) or '(none)'}")
    return members


def show_members(paths: NodePaths) -> list[str]:
    Node.from_run_dir(paths)
    return membership.members(runconfig.read(paths).config)
