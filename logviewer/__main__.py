"""``python -m logviewer --root DIR``: serve the logviewer of the node rooted at DIR.

The node's settings come from its running config (:mod:`appliance.runconfig`, what every
program of the node runs with), followed on each request: a change applied by ``appliance up``
or ``appliance reload`` shows without a restart. What it listens on is given on the command
line (supervisord restarts it when that changes). Without a running config (a node not started
yet) the settings come from ``<root>/etc/appliance/appliance.yaml`` or the defaults, with
``--set`` overrides on top, like the ``appliance`` CLI's.

It runs under waitress, a production WSGI server: a fixed pool of worker threads (live tail
is short polling, so no request holds a thread for long), request bodies bounded, nothing
buffered whole on the way out (file downloads stream in blocks).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Callable

from appliance import runconfig
from appliance.config import Config, NodePaths, load_config, local_store, resolve_root
from appliance.errors import ApplianceError


def config_source(paths: NodePaths, overrides: list[str]) -> Callable[[], Config]:
    """The running config, followed (re-read when it changed); a fixed config from the file and
    ``overrides`` when those are given or no node was started under ``paths``."""
    if not overrides and runconfig.stamp(paths) is not None:
        follow = runconfig.Follower(paths)
        follow()   # an unreadable running config fails the start, not the first request
        return lambda: follow().config
    config_file = paths.config_file if paths.config_file.exists() else None
    config = load_config(config_file, overrides)
    return lambda: config


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logviewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="node root prefix (default $APPLIANCE_ROOT or /)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", help="listen address (default node.address)")
    parser.add_argument("--port", type=int, help="listen port (default logviewer.port)")
    parser.add_argument("--unix-socket", type=Path,
                        help="listen on this unix socket instead (behind the node's Envoy, which "
                        "terminates TLS and says so in X-Forwarded-Proto / X-Forwarded-For)")
    parser.add_argument("--threads", type=int, default=6, help="waitress worker threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = NodePaths(resolve_root(args.root))
    try:
        current = config_source(paths, args.overrides)
        config = current()
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import waitress

    from .app import create_app

    app = create_app(paths, current)
    from .views.dashboard import start_sampler
    start_sampler(app)
    if args.unix_socket:
        args.unix_socket.unlink(missing_ok=True)   # left by a killed predecessor
        # Only Envoy, running as this user, can connect (0600): its forwarded headers are the truth.
        where: dict = {"unix_socket": str(args.unix_socket), "unix_socket_perms": "600",
                       "trusted_proxy": "*", "trusted_proxy_count": 1,
                       "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}
        shown = f"unix:{args.unix_socket}"
    else:
        where = {"host": args.address or config.node.address,
                 "port": args.port or config.logviewer.port}
        shown = f"http://{where['host']}:{where['port']}"
    logging.getLogger("logviewer").info("serving %s on %s (logs %s, models %s)", paths.root, shown,
                                        paths.logs, local_store(config, paths))
    # supervisord stops it with SIGTERM: exit 0 rather than die of the signal, which supervisord
    # logs as "WARN stopped: logviewer (terminated by SIGTERM)" at every orderly stop.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    waitress.serve(app, **where, threads=args.threads, ident="appliance-logviewer",
                   max_request_body_size=1024 * 1024, max_request_header_size=64 * 1024,
                   channel_timeout=60, clear_untrusted_proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
