"""Shadow comparisons (``appliance shadow``), summed over every node that published a report."""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, render_template

from appliance import fleet
from appliance.errors import ApplianceError
from appliance.shadow import cluster_reports

from ..security import login_required
from . import site

bp = Blueprint("shadow", __name__)


def _reports() -> tuple[dict, str]:
    s = site()
    try:
        return cluster_reports(fleet.Fleet.of_node(s.config, call_seconds=2.0, paths=s.paths)), ""
    except (ApplianceError, OSError) as exc:
        return {}, f"the reports cannot be read from the model repository: {exc}"


@bp.get("/shadow")
@login_required
def shadow():
    reports, error = _reports()
    return render_template("shadow.html", reports=reports, error=error, dumps=json.dumps)


@bp.get("/api/shadow")
@login_required
def api_shadow():
    reports, error = _reports()
    return (jsonify(error=error), 503) if error else jsonify(reports)
