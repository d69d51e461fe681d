"""Membership changes on a running node: ``appliance cluster add-node|remove-node|members``.

A user edits ``cluster.members`` in the config file, or lets these commands do it; either way
the node's EDS files are rewritten and Envoy swaps its endpoints without a restart. The change
is made on the node it runs on: run it on every node (or use ``cluster.dns``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Callable

from . import control, membership, runconfig
from .configedit import read_document, replace_checked
from .config import Config, NodePaths, build, effective_values
from .errors import ApplianceError
from .node import Node


def static_members(config: Config) -> list[str]:
    """The explicit member list; an empty one means "this node alone" on a serving node."""
    if config.cluster.members:
        return list(config.cluster.members)
    return [config.connect_address()] if config.node.role == "serving" and not config.cluster.dns else []


def _set_members_in_file(path: Path, members: list[str]) -> None:
    """Set ``cluster.members`` in the YAML file, in whichever spelling the file already uses,
    keeping its comments (validated by the caller before anything is written)."""
    document = read_document(path)
    document.set("cluster.members", ",".join(members))
    replace_checked(path, document.text(), lambda candidate: None)


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
