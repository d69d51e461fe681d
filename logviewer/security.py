"""Login, sessions, CSRF and response headers of the logviewer.

* One password (generated at install, stored hashed: :mod:`logviewer.credentials`). A session
  remembers the fingerprint of the hash it logged in with, so a new password logs everyone out.
* The session cookie is HttpOnly, SameSite=Strict, and Secure on HTTPS requests (or always,
  with ``logviewer.secure.cookies``); it is signed with a key generated once (0600 file).
* Every state-changing request (any method but GET/HEAD/OPTIONS) must carry the session's
  CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``), and a foreign ``Origin``
  is refused outright.
* Repeated failed logins from one client are slowed down (HTTP 429).
* Responses carry a strict Content-Security-Policy (no inline script, nothing from another
  origin), ``nosniff``, no framing and no caching of authenticated pages.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from functools import wraps
from typing import Callable
from urllib.parse import urlsplit

from flask import (Flask, abort, current_app, g, has_request_context, jsonify, redirect, request,
                   session, url_for)
from flask.sessions import SecureCookieSessionInterface

from . import credentials

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_FAILURES = 10
FAILURE_WINDOW = 300.0


class SessionInterface(SecureCookieSessionInterface):
    """Secure cookies when the request came over HTTPS, whatever the static setting says."""

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _same_origin(origin: str) -> bool:
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def check_csrf() -> None:
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin):
        abort(403, "cross-origin request refused")
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form's CSRF token is missing or stale: reload the page and try again")


def logged_in() -> bool:
    marker = session.get("auth")
    if not marker:
        return False
    current = credentials.password_generation(current_app.config["LOGVIEWER_ETC"])
    return hmac.compare_digest(str(marker), current)


def login_required(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not logged_in():
            if request.path.startswith("/api/"):
                return jsonify(error="not logged in"), 401
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return wrapper


def safe_next(target: str | None) -> str:
    """A local path to go to after login (anything else: the start page)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("logs.listing")
    if any(ord(c) < 0x20 for c in target):
        return url_for("logs.listing")
    return target


class LoginThrottle:
    """At most MAX_FAILURES failed logins per client per FAILURE_WINDOW seconds."""

    def __init__(self) -> None:
        self.failures: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def _prune(self, client: str, now: float) -> deque:
        recent = self.failures[client]
        while recent and now - recent[0] > FAILURE_WINDOW:
            recent.popleft()
        return recent

    def blocked(self, client: str) -> bool:
        with self.lock:
            return len(self._prune(client, time.monotonic())) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        with self.lock:
            self._prune(client, time.monotonic()).append(time.monotonic())
            if len(self.failures) > 10000:   # bound the memory a scan of many clients can take
                self.failures.clear()

    def succeeded(self, client: str) -> None:
        with self.lock:
            self.failures.pop(client, None)


def install(app: Flask) -> None:
    app.session_interface = SessionInterface()
    app.extensions["logviewer_throttle"] = LoginThrottle()
    app.before_request(check_csrf)
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.after_request
    def headers(response):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chrome send Origin: null
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        if "started" in g:   # the app's own time for this request (the page is rendered by now)
            response.headers["Server-Timing"] = f"app;dur={(time.monotonic() - g.started) * 1000:.1f}"
        return response

    @app.before_request
    def remember_start():
        g.started = time.monotonic()
