"""Cluster-wide model settings: one document in the model repository that every node applies.

Each node applies its own config file; a change that must reach every node at once (a canary
rollout's split, a shadow, a rollback) is written instead to one document in the repository
every node already reads, ``<model.base.path>/.appliance/settings.json`` (the repo node's object
store, a cloud bucket, or the local repository directory of a single node; the leading dot keeps
it out of the model listing)::

    {"format": "appliance-fleet/1", "revision": 7, "updated": "2026-12-01T23:50:00Z",
     "why": "rollout of resnet v2: step 2 (5%)",
     "models": {"resnet": {"rollout.version": 2, "rollout.percent": 5}}}

``models.<name>`` holds keys relative to ``models.<name>`` (the names of
:mod:`appliance.modelsettings`); a key missing there is the node's own setting again. Every
node's agent polls the document (:data:`POLL_SECONDS`, :mod:`appliance.agent.fleetwatch`) and,
when its revision changed, applies it through :mod:`appliance.control` as ``--set`` overrides
layered over the node's own ones (:func:`layered`); a copy of the applied document stays in the
run dir, so it survives agent restarts and every later ``up``/``reload``/``models set`` keeps it.
A node that joins later applies it on its agent's first poll. Each agent reports what it applied
(and its per-version request counts while a rollout runs) in ``.appliance/nodes/<node.name>.json``
(:func:`node_report_key`).

Writers: ``appliance fleet set|unset``, ``appliance rollout ...`` (its controller) and
``appliance shadow ...`` through :meth:`Fleet.push`. A push is read-modify-write of one object:
S3 has no compare-and-swap on every store we support, so two writers at the same instant may
lose one change; a rollout has one controller, and a CLI push says which revision it wrote.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from modelserver.atomic import write_atomic

from .config import Config, NodePaths
from .errors import ApplianceError, SourceError

log = logging.getLogger(__name__)

FORMAT = "appliance-fleet/1"
PREFIX = ".appliance/"
DOCUMENT = PREFIX + "settings.json"
POLL_SECONDS = 0.25          # how often each agent reads the document
_LOCAL = "fleet-settings.json"   # the applied copy, in the run dir


@dataclass(frozen=True)
class FleetSettings:
    """One revision of the cluster-wide settings (revision 0: none were ever pushed)."""

    revision: int = 0
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    updated: str = ""
    why: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "revision": self.revision, "updated": self.updated,
                           "why": self.why, "models": {n: dict(v) for n, v in self.models.items()}},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, data: bytes | str, where: str) -> "FleetSettings":
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            models = {str(n): {str(k): v for k, v in dict(s).items()} for n, s in doc["models"].items()}
            return cls(int(doc["revision"]), models, str(doc.get("updated", "")), str(doc.get("why", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ApplianceError(f"the cluster settings {where} cannot be read: {exc}") from None

    def overrides(self, names: Iterable[str]) -> list[str]:
        """The ``--set`` overrides for a node serving ``names`` (other models' entries skipped:
        a node validates settings of the models it serves only)."""
        served = set(names)
        return [f"models.{name}.{key}={_text(value)}"
                for name, settings in sorted(self.models.items()) if name in served
                for key, value in sorted(settings.items())]

    def keys(self) -> set[str]:
        return {f"models.{name}.{key}" for name, settings in self.models.items() for key in settings}

    def model(self, name: str) -> Mapping[str, Any]:
        return self.models.get(name, {})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Fleet:
    """The repository's ``.appliance/`` objects: the settings document and what nodes report."""

    def __init__(self, source: Any) -> None:   # a sources.ModelSource
        self.source = source

    @classmethod
    def of_node(cls, config: Config, call_seconds: float | None = None,
                paths: NodePaths | None = None) -> "Fleet":
        """The repository this node's models come from; on a repo node, its own object store."""
        from .sources import open_source

        paths = paths or NodePaths(Path("/"))
        if config.node.role == "repo" and config.s3.type == "none":
            from . import objectstore

            return cls(objectstore.store_source(config, objectstore.ensure_credentials(config, paths),
                                                call_seconds))
        return cls(open_source(config, paths, call_seconds=call_seconds))

    # -------------------------------------------------------------- objects

    def read_object(self, key: str) -> bytes | None:
        """``.appliance/<key>``'s bytes, or None when it does not exist (SourceError otherwise)."""
        full = key if key.startswith(PREFIX) else PREFIX + key
        try:
            return self.source._read_small(full)
        except FileNotFoundError:
            return None
        except SourceError as exc:
            if _missing(exc):
                return None
            raise

    def write_object(self, key: str, data: bytes) -> None:
        self.source._put_bytes(key if key.startswith(PREFIX) else PREFIX + key, data)

    def list_objects(self, prefix: str) -> list[str]:
        """Keys under ``.appliance/<prefix>`` (relative to ``.appliance/``)."""
        return sorted(key[len(PREFIX):] for key, _, _ in self.source._list(PREFIX + prefix))

    # -------------------------------------------------------------- the settings document

    def read(self) -> FleetSettings:
        data = self.read_object(DOCUMENT)
        return FleetSettings() if data is None else FleetSettings.from_json(data, DOCUMENT)

    def push(self, model: str, set_values: Mapping[str, Any] | None = None,
             unset: Iterable[str] = (), why: str = "") -> FleetSettings:
        """Set ``set_values`` and drop ``unset`` (keys relative to ``models.<model>``, e.g.
        ``{"rollout.percent": 5}``) in the cluster settings; the new revision, as written.
        Every node applies it within about a second (:func:`wait_applied` waits for that)."""
        current = self.read()
        models = {n: dict(s) for n, s in current.models.items()}
        entry = models.setdefault(model, {})
        for key in unset:
            entry.pop(key, None)
        entry.update(set_values or {})
        if not entry:
            del models[model]
        new = FleetSettings(current.revision + 1, models, _now(), why)
        self.write_object(DOCUMENT, new.to_json().encode())
        log.info("cluster settings revision %d: %s", new.revision, why or "(no reason given)")
        return new

    # -------------------------------------------------------------- node reports

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every node's last report (:func:`node_report_key`), by node name."""
        out = {}
        for key in self.list_objects("nodes/"):
            data = self.read_object(key)
            try:
                doc = json.loads(data or b"")
            except ValueError:
                continue
            if isinstance(doc, dict):
                out[str(doc.get("node", key))] = doc
        return out

    def wait_applied(self, revision: int, nodes: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        """Wait until every node in ``nodes`` reports ``revision`` applied; the nodes that did not
        (or failed to), with what they said. Empty means every node applied it."""
        wanted = set(nodes)
        deadline = time.monotonic() + timeout
        while True:
            late = {}
            for name, doc in self.reports().items():
                if name in wanted and (int(doc.get("revision", 0)) < revision or doc.get("error")):
                    late[name] = doc.get("error") or f"at revision {doc.get('revision', 0)}"
            late.update({n: "no report" for n in wanted - set(self.reports())})
            if not late or time.monotonic() >= deadline:
                return late
            time.sleep(0.1)


def node_report_key(node_name: str) -> str:
    return f"{PREFIX}nodes/{node_name}.json"


def _missing(exc: SourceError) -> bool:
    text = str(exc)
    return "NoSuchKey" in text or "404" in text or "Not Found" in text


# ----------------------------------------------------------------------------- on the node


def local_path(paths: NodePaths) -> Path:
    return paths.run / _LOCAL


def applied(paths: NodePaths) -> FleetSettings:
    """The cluster settings this node applied last (revision 0 when none)."""
    try:
        return FleetSettings.from_json(local_path(paths).read_bytes(), str(local_path(paths)))
    except (FileNotFoundError, ApplianceError):
        return FleetSettings()


def record_applied(paths: NodePaths, settings: FleetSettings) -> None:
    paths.run.mkdir(parents=True, exist_ok=True)
    write_atomic(local_path(paths), settings.to_json(), mode=0o600)


def layered(paths: NodePaths, overrides: Iterable[str], names: Iterable[str],
            previous: FleetSettings | None = None, current: FleetSettings | None = None) -> list[str]:
    """The node's own overrides (without keys the cluster settings ``previous`` set: those are
    the cluster's, not the user's) followed by ``current``'s for the models in ``names``; both
    default to what the node applied last. A key in both wins for the cluster settings."""
    previous = applied(paths) if previous is None else previous
    current = previous if current is None else current
    owned = previous.keys() | current.keys()
    own = [o for o in overrides if o.partition("=")[0].strip() not in owned]
    return own + current.overrides(names)
