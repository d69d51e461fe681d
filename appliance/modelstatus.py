"""What the model server says of a model, through TF Serving's REST API.

``GET /v1/models/NAME`` (each version's state) and ``GET /v1/models/NAME/versions/V/metadata``
(its signatures). One client for everyone who asks: the agent (is the replacement AVAILABLE
before a version is retired?), ``appliance up`` and ``status``, ``models ls`` and the log
browser. It holds the one rule for the URL: a model name is quoted as a single path segment,
so a name with a space or '%' asks for that model and a '?' or '#' cannot cut the path short.
A model server that does not answer is an answer (code 0), never an exception.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from modelserver.access import INTERNAL_HEADER
from modelserver.core.applied import APPLIED_PATH, RUNTIMES_PATH
from modelserver.core.choice import Choice

from .config import Config
from .localhttp import get_json
from .membership import MODEL_SERVER_HOST


@dataclass(frozen=True)
class ModelStatus:
    """One answer to ``GET /v1/models/NAME``."""

    code: int                   # HTTP status; 0 when the model server did not answer
    reported: bool              # it answered with the model's versions (none is an answer too)
    versions: list[dict[str, Any]] = field(default_factory=list)  # model_version_status entries
    error: str = ""             # when not reported: TF Serving's error message, or what failed

    def states(self) -> dict[int, str]:
        """version -> state (AVAILABLE, LOADING, END, ...), entries without a number skipped."""
        out = {}
        for entry in self.versions:
            try:
                out[int(entry["version"])] = str(entry["state"])
            except (KeyError, TypeError, ValueError):
                continue
        return out


def local_rest_base(config: Config) -> str:
    """This node's model server's REST API: on loopback only (membership.MODEL_SERVER_HOST)."""
    return f"http://{MODEL_SERVER_HOST}:{config.serving.rest_port}"


# The node's own status reads need no API key (modelserver/access.py).
INTERNAL = {INTERNAL_HEADER: "1"}


class ModelServerClient:
    """Asks one model server's REST API about models."""

    def __init__(self, base_url: str, timeout: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def of_node(cls, config: Config) -> "ModelServerClient":
        """The client of this node's own model server."""
        return cls(local_rest_base(config))

    def url(self, name: str, *rest: str) -> str:
        """``<base>/v1/models/NAME[/rest...]``, each segment quoted whole."""
        return "/".join([f"{self.base_url}/v1/models",
                         *(urllib.parse.quote(part, safe="") for part in (name, *rest))])

    def status(self, name: str) -> ModelStatus:
        code, body = get_json(self.url(name), self.timeout, INTERNAL)
        if code == 200 and isinstance(body, dict):
            return ModelStatus(code, True, list(body.get("model_version_status") or []))
        error = body.get("error", "") if isinstance(body, dict) else body
        return ModelStatus(code, False, error=str(error))

    def states(self, name: str) -> dict[int, str] | None:
        """version -> state; {} when the model server does not know the model (404), None when
        it does not answer (the agent then retires nothing)."""
        status = self.status(name)
        if status.code == 404:
            return {}
        return status.states() if status.reported else None

    def available(self, name: str) -> bool:
        """At least one version of ``name`` is AVAILABLE."""
        return "AVAILABLE" in self.status(name).states().values()

    def applied_config(self) -> dict[str, str] | None:
        """SHA-256 of the models.config and model-settings.json the model server follows now
        (its ``/appliance/v1/applied-config``); None when it does not answer."""
        code, body = get_json(f"{self.base_url}{APPLIED_PATH}", self.timeout)
        return body if code == 200 and isinstance(body, dict) else None

    def runtimes(self) -> dict[str, dict[int, Choice]] | None:
        """model -> version -> the runtime serving it and why (``/appliance/v1/runtimes``: what
        ``platform: auto`` chose, measured and refused); None when the model server does not
        answer, or is one without this extension."""
        code, body = get_json(f"{self.base_url}{RUNTIMES_PATH}", self.timeout)
        if code != 200 or not isinstance(body, dict):
            return None
        out: dict[str, dict[int, Choice]] = {}
        try:
            for name, model in body["models"].items():
                out[name] = {int(v): Choice.from_json(doc) for v, doc in model["versions"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return out

    def metadata(self, name: str, version: str) -> tuple[int, object]:
        """(HTTP status, the metadata document, or the body text when it is not JSON)."""
        return get_json(self.url(name, "versions", version, "metadata"), self.timeout, INTERNAL)
