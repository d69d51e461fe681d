"""The local model store (``<store>/<name>/<version>/``) and what the model server says of it.

Files come from disk through :mod:`logviewer.safepath` (a model directory that is a symlink
out of the store is listed but never browsed). Versions' states and signatures come from the
model server's TF Serving REST API: ``GET /v1/models/<name>`` and
``GET /v1/models/<name>/versions/<v>/metadata``; the runtime serving each version and why
from ``GET /appliance/v1/runtimes``; which versions the model server quarantined
(failed to load, not tried again until their files change) from its record
(:mod:`modelserver.quarantine`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from modelserver import quarantine
from modelserver.core.choice import Choice
from modelserver.core.platforms import is_version_name, version_dirs
from appliance.modelstatus import ModelServerClient

from . import safepath



@dataclass
class VersionInfo:
    version: str
    on_disk: bool = False
    size: int = 0
    files: int = 0
    mtime: float = 0.0
    state: str = ""          # from the model server: AVAILABLE, LOADING, END, ... or ""
    error: str = ""
    dirname: str = ""        # its directory in the store ("00000123" for version 123)
    quarantined: str = ""    # "quarantined since <time>: <reason>", or ""
    runtime: Choice | None = None   # what serves it and why (platform auto's measurement)

    @property
    def serving(self) -> bool:
        return self.state == "AVAILABLE"


@dataclass
class ModelInfo:
    name: str
    configured: bool = False
    browsable: bool = True   # False: its directory is a symlink out of the store
    versions: list[VersionInfo] = field(default_factory=list)
    server_status: str = ""  # "ok", "unreachable", "HTTP 404: ..." ...

    @property
    def serving_versions(self) -> list[str]:
        return [v.version for v in self.versions if v.serving]

    @property
    def size(self) -> int:
        return sum(v.size for v in self.versions)

    @property
    def quarantined_versions(self) -> list[VersionInfo]:
        return [v for v in self.versions if v.quarantined]


def _tree_size(path: Path, limit: int = 100_000) -> tuple[int, int, float]:
    size = files = 0
    newest = 0.0
    for _, st in safepath.walk_files(path, max_depth=12, limit=limit):
        size += st.st_size
        files += 1
        newest = max(newest, st.st_mtime)
    return size, files, newest


class ModelStore:
    def __init__(self, store: Path, configured: tuple[str, ...], rest_base: str,
                 quarantine_dir: Path | None = None) -> None:
        self.store = store
        self.configured = configured
        self.server = ModelServerClient(rest_base, timeout=2.0)
        self.quarantine_dir = quarantine_dir

    # ------------------------------------------------------------------ disk

    def names(self) -> list[str]:
        found = set(self.configured)
        try:
            for entry in os.scandir(self.store):
                if not entry.name.startswith(".") and entry.is_dir():
                    found.add(entry.name)
        except OSError:
            pass
        return sorted(found)

    def model_dir(self, name: str) -> Path | None:
        """The model's directory if it exists inside the store (None: missing or outside)."""
        try:
            return safepath.resolve_dir(self.store, name) if "/" not in name else None
        except safepath.Refused:
            return None

    def disk_versions(self, name: str) -> dict[str, VersionInfo]:
        directory = self.model_dir(name)
        versions: dict[str, VersionInfo] = {}
        if directory is None:
            return versions
        for entry in version_dirs(directory):
            version = str(int(entry.name))     # TF Serving's number: "00000123" is 123
            if version in versions:
                continue
            try:
                inside = safepath.resolve_dir(self.store, f"{name}/{entry.name}")
            except safepath.Refused:
                continue
            size, files, mtime = _tree_size(inside)
            versions[version] = VersionInfo(version, True, size, files, mtime, dirname=entry.name)
        return versions

    def version_dir(self, name: str, version: str) -> str | None:
        """The directory name of ``version`` (a number) in the model's store dir."""
        directory = self.model_dir(name)
        if directory is None or not is_version_name(version):
            return None
        return next((p.name for p in version_dirs(directory) if int(p.name) == int(version)), None)

    def files(self, name: str, dirname: str) -> list[tuple[str, int, float]]:
        directory = safepath.resolve_dir(self.store, f"{name}/{dirname}")
        return [(rel, st.st_size, st.st_mtime)
                for rel, st in safepath.walk_files(directory, max_depth=12, limit=10_000)]

    # ------------------------------------------------------------------ model server

    def server_versions(self, name: str) -> tuple[str, list[dict]]:
        answer = self.server.status(name)
        if answer.code == 0:
            return "unreachable", []
        if not answer.reported:
            return f"HTTP {answer.code}: {answer.error}"[:300], []
        return "ok", answer.versions

    def model(self, name: str) -> ModelInfo:
        info = ModelInfo(name, configured=name in self.configured,
                         browsable=self.model_dir(name) is not None)
        versions = self.disk_versions(name)
        status, reported = self.server_versions(name) if info.configured else ("not configured", [])
        info.server_status = status
        choices = (self.server.runtimes() or {}).get(name, {}) if reported else {}
        for entry in reported:
            version = str(entry.get("version", ""))
            v = versions.setdefault(version, VersionInfo(version))
            v.state = str(entry.get("state", ""))
            v.error = str((entry.get("status") or {}).get("error_message", ""))
            v.runtime = choices.get(int(version)) if version.isdigit() else None
        directory = self.model_dir(name)
        if directory is not None:
            for number, entry in quarantine.current(self.quarantine_dir, name, directory).items():
                versions.setdefault(str(number), VersionInfo(str(number))).quarantined = entry.describe()
        info.versions = sorted(versions.values(), key=lambda v: int(v.version) if v.version.isdigit() else -1,
                               reverse=True)
        return info

    def metadata(self, name: str, version: str) -> tuple[str, dict]:
        """(status, signatures) of one version: {signature name: {inputs, outputs, method}}."""
        code, body = self.server.metadata(name, version)
        if code == 0:
            return "unreachable", {}
        if code != 200 or not isinstance(body, dict):
            error = body.get("error", "") if isinstance(body, dict) else str(body)
            return f"HTTP {code}: {error}"[:300], {}
        return "ok", parse_signatures(body)


def _shape(tensor: dict) -> str:
    shape = tensor.get("tensor_shape") or {}
    if shape.get("unknown_rank"):
        return "unknown rank"
    dims = [str(d.get("size", "?")) for d in shape.get("dim", [])]
    return "(" + ", ".join("None" if d == "-1" else d for d in dims) + ("," if len(dims) == 1 else "") + ")"


def parse_signatures(body: dict) -> dict:
    """TF Serving's GetModelMetadata JSON -> {name: {"method", "inputs", "outputs"}}."""
    sigdefs = (((body.get("metadata") or {}).get("signature_def") or {}).get("signature_def") or {})
    out: dict = {}
    for sig_name in sorted(sigdefs):
        sig = sigdefs[sig_name] or {}
        entry = {"method": sig.get("method_name", ""), "inputs": [], "outputs": []}
        for side in ("inputs", "outputs"):
            for key in sorted(sig.get(side) or {}):
                tensor = sig[side][key] or {}
                entry[side].append({"key": key, "dtype": tensor.get("dtype", ""),
                                    "shape": _shape(tensor), "name": tensor.get("name", "")})
        out[sig_name] = entry
    return out
