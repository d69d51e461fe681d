"""The node agent: keeps the local model store in step with the model repository.

:func:`build_syncer` wires config -> source -> local store -> downloader -> model server
client. ``appliance agent`` runs it as a daemon under supervisord (:mod:`.main`, the agent's
entry point), ``appliance sync --once`` runs a single cycle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import runconfig
from ..config import Config, NodePaths, load_config, local_store
from ..errors import ConfigError
from ..sources import open_source
from .cycle import CycleReport, ModelServerClient, Syncer
from .daemon import AgentDaemon
from .store import LocalStore
from .transfer import Downloader

log = logging.getLogger(__name__)

__all__ = ["AgentDaemon", "CycleReport", "Syncer", "build_syncer", "load_agent_config"]


def load_agent_config(paths: NodePaths, config_file: Path | None = None,
                      overrides: list[str] | None = None) -> Config:
    """The node's running config, unless a file or overrides are given (or no node was started
    here: then the node's config file, or the defaults)."""
    if config_file is None and not overrides:
        try:
            return runconfig.read(paths).config
        except runconfig.NotStarted:
            pass
    if config_file is None and paths.config_file.exists():
        config_file = paths.config_file
    return load_config(config_file, overrides)


def build_syncer(config: Config, paths: NodePaths) -> Syncer:
    """Everything a sync cycle needs, wired from one config."""
    if config.s3.type == "none":
        raise ConfigError([("s3.type", "none: models are served from local disk and there is "
                            "no repository to sync; set s3.type to minio, s3, qingstor or seaweedfs")])
    source = open_source(config, paths, max_connections=config.sync.concurrency,
                         call_seconds=float(config.sync.interval_seconds))
    store = LocalStore(local_store(config, paths))
    store.root.mkdir(parents=True, exist_ok=True)
    downloader = Downloader(source, config.sync.concurrency, config.sync.verify)
    server = ModelServerClient.of_node(config) if config.node.role == "serving" else None
    return Syncer(config.model.names, source, store, downloader, server,
                  settle_seconds=min(2.0, float(config.sync.interval_seconds)),
                  quarantine_dir=paths.quarantine)
