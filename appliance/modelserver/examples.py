"""Classify and regress over REST (placeholder until tf.Example support lands)."""

from __future__ import annotations

from typing import Any

from appliance.modelserver.status import Code, ServingError


def classify_or_regress(api: Any, verb: str, name: str, version: str | None, label: str | None,
                        body: bytes) -> bytes:
    raise ServingError(Code.UNIMPLEMENTED, f"{verb} is not implemented yet")
