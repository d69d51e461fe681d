"""Canary rollouts of the cluster: each one's state, steps, numbers and events (read from the
model repository, where the rollout's controller keeps them: appliance.rollout)."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template

from appliance import rollout
from appliance.errors import ApplianceError
from appliance.fleet import Fleet
from ..security import login_required
from . import site

bp = Blueprint("rollouts", __name__)
log = logging.getLogger(__name__)


@bp.get("/rollouts")
@login_required
def listing():
    error = ""
    items: list[rollout.Rollout] = []
    try:
        items = rollout.history(Fleet.of_node(site().config, call_seconds=5.0, paths=site().paths))
    except ApplianceError as exc:
        error = str(exc)
    return render_template("rollouts.html", rollouts=items, error=error,
                           lines=rollout.status_lines)
