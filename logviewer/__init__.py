"""The log and model browser of an appliance node (port ``logviewer.port``, default 8090).

``create_app(paths, config)`` builds the Flask app; ``python -m logviewer --root DIR`` serves
it with waitress on the node's address, the way supervisord runs it on every node.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from .app import create_app as factory

    return factory(*args, **kwargs)


__all__ = ["create_app"]
