"""The logviewer's Flask application factory."""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from flask import Flask, jsonify, render_template, request
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from appliance.config import Config, NodePaths, local_store
from appliance.modelstatus import local_rest_base

from . import credentials, security
from .models import ModelStore
from .safepath import Refused


class Site:
    """What the views need to know about the node, from its config as it is now.

    ``config`` is the running config, followed on every request (re-read only when its file
    changed, :class:`appliance.runconfig.Follower`): a model added or access logging switched on
    by ``appliance up``/``reload`` shows on the next page load, without a restart.
    """

    access_log = "access.log"

    def __init__(self, paths: NodePaths, config: Callable[[], Config], rest_base: str | None,
                 node_name: str) -> None:
        self.paths = paths
        self.log_root = paths.logs
        self.node_name = node_name
        self._config = config
        self._rest_base = rest_base

    @property
    def config(self) -> Config:
        return self._config()

    @property
    def model_root(self) -> Path:
        """The local store: with a repository the agent's mirror, not the bucket."""
        return local_store(self.config, self.paths)

    @property
    def store(self) -> ModelStore:
        config = self.config
        rest = self._rest_base or local_rest_base(config)
        return ModelStore(local_store(config, self.paths), config.model.names, rest,
                          self.paths.quarantine)

    @property
    def admin_port(self) -> int:
        return self.config.envoy.admin_port


def create_app(paths: NodePaths, config: Config | Callable[[], Config], *,
               rest_base: str | None = None) -> Flask:
    """The app for the node rooted at ``paths``; ``config`` is its config, or what returns the
    config as it is now (the running node's, followed per request).

    ``rest_base`` is where the model server's REST API answers (default: this node's
    ``serving.rest.port`` on its connect address).
    """
    current = config if callable(config) else (lambda: config)
    app = Flask(__name__)
    # No 308 redirects that "clean up" '//' in a URL: a path with an empty part is refused (400).
    app.url_map.merge_slashes = False
    etc = paths.etc
    app.config.update(
        SECRET_KEY=credentials.ensure_secret_key(etc),
        LOGVIEWER_ETC=etc,
        SESSION_COOKIE_NAME="appliance_logviewer",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # Read at start: the logviewer listens on plain HTTP or behind TLS for its lifetime.
        SESSION_COOKIE_SECURE=current().logviewer.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions["logviewer"] = Site(paths, current, rest_base, socket.gethostname())
    security.install(app)
    _filters(app)

    from .views import auth, cluster, dashboard, logs, metrics, models, rollouts, shadow
    for blueprint in (auth.bp, logs.bp, models.bp, cluster.bp, metrics.bp, dashboard.bp, rollouts.bp,
                      shadow.bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(Refused)
    def refused(exc: Refused):
        logging.getLogger("logviewer.paths").warning(
            "refused %s from %s: %s", request.full_path[:500].encode("unicode_escape").decode(),
            request.remote_addr, exc)
        return _error(exc.status, "No such file here." if exc.status == 404
                      else "That path is not allowed.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    return app


def _error(status: int, message: str):
    if request.path.startswith("/api/"):
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def human_size(value: int | float | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def when(timestamp: float | None) -> Markup:
    """A local time with its age, e.g. ``2025-01-02 10:11:12 (3 min ago)``."""
    if not timestamp:
        return Markup("-")
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc).astimezone()
    ago = duration(time.time() - timestamp) + " ago"
    return Markup('<time datetime="{}" title="{}">{}</time> <span class="muted">({})</span>').format(
        moment.isoformat(timespec="seconds"), moment.isoformat(timespec="seconds"),
        moment.strftime("%Y-%m-%d %H:%M:%S"), ago)


def duration(seconds: float | None) -> str:
    """A span of time for humans: ``12 s``, ``5 min``, ``2.5 h``, ``3.0 d``."""
    if seconds is None:
        return "-"
    age = max(0.0, float(seconds))
    if age < 60:
        return f"{int(age)} s"
    if age < 3600:
        return f"{int(age // 60)} min"
    if age < 86400:
        return f"{age / 3600:.1f} h"
    return f"{age / 86400:.1f} d"


def highlight(text: str, needle: str, case_sensitive: bool = False) -> Markup:
    """``text`` escaped, with every occurrence of ``needle`` in <mark>."""
    if not needle:
        return escape(text)
    hay = text if case_sensitive else text.lower()
    pat = needle if case_sensitive else needle.lower()
    out, pos = [], 0
    while True:
        at = hay.find(pat, pos)
        if at < 0 or len(pat) == 0:
            break
        out.append(escape(text[pos:at]))
        out.append(Markup("<mark>{}</mark>").format(text[at:at + len(needle)]))
        pos = at + len(needle)
    out.append(escape(text[pos:]))
    return Markup("").join(out)


LEVELS = (("lv-err", (" E ", "ERROR", "FATAL", "CRIT", "Traceback", "[error]", "[critical]")),
          ("lv-warn", (" W ", "WARN", "[warning]")))


def line_class(line: str) -> str:
    head = line[:200]
    for css, marks in LEVELS:
        if any(m in head for m in marks):
            return css
    return ""


def _filters(app: Flask) -> None:
    app.jinja_env.filters["size"] = human_size
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["highlight"] = highlight
    app.jinja_env.filters["line_class"] = line_class

    @app.context_processor
    def site():
        from .security import logged_in
        s: Site = app.extensions["logviewer"]
        return {"site": s, "logged_in": logged_in(), "node_config": s.config}
