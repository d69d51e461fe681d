"""Which bytes of its config files the model server follows: an appliance extension of the REST API.

``GET /appliance/v1/applied-config`` answers ``{"model_config_file": sha256, "model_settings_file":
sha256}`` of the models.config and model-settings.json the models follow now (set at start and
after each successful re-read). A node's ``up``/``reload`` waits until they are the digests of
the files it wrote, so a command that reports success means the model server took the change.
"""

from __future__ import annotations

import hashlib

APPLIED_PATH = "/appliance/v1/applied-config"
# Each model's versions: the runtime serving it and why (modelserver/autoplatform.py).
RUNTIMES_PATH = "/appliance/v1/runtimes"


def digest(data: bytes | None) -> str:
    """The SHA-256 of a config file's bytes ("" when the file is absent)."""
    return hashlib.sha256(data).hexdigest() if data is not None else ""
