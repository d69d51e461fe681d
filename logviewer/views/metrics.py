"""``GET /metrics``: the node's scrape page (:mod:`appliance.nodemetrics`), read-only.

A scraper shows the node's bearer token; a person logged in to the logviewer may look too. A
request with neither gets 401 and a ``WWW-Authenticate`` challenge, never a hint of the token.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from appliance import nodemetrics
from ..security import logged_in
from . import site

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    s = site()
    config = s.config
    if not (nodemetrics.authorized(config, s.paths, request.headers.get("Authorization"))
            or logged_in()):
        return Response("401 Unauthorized: send Authorization: Bearer <metrics token>\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="metrics"'}, mimetype="text/plain")
    return Response(nodemetrics.node_metrics_text(config, s.paths),
                    content_type=nodemetrics.CONTENT_TYPE)
