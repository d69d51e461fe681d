"""The serving nodes as this node's Envoy sees them (never the admin interface itself)."""

from __future__ import annotations

from flask import Blueprint, render_template

from appliance.envoy_admin import read_cluster_view
from ..security import login_required
from . import site

bp = Blueprint("cluster", __name__)


@bp.get("/cluster")
@login_required
def cluster():
    status, clusters = read_cluster_view(site().admin_port)
    return render_template("cluster.html", status=status, clusters=clusters)
