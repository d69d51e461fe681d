"""Blocking requests (GETs, and Envoy admin's POSTs) to this node's own services: the model server's REST status, Envoy's admin.

One place for "ask a local HTTP endpoint, never raise": the CLI, the agent and the logviewer
all poll these endpoints, and a service that is down is an answer (status 0), not an error.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

MAX_BODY = 8 * 1024 * 1024


def get_text(url: str, timeout: float = 2.0, method: str = "GET",
             headers: dict[str, str] | None = None, cafile: Path | None = None) -> tuple[int, str]:
    """(status, body text); status 0 when nothing answers. ``method="POST"`` sends no body.

    An https URL is this node's own edge: its certificate must chain to ``cafile`` (the
    self-signed one, or the system's CAs when None); the name is not checked, since the node is
    asked by address and a certificate made for its DNS name is still its own.
    """
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        context.check_hostname = False
    try:
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                         headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.status, resp.read(MAX_BODY).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(64 * 1024).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def get_json(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, object]:
    """(status, parsed JSON, or the body text when it is not JSON); status 0 when nothing answers."""
    code, text = get_text(url, timeout, headers=headers)
    if code == 0:
        return 0, text
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text
