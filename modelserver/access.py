"""API keys and per-model / per-key rate limits, checked at the entry of every REST and gRPC call.

The rules come from one JSON file (``--api_keys_file``, the appliance renders it as
``run/api-keys.json``, mode 0600) holding only SHA-256 digests of the keys, never a key::

    {"required": false,                       # every model needs a key
     "models": {"resnet": {"required": true, "rate": 50}},
     "keys": {"<sha256 hex>": {"name": "alice", "models": ["resnet"], "rate": 10}}}

``models`` empty or absent in a key means every model. ``rate`` is requests per second on this
model server (a token bucket holding half a second's worth, at least one request); 0 or
absent means no limit.

A thread stats the file every :data:`POLL_SECONDS` and swaps the parsed rules in when its bytes
changed, so an ``appliance keys`` change applies within a second without a restart. A request
pays a dict lookup of the key it presents (its SHA-256 is computed once, then remembered in
memory) and its buckets; nothing is read from disk per request.
An invalid file is logged (by its path, never its content) and the rules in force are kept.

Clients send ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``; REST headers and gRPC
metadata alike). A missing or unknown key gets 401 / UNAUTHENTICATED, a key not allowed for the
model 403 / PERMISSION_DENIED, an empty bucket 429 with ``Retry-After`` / RESOURCE_EXHAUSTED,
each with TF Serving's error body. A status or metadata GET carrying ``x-appliance-internal``
needs no key: Envoy's health checks and the agent send it, and Envoy's public listeners strip the
header from clients' requests, while the model server itself listens on loopback only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

from modelserver.core.applied import digest
from modelserver.core.status import Code, ServingError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
INTERNAL_HEADER = "x-appliance-internal"
KEY_NAME_HEADER = "x-appliance-key-name"
# A bucket holds this long's worth of requests (at least one): a client pausing less than this
# loses none of its rate, and a burst is at most this much over it.
BURST_SECONDS = 0.5
SEEN_KEYS = 4096        # presented keys remembered with their rule (hashing one costs more than the rest)


class AccessDenied(ServingError):
    """A refused call: 401, 403 or 429 (then ``retry_after`` seconds)."""

    def __init__(self, code: Code, message: str, retry_after: int = 0) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class TokenBucket:
    """``rate`` requests per second, bursts of :data:`BURST_SECONDS` worth.

    Calls come from the model server's event loop thread (REST and gRPC share it), so no lock:
    under the GIL a race could at worst let one request too many through.
    """

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, now: float) -> int:
        """0 when a request may pass (and is counted), else the seconds until one may."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0
        self.tokens = tokens
        return max(1, math.ceil((1.0 - tokens) / self.rate))


Refusal = tuple[Code, str]      # a 401 or 403: its code and message


@dataclass(frozen=True)
class KeyRule:
    name: str
    models: frozenset[str]          # empty: every model
    bucket: TokenBucket | None


@dataclass(frozen=True)
class Rules:
    """One parsed keys file."""

    required: bool = False
    required_models: frozenset[str] = frozenset()
    keys: Mapping[str, KeyRule] = field(default_factory=dict)   # sha256 hex -> rule
    model_buckets: Mapping[str, TokenBucket] = field(default_factory=dict)
    # (credential headers, model) -> what :meth:`admit` decided but the buckets, in memory only,
    # dropped with these rules: a call repeating a client's credentials pays one dict lookup.
    seen: dict[tuple[str, str, str], tuple[KeyRule | None, Refusal | None, TokenBucket | None]] = field(
        default_factory=dict)

    def admit(self, model: str, authorization: str, api_key: str) -> tuple[KeyRule | None, Refusal | None,
                                                                           TokenBucket | None]:
        """The key's rule, the refusal's code and message (None: admitted but for the buckets) and
        the model's bucket for a call to ``model`` presenting these headers; remembered (hashing a
        key costs more than the rest)."""
        memo = (authorization, api_key, model)
        try:
            return self.seen[memo]
        except KeyError:
            pass
        key = presented_key({"authorization": authorization, "x-api-key": api_key}.get)
        rule = self.keys.get(hash_key(key)) if key else None
        denied: Refusal | None = None
        if rule is None and (key or self.required or model in self.required_models):
            denied = (Code.UNAUTHENTICATED, "Missing or invalid API key: send it as "
                      "'Authorization: Bearer <key>'" if not key else "Invalid API key")
        elif rule is not None and rule.models and model not in rule.models:
            denied = (Code.PERMISSION_DENIED, f"API key {rule.name} may not call model {model}")
        if len(self.seen) >= SEEN_KEYS:   # a client trying keys (or model names) gets no memory out of it
            self.seen.clear()
        decided = self.seen[memo] = (rule, denied, self.model_buckets.get(model))
        return decided

    @property
    def idle(self) -> bool:
        """Nothing to check: no key required, none known, no model limit."""
        return not (self.required or self.required_models or self.keys or self.model_buckets)


def parse_rules(data: bytes, previous: Rules | None = None) -> Rules:
    """The rules of a keys file; raises ValueError (no content quoted) when it is not valid.

    A bucket whose rate did not change is carried over from ``previous``, so re-reading the file
    (or a change of another key) does not refill it.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("the top level is not an object")
    old_keys = previous.keys if previous else {}
    old_models = previous.model_buckets if previous else {}
    keys = {}
    for digest_hex, entry in (doc.get("keys") or {}).items():
        if len(digest_hex) != 64 or not isinstance(entry, dict):
            raise ValueError("a key entry is not a sha256 digest with its settings")
        old = old_keys.get(digest_hex)
        keys[digest_hex.lower()] = KeyRule(str(entry.get("name", "")), frozenset(entry.get("models") or ()),
                                           _bucket(entry.get("rate"), old.bucket if old else None))
    models = doc.get("models") or {}
    required_models = frozenset(name for name, entry in models.items() if entry.get("required"))
    buckets = {name: bucket for name, entry in models.items()
               if (bucket := _bucket(entry.get("rate"), old_models.get(name))) is not None}
    return Rules(bool(doc.get("required")), required_models, keys, buckets)


def _bucket(rate: Any, old: TokenBucket | None) -> TokenBucket | None:
    rate = float(rate or 0)
    if rate <= 0:
        return None
    return old if old is not None and old.rate == rate else TokenBucket(rate)


def presented_key(get: Any) -> str:
    """The key a request presents: ``Authorization: Bearer K`` or ``x-api-key: K`` (``get`` reads a
    lower-case header), "" when none."""
    auth = get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    return (get("x-api-key") or "").strip()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Access:
    """The rules in force, and the check each call makes."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self.rules = Rules()
        self._stat: tuple[int, int, int] | None = None
        self._digest = ""
        self._stop = threading.Event()
        if path:
            self.refresh()

    @property
    def applied(self) -> dict[str, str]:
        """For ``/appliance/v1/applied-config``: the digest of the keys file in force."""
        return {"api_keys_file": self._digest} if self.path else {}

    def start(self) -> None:
        if self.path:
            threading.Thread(target=self._loop, name="api-keys-poll", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - one bad cycle never stops the watcher
                log.exception("re-reading the API keys file %s failed", self.path)

    def refresh(self) -> bool:
        """Re-read the file when its inode, size or mtime changed; True when new rules apply."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns) if st else None
        if stamp == self._stat:
            return False
        self._stat = stamp
        data = None
        if st is not None:
            with open(self.path, "rb") as handle:
                data = handle.read()
        try:
            # No file: fail closed if one was in force (a key may have been revoked by removing it).
            rules = parse_rules(data, self.rules) if data is not None else Rules(required=bool(self._digest))
        except (ValueError, TypeError, AttributeError):
            log.error("API keys file %s is not valid; keeping the keys in force", self.path)
            return False
        self.rules = rules
        self._digest = digest(data)
        log.info("API keys file %s applied: %d key(s), keys required: %s", self.path, len(rules.keys),
                 "all models" if rules.required else ", ".join(sorted(rules.required_models)) or "no")
        return True

    def check(self, model: str, get: Any, status_read: bool = False) -> str:
        """Admit a call to ``model`` (``get`` reads its lower-case headers / metadata): the key's
        name ("" without a key), or raise :class:`AccessDenied`. ``status_read``: a status or
        metadata read, which the appliance's own callers make with :data:`INTERNAL_HEADER`."""
        rules = self.rules
        if rules.idle or (status_read and get(INTERNAL_HEADER)):
            return ""
        rule, denied, bucket = rules.admit(model, get("authorization") or "", get("x-api-key") or "")
        if denied is not None:
            raise AccessDenied(*denied)
        now = time.monotonic()
        if bucket is not None:
            wait = bucket.take(now)
            if wait:
                raise AccessDenied(Code.RESOURCE_EXHAUSTED, f"Rate limit of model {model} exceeded", wait)
        if rule is None:
            return ""
        if rule.bucket is not None:
            wait = rule.bucket.take(now)
            if wait:
                raise AccessDenied(Code.RESOURCE_EXHAUSTED, f"Rate limit of API key {rule.name} exceeded", wait)
        return rule.name


_MODEL_PATH = re.compile(r"/v1/models/([^/:]+)", re.IGNORECASE)


def model_of_path(path: str) -> str:
    """The model a REST path names (``/v1/models/NAME[/...][:verb]``, TF Serving's ``[^/:]+``), or ""."""
    match = _MODEL_PATH.match(path)
    return "" if match is None else model_name(match.group(1))


def model_name(segment: str) -> str:
    """A REST path's model name segment (as ``model_of_path`` or a route's own regex found it) as
    the name it means: percent-decoded."""
    return unquote(segment) if "%" in segment else segment


def model_of_request(request: Any) -> str:
    """The model a gRPC request names (MultiInference: its first task's)."""
    spec = getattr(request, "model_spec", None)
    if spec is None:
        tasks: Iterable[Any] = getattr(request, "tasks", ())
        spec = next(iter(tasks), None)
        spec = spec.model_spec if spec is not None else None
    return spec.name if spec is not None else ""
