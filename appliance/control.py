"""Apply the node's config file to the running node: the one way a change reaches its processes.

``appliance up`` on a running node, ``appliance models add|remove|set`` and a hand edit
followed by ``up`` all come here: the config file (plus the ``--set`` overrides ``up`` was
started with) is read and validated afresh, rendered, and each process that needs the change
gets it; the call returns once the node serves again.
"""

from __future__ import annotations

from typing import Callable

from .config import NodePaths, load_config, reload_sources


def apply(paths: NodePaths, overrides: list[str] | None = None,
          progress: Callable[[str], None] = print) -> None:
    """Read the node's config file (+ ``overrides``), validate, render, install, wait until it serves."""
    from .node import Node

    config_file, recorded = reload_sources(paths)
    every = recorded + list(overrides or [])
    Node(load_config(config_file, every), paths, config_file, every).up(progress=progress)
