"""Applying a change to a running node: the one path every change takes.

``appliance reload``, ``appliance up`` on a running node, ``appliance cluster add-node|remove-node``,
``appliance models add|remove|set`` and the agent's watch of the config file all call
:func:`apply`: read the config file (+ overrides), validate -- an invalid config is refused
before anything changes --, render and install, reach the processes that need the change (the
model server re-reads models.config, Envoy swaps its listeners, clusters and endpoints (file-
based LDS/CDS/EDS), supervisord starts/stops/restarts only programs whose command changed, the
agent and the logviewer follow the running config), restart nothing else, and wait until the
node serves. One change at a time per node (a lock in the run dir); the wait is outside it.

Overrides: ``--set`` given with the change replaces the recorded ones (and is recorded in the
running config); none given drops them (``--set`` is not kept across an ``up``/``reload``
without it). The agent's file watch passes the recorded ones on (:func:`apply_file_edit`).

Cluster settings (:mod:`appliance.fleet`, pushed to every node through the repository) are
overrides too, layered after the node's own: every change here keeps the revision the node
applied last, and :func:`apply_fleet` (the agent) swaps one revision for the next.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from . import fleet, runconfig
from .config import Config, NodePaths, effective_values, load_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)


def apply(paths: NodePaths, overrides: list[str] | None = None,
          progress: Callable[[str], None] = print, *, config_file: Path | None = None,
          timeout: float | None = None) -> None:
    """Apply the config file (``config_file``, default: the one the node runs from, else
    ``<root>/etc/appliance/appliance.yaml``) plus ``overrides`` to the running node and wait
    until it serves (``timeout``: default ``startup.timeout.seconds``)."""
    with one_change_at_a_time(paths):
        if config_file is None:
            config_file = _running_source(paths)
        config, layered = _load_layered(paths, config_file, overrides or [])
        node = _node(config, paths, config_file, layered)
        node.apply_live(progress)
    node.wait_ready(float(config.startup.timeout_seconds if timeout is None else timeout), progress)


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
    paths only (a value may be a secret): nothing changes. It does not wait until the node
    serves: the agent's next edit must not wait for a node that may not serve for long."""
    with one_change_at_a_time(paths):   # the overrides as recorded now, not before a CLI's change
        try:
            edited = pending_edit(paths)
        except ConfigError as exc:
            keys = ", ".join(sorted({key for key, _ in exc.problems}))
            log.error("the config file %s is not valid (keys: %s); nothing changed: "
                      "`appliance validate-config` says why", exc.source or "(defaults)", keys)
            return False
        if edited is None:
            return False
        running = runconfig.read(paths)
        _node(edited, paths, running.source_file(paths), running.overrides).apply_live(progress)
    return True


def apply_fleet(paths: NodePaths, settings: fleet.FleetSettings,
                progress: Callable[[str], None] = log.info) -> bool:
    """What the agent does with a new revision of the cluster settings: apply it over the node's
    own config and overrides (those of the previous revision replaced), without waiting until
    the node serves; then record it as applied. False when it changed nothing on this node.
    Raises ConfigError (nothing changed, the revision is not recorded) when this node refuses
    it."""
    with one_change_at_a_time(paths):
        running = runconfig.read(paths)
        source = running.source_file(paths)
        config, layered = _load_layered(paths, source, running.overrides, current=settings)
        changed = effective_values(config, mask_secrets=False) != running.values
        if changed:
            _node(config, paths, source, layered).apply_live(progress)
        fleet.record_applied(paths, settings)
    return changed


def _load_layered(paths: NodePaths, config_file: Path | None, overrides: list[str] | tuple[str, ...],
                  current: fleet.FleetSettings | None = None) -> tuple[Config, list[str]]:
    """The config of ``config_file`` + ``overrides`` + the cluster settings (``current``, default:
    the revision applied last) for the models it serves, and the overrides that make it."""
    previous = fleet.applied(paths)
    own = fleet.layered(paths, overrides, (), previous, current)
    names = load_config(config_file, own).model.names       # ConfigError: nothing has changed
    layered = fleet.layered(paths, overrides, names, previous, current)
    return load_config(config_file, layered), layered


def _node(config: Config, paths: NodePaths, config_file: Path | None,
          overrides: list[str] | tuple[str, ...] | None) -> "Node":
    from .node import Node

    return Node(config, paths, config_file, list(overrides or []))


def _running_source(paths: NodePaths) -> Path | None:
    try:
        return runconfig.read(paths).source_file(paths)
    except runconfig.NotStarted:
        return paths.config_file if paths.config_file.exists() else None


@contextmanager
def one_change_at_a_time(paths: NodePaths) -> Iterator[None]:
    """One change per node at a time: a CLI command and the agent's file watch may meet."""
    paths.run.mkdir(parents=True, exist_ok=True)
    with open(paths.run / "apply.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
