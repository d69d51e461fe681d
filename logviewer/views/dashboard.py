"""The dashboard: charts of every node's requests, latency, errors, CPU and memory, drawn in
the browser (static/dashboard.js, SVG, nothing from another site) from the logviewer's own
store (logviewer/samples.py)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import orjson
from flask import Blueprint, current_app, render_template, request
from markupsafe import Markup

from .. import charts
from ..samples import Sampler, Store, member_nodes
from ..security import login_required
from . import int_arg, site

bp = Blueprint("dashboard", __name__)
RANGES = ((15, "15 min"), (60, "1 h"), (180, "3 h"), (360, "6 h"))
_opening = threading.Lock()


def store() -> Store:
    """The app's store, opened on first use (the sampler of ``python -m logviewer`` shares it)."""
    app = current_app
    with _opening:
        if "dashboard_store" not in app.extensions:
            s = site()
            app.extensions["dashboard_store"] = Store(
                s.paths.dashboard, s.config.dashboard.retention_hours * 3600.0)
    return app.extensions["dashboard_store"]


def _data() -> dict:
    minutes = int_arg(request.args.get("minutes"), 60, low=1, high=7 * 24 * 60)
    until = time.time()
    since = until - minutes * 60
    try:
        data = charts.build(store().rows(since), since, until)
    except (sqlite3.Error, OSError) as exc:   # e.g. var/lib/appliance not writable
        data = charts.build([], since, until)
        data["error"] = f"the dashboard's store {site().paths.dashboard} cannot be read: {exc}"
    data["minutes"] = minutes
    data["interval"] = site().config.dashboard.sample_seconds
    return data


@bp.get("/dashboard")
@login_required
def dashboard():
    data = _data()
    # The charts' data rides in the page (a JSON block, not a script: the CSP allows no inline
    # script), so the first paint needs no second request.
    blob = Markup(orjson.dumps(data).decode().replace("<", "\\u003c"))
    config = site().config
    return render_template("dashboard.html", data=data, blob=blob, ranges=RANGES,
                           nodes=member_nodes(config, site().paths),
                           peers_readable=bool(config.metrics.token))


@bp.get("/api/dashboard")
@login_required
def api_dashboard():
    return current_app.response_class(orjson.dumps(_data()), mimetype="application/json")


def start_sampler(app) -> Sampler | None:
    """The thread that fills the app's store (``python -m logviewer`` only: tests that build an
    app fill the store themselves)."""
    with app.app_context():
        try:
            sampler = Sampler(site().paths, lambda: app.extensions["logviewer"].config, store())
        except (sqlite3.Error, OSError) as exc:
            # The logs and models stay browsable; the dashboard page says what is wrong.
            logging.getLogger(__name__).error("no dashboard: cannot open %s: %s",
                                              site().paths.dashboard, exc)
            return None
    sampler.start()
    return sampler
