"""``python -m logviewer --root DIR``: serve the logviewer of the node rooted at DIR.

The node's settings come from the effective config ``appliance up`` wrote into the run dir
(the same values supervisord's other programs were rendered from); without one (a node not
started yet) from ``<root>/etc/appliance/appliance.yaml`` or the defaults. ``--set`` overrides
apply on top, like the ``appliance`` CLI's.

It runs under waitress, a production WSGI server: a fixed pool of worker threads (live tail
is short polling, so no request holds a thread for long), request bodies bounded, nothing
buffered whole on the way out (file downloads stream in blocks).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from appliance.config import (NodePaths, build, load_config, local_store, parse_overrides,
                              resolve_root)
from appliance.errors import ApplianceError


def load(paths: NodePaths, overrides: list[str]):
    import yaml

    effective = paths.run / "effective.yaml"
    if effective.exists():
        values = yaml.safe_load(effective.read_text(encoding="utf-8")) or {}
        extra, problems = parse_overrides(overrides)
        if problems:
            raise ApplianceError(f"bad --set: {problems}")
        values.update(extra)
        # An effective.yaml from before a key existed still gets that key's default.
        return build(values)
    config_file = paths.config_file if paths.config_file.exists() else None
    return load_config(config_file, overrides)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logviewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="node root prefix (default $APPLIANCE_ROOT or /)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=6, help="waitress worker threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = NodePaths(resolve_root(args.root))
    try:
        config = load(paths, args.overrides)
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import waitress

    from .app import create_app

    app = create_app(paths, config)
    host, port = config.node.address, config.logviewer.port
    logging.getLogger("logviewer").info("serving %s on http://%s:%d (logs %s, models %s)",
                                        paths.root, host, port, paths.logs,
                                        local_store(config, paths))
    # supervisord stops it with SIGTERM: exit 0 rather than die of the signal, which supervisord
    # logs as "WARN stopped: logviewer (terminated by SIGTERM)" at every orderly stop.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    waitress.serve(app, host=host, port=port, threads=args.threads, ident="appliance-logviewer",
                   max_request_body_size=1024 * 1024, max_request_header_size=64 * 1024,
                   channel_timeout=60, clear_untrusted_proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
