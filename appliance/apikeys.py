"""API keys in the node's config: the keys ``keys.<name>.*``, and the model server's keys file.

A key is stored as its SHA-256 only; the key itself is printed once by ``appliance keys add`` /
``rotate`` and never written anywhere::

    auth.required: true            # every model needs a key (or models.<name>.auth.required)
    keys:
      alice: {sha256: 9f86d0..., models: resnet, rate: 20}

Like every other key, the entries live in each node's config file, so a cluster's nodes hold the
same keys when their files say the same (``appliance keys`` edits this node's file; run it on
every node, or hand the file out as s3 keys are). The node renders them, with the per-model rules,
into ``run/api-keys.json`` (0600), which the model server re-reads within a second
(``modelserver/access.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from .configkeys import Invalid, Key, items, non_negative, string

PREFIX = "keys"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
KEY_PREFIX = "ie_"    # what a key looks like (found by secret scanners, and by people)
Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: tuple[str, ...]    # empty: every model
    rate: int                  # requests per second on each serving node; 0: no limit


def _digest(value: Any) -> str:
    text = string(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise Invalid("expected the key's SHA-256 as 64 hex digits (`appliance keys add` writes it)")
    return text


def _models(value: Any) -> tuple[str, ...]:
    return tuple(item for item in items(value) if item)


KEY_SCHEMA: tuple[Key, ...] = (
    Key("sha256", "", "sha256", _digest, "", "SHA-256 (hex) of the key; the key itself is never stored."),
    Key("models", "", "models", _models, "",
        "Models the key may call (comma-separated); empty: every model."),
    Key("rate", "", "rate", non_negative, 0,
        "Requests per second this key may make on each serving node; 0: no limit."),
)
_KEY_KEYS = {key.name: key for key in KEY_SCHEMA}


def is_key_key(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ".")


def parse(values: Mapping[str, Any], model_names: tuple[str, ...] | None) -> tuple[dict[str, ApiKey], Problems]:
    """The keys of the flat ``keys.*`` values, and every problem with its key path."""
    problems: Problems = []
    given: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key == PREFIX:
            if value not in (None, {}):
                problems.append((key, "expected a mapping of key names to {sha256, models, rate}"))
            continue
        name, _, rel = key[len(PREFIX) + 1:].partition(".")
        given.setdefault(name, {})[rel] = value
    keys = {}
    for name, raw in given.items():
        where = f"{PREFIX}.{name}"
        if not NAME.fullmatch(name):
            problems.append((where, "a key name is 1-64 letters, digits, '-' or '_'"))
            continue
        parsed, found = {}, []
        for rel in raw:
            if rel not in _KEY_KEYS:
                found.append((f"{where}.{rel}" if rel else where, "unknown key; a key has sha256, models, rate"))
        for key in KEY_SCHEMA:
            try:
                parsed[key.name] = key.parse(raw.get(key.name, key.default))
            except Invalid as exc:
                found.append((f"{where}.{key.name}", str(exc)))
        for model in parsed.get("models", ()):
            if model_names is not None and model not in model_names:
                found.append((f"{where}.models", f"model {model!r} is not in model.name"))
        problems += found
        if not found:
            keys[name] = ApiKey(name, parsed["sha256"], parsed["models"], parsed["rate"])
    return keys, problems


def flat_values(keys: Mapping[str, ApiKey]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, entry in keys.items():
        out[f"{PREFIX}.{name}.sha256"] = entry.sha256
        out[f"{PREFIX}.{name}.models"] = ",".join(entry.models)
        out[f"{PREFIX}.{name}.rate"] = entry.rate
    return out


def new_key() -> tuple[str, str]:
    """A new key and its SHA-256 (what the config stores)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode("utf-8")).hexdigest()


def keys_file(config: Any) -> str:
    """``run/api-keys.json``: what ``modelserver/access.py`` reads (digests only)."""
    models = {name: {"required": entry.auth_required, "rate": entry.rate}
              for name, entry in config.model.settings.items() if entry.auth_required or entry.rate}
    keys = {entry.sha256: {"name": name, "models": list(entry.models), "rate": entry.rate}
            for name, entry in sorted(config.auth.keys.items())}
    return json.dumps({"required": config.auth.required, "models": models, "keys": keys},
                      indent=2, sort_keys=True) + "\n"
