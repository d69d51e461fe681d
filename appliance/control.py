"""Applying a change to a running node: the one path every change takes.

``appliance reload``, ``appliance up`` on a running node, ``appliance cluster add-node|remove-node``,
``appliance models add|remove|set`` and the agent's watch of the config file all call
:func:`apply`: read the config file (+ overrides), validate -- an invalid config is refused
before anything changes --, render and install, reach the processes that need the change (the
model server re-reads models.config, Envoy swaps its EDS endpoints, supervisord starts/stops/
restarts only programs whose command changed, the agent and the logviewer follow the running
config), restart nothing else, and wait until the node serves.

Overrides: ``--set`` given with the change replaces the recorded ones (and is recorded in the
running config); none given drops them (``--set`` is not kept across an ``up``/``reload``
without it). The agent's file watch passes the recorded ones on (:func:`apply_file_edit`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from . import runconfig
from .config import Config, NodePaths, effective_values, load_config
from .errors import ConfigError

log = logging.getLogger(__name__)


def apply(paths: NodePaths, overrides: list[str] | None = None,
          progress: Callable[[str], None] = print, *, config_file: Path | None = None,
          timeout: float | None = None, wait: bool = True) -> None:
    """Apply the config file (``config_file``, default: the one the node runs from, else
    ``<root>/etc/appliance/appliance.yaml``) plus ``overrides`` to the running node and wait
    until it serves (``timeout``: default ``startup.timeout.seconds``; not when ``wait`` is
    false: the agent, whose next edit must not wait for a node that may not serve for long)."""
    from .node import Node

    if config_file is None:
        config_file = _running_source(paths)
    config = load_config(config_file, overrides)   # ConfigError: nothing has changed
    Node(config, paths, config_file, overrides).apply_live(
        float(config.startup.timeout_seconds if timeout is None else timeout), progress, wait)


def pending_edit(paths: NodePaths) -> Config | None:
    """The config file as edited since the node last applied it (with the recorded overrides),
    or None when it says nothing new. Raises ConfigError for an invalid edit."""
    running = runconfig.read(paths)
    edited = running.reread(paths)
    if effective_values(edited, mask_secrets=False) == running.values:
        return None
    return edited


def apply_file_edit(paths: NodePaths, progress: Callable[[str], None] = log.info) -> bool:
    """What the agent does when the config file changed: apply it with the recorded overrides
    (True), or nothing when it holds no change (False). An invalid file is refused with its key
    paths only (a value may be a secret): nothing changes."""
    try:
        if pending_edit(paths) is None:
            return False
    except ConfigError as exc:
        keys = ", ".join(sorted({key for key, _ in exc.problems}))
        log.error("the config file %s is not valid (keys: %s); nothing changed: "
                  "`appliance validate-config` says why", exc.source or "(defaults)", keys)
        return False
    apply(paths, list(runconfig.read(paths).overrides), progress, wait=False)
    return True


def _running_source(paths: NodePaths) -> Path | None:
    try:
        return runconfig.read(paths).source_file(paths)
    except runconfig.NotStarted:
        return paths.config_file if paths.config_file.exists() else None

