"""Login and logout (logout changes state: POST with the CSRF token)."""

from __future__ import annotations

import logging
import time

from flask import (Blueprint, current_app, flash, redirect, render_template, request, session,
                   url_for)

from .. import credentials
from ..security import csrf_token, logged_in, safe_next

bp = Blueprint("auth", __name__)
log = logging.getLogger("logviewer.auth")


@bp.get("/healthz")
def healthz():
    """Unauthenticated liveness for `appliance up`: says nothing about the node."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.route("/login", methods=["GET", "POST"])
def login():
    etc = current_app.config["LOGVIEWER_ETC"]
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        if logged_in():
            return redirect(target)
        return render_template("login.html", next=target,
                               configured=credentials.read_hash(etc) is not None)
    throttle = current_app.extensions["logviewer_throttle"]
    client = request.remote_addr or "?"
    if throttle.blocked(client):
        log.warning("login from %s refused: too many failed attempts", client)
        return render_template("login.html", next=target, configured=True,
                               error="Too many failed logins: wait a few minutes."), 429
    password = request.form.get("password", "")
    if password and len(password) <= 1024 and credentials.check_password(etc, password):
        throttle.succeeded(client)
        log.info("login from %s", client)
        session.clear()                      # a fresh session: no fixation
        session.permanent = True
        session["auth"] = credentials.password_generation(etc)
        session["since"] = int(time.time())
        csrf_token()
        return redirect(target)
    throttle.failed(client)
    log.warning("failed login from %s", client)
    time.sleep(0.2)
    return render_template("login.html", next=target, configured=True,
                           error="Wrong password."), 401


@bp.post("/logout")
def logout():
    session.clear()
    flash("Logged out.")
    return redirect(url_for("auth.login"))
