"""Model and version discovery, loading, unloading, states and request routing.

Mirrors TF Serving's ``FileSystemStoragePathSource`` + ``AvailabilityPreservingPolicy``: every
``--file_system_poll_wait_seconds`` each model's base path is listed, numeric children are
versions, the version policy picks the aspired ones, new aspired versions are loaded (highest
first) *before* un-aspired ones are unloaded, so a model never drops to zero versions while a
replacement is coming (and keeps its old version if the new one fails to load).

Request threads read an immutable snapshot (``ServedModel.available``) replaced wholesale on
every change, so lookups never take the lock that loading holds.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from appliance.modelserver.status import Code, ServingError, invalid_argument, not_found
from appliance.runtimes import LoadedModel, LoadOptions, get_runtime

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"[+-]?\d+")
_INT64_MAX = 2 ** 63 - 1


@dataclass(frozen=True)
class ModelConfig:
    """One ``ModelConfig`` of a ModelServerConfig, or the ``--model_name``/``--model_base_path`` pair."""

    name: str
    base_path: str
    platform: str = "tensorflow"
    policy: str = "latest"            # latest | all | specific
    num_versions: int = 1             # for latest
    versions: tuple[int, ...] = ()    # for specific
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class VersionState:
    """One version of one model: a row of GetModelStatusResponse, plus the loaded model."""

    version: int
    state: str = "START"              # START -> LOADING -> AVAILABLE -> UNLOADING -> END
    error: ServingError | None = None
    model: LoadedModel | None = None
    cache: dict[str, Any] = field(default_factory=dict)   # per-version response caches (metadata)


class ServedModel:
    """A configured model: its version history and the snapshot requests read."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.versions: dict[int, VersionState] = {}
        self.available: dict[int, VersionState] = {}   # replaced, never mutated
        self.labels: dict[str, int] = {}
        self.failed_on_disk: set[int] = set()           # not retried until the directory goes away

    def publish(self) -> None:
        self.available = {v: s for v, s in self.versions.items() if s.state == "AVAILABLE"}


def list_versions(base_path: str, model_name: str) -> dict[int, str] | None:
    """Numeric children of ``base_path`` (``00000123`` is 123); None when the path is missing."""
    try:
        entries = os.listdir(base_path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    found: dict[int, str] = {}
    for entry in sorted(entries):
        if not _VERSION_RE.fullmatch(entry):
            continue
        version = int(entry)
        if not 0 <= version <= _INT64_MAX or not os.path.isdir(os.path.join(base_path, entry)):
            continue
        if version in found:
            log.warning("model %s: version %d is listed twice (%s and %s); using %s",
                        model_name, version, found[version], entry, entry)
        found[version] = entry
    return found


def aspired_versions(config: ModelConfig, on_disk: Iterable[int]) -> set[int]:
    """The versions the version policy wants served."""
    present = sorted(on_disk, reverse=True)
    if config.policy == "all":
        return set(present)
    if config.policy == "specific":
        missing = set(config.versions) - set(present)
        if missing:
            log.warning("model %s: specific version(s) %s not found under %s", config.name,
                        ", ".join(map(str, sorted(missing))), config.base_path)
        return set(config.versions) & set(present)
    return set(present[:max(config.num_versions, 1)])


class ModelManager:
    """Owns every served model; one poll thread loads and unloads, request threads only read."""

    def __init__(self, configs: list[ModelConfig], options: LoadOptions, poll_wait_seconds: float,
                 load_threads: int) -> None:
        self.options = options
        self.poll_wait_seconds = poll_wait_seconds
        self.load_threads = max(load_threads, 1)
        self.models: dict[str, ServedModel] = {c.name: ServedModel(c) for c in configs}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_missing: set[str] = set()

    # ---------------------------------------------------------------- lifecycle

    def load_initial(self) -> None:
        """Block until every model has its aspired versions loaded; raise on any failure.

        Models with no version on disk keep startup waiting, as TF Serving does.
        """
        pending = set(self.models)
        while pending:
            with ThreadPoolExecutor(self.load_threads, thread_name_prefix="load") as pool:
                list(pool.map(self._poll_model, [self.models[n] for n in sorted(pending)]))
            failures = []
            for name in sorted(pending):
                model = self.models[name]
                for state in sorted(model.versions.values(), key=lambda s: s.version):
                    if state.error is not None:
                        failures.append(f"{{name: {name} version: {state.version}}} due to error: "
                                        f"{state.error.to_string()}")
            if failures:
                raise ServingError(Code.UNKNOWN, f"{len(failures)} model(s) did not become available: "
                                                 f"{{{', '.join(failures)}}}")
            pending = {n for n in pending if not self.models[n].available}
            if pending:
                if self._stop.wait(max(self.poll_wait_seconds, 1.0)):
                    return
        for model in self.models.values():
            self._apply_labels(model)

    def start_polling(self) -> None:
        """Poll base paths in the background (not when ``--file_system_poll_wait_seconds`` <= 0)."""
        if self.poll_wait_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="version-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            for model in list(self.models.values()):
                try:
                    self._poll_model(model)
                except Exception:  # noqa: BLE001 - one bad poll never stops polling
                    log.exception("polling model %s failed", model.config.name)

    # ---------------------------------------------------------------- versions

    def _poll_model(self, model: ServedModel) -> None:
        config = model.config
        on_disk = list_versions(config.base_path, config.name)
        if on_disk is None:
            if config.name not in self._warned_missing:
                log.error("Could not find base path %s for servable %s", config.base_path, config.name)
                self._warned_missing.add(config.name)
            on_disk = {}
        else:
            self._warned_missing.discard(config.name)
            if not on_disk:
                log.warning("No versions of servable %s found under base path %s. Did you forget to name "
                            "your leaf directory as a number (eg. '/1/')?", config.name, config.base_path)
        model.failed_on_disk &= set(on_disk)
        aspired = aspired_versions(config, on_disk)
        with self._lock:
            loaded = {v for v, s in model.versions.items() if s.state == "AVAILABLE"}
        for version in sorted(aspired - loaded - model.failed_on_disk, reverse=True):
            self._load(model, version, os.path.join(config.base_path, on_disk[version]))
        with self._lock:
            loaded = {v for v, s in model.versions.items() if s.state == "AVAILABLE"}
            unaspired = sorted(loaded - aspired)
            keep_one = bool(aspired) and not (loaded & aspired)
        for version in unaspired:
            if keep_one and len(loaded) == 1:
                break  # availability preserving: never drop the last version while others fail
            self._unload(model, version)
            loaded.discard(version)

    def _load(self, model: ServedModel, version: int, path: str) -> None:
        name = model.config.name
        state = VersionState(version, state="LOADING")
        with self._lock:
            model.versions[version] = state
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        started = time.monotonic()
        try:
            loaded = get_runtime(model.config.platform).load(path, self.options)
        except Exception as exc:  # noqa: BLE001 - a failed load is a version state, not a crash
            error = exc if isinstance(exc, ServingError) else ServingError(Code.UNKNOWN, str(exc))
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error.to_string())
            with self._lock:
                state.state, state.error = "END", error
                model.failed_on_disk.add(version)
            return
        with self._lock:
            state.model, state.state = loaded, "AVAILABLE"
            model.publish()
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs",
                 name, version, time.monotonic() - started)

    def _unload(self, model: ServedModel, version: int) -> None:
        with self._lock:
            state = model.versions[version]
            state.state = "UNLOADING"
            model.publish()
        log.info("Unloading servable version {name: %s version: %d}", model.config.name, version)
        if state.model is not None:
            state.model.close()
        with self._lock:
            state.model, state.state = None, "END"
            state.cache.clear()
        model.labels = {k: v for k, v in model.labels.items() if v != version}

    def _apply_labels(self, model: ServedModel) -> None:
        for label, version in model.config.labels.items():
            if version not in model.available:
                raise ServingError(Code.FAILED_PRECONDITION,
                                   f"Request to assign label to version {version} of model {model.config.name}, "
                                   "which is not currently available for inference")
        model.labels = dict(model.config.labels)

    # ---------------------------------------------------------------- requests

    def lookup(self, name: str, version: int | None = None, label: str | None = None) -> VersionState:
        """The servable version a request names (``ServerCore::GetServableHandle``)."""
        model = self.models.get(name)
        if label is not None:
            resolved = model.labels.get(label) if model is not None else None
            if resolved is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = resolved
        available = model.available if model is not None else {}
        if version is None:
            if available:
                return available[max(available)]
            raise not_found(f"Servable not found for request: Latest({name})")
        state = available.get(version)
        if state is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return state

    def version_states(self, name: str, version: int | None = None) -> list[VersionState]:
        """Rows for GetModelStatus, newest first; historical (END) versions included."""
        model = self.models.get(name)
        with self._lock:
            states = sorted(model.versions.values(), key=lambda s: -s.version) if model else []
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            states = [s for s in states if s.version == version]
            if not states:
                raise not_found(f"Could not find version {version} of model {name}")
        return states
