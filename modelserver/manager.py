"""Model and version discovery, loading, unloading, states and request routing.

Mirrors TF Serving's ``FileSystemStoragePathSource`` + ``AvailabilityPreservingPolicy``: every
``--file_system_poll_wait_seconds`` each model's base path is listed, numeric children are
versions, the version policy picks the aspired ones, new aspired versions are loaded (highest
first) *before* un-aspired ones are unloaded, so a model never drops to zero versions while a
replacement is coming (and keeps its old version if the new one fails to load).

Request threads read immutable snapshots (``ModelManager.models`` and ``ServedModel.available``)
replaced wholesale on every change, so lookups never take the lock that loading holds. An
unloaded version leaves the snapshot at once but is closed only after a short drain, so a
request that looked it up just before keeps a working model.

A version is warmed up (``assets.extra/tf_serving_warmup_requests``) before it is published; a
version that fails to load or warm up is kept in the status history (END, with its error), never
replaces a serving one, and is quarantined (:mod:`modelserver.quarantine`): the version policy then
picks the newest versions that are not quarantined, so a corrupt version numbered above good
ones never keeps them from serving, also after a restart, until its files change.
:meth:`ModelManager.reload` is the declarative config reload that ``HandleReloadConfigRequest``
and ``--model_config_file_poll_wait_seconds`` share.

``model_platform: "auto"`` (an appliance extension) serves each version on the fastest runtime
that answers as the one its files call for (:mod:`modelserver.autoplatform`), so one model may
have a SavedModel version and an ONNX one; ``ServedModel.choices`` says which and why. Per-model settings (:mod:`modelserver.model_settings`) decide a model's warmup
and what its loads ask of the runtime; a changed precision or runtime option loads the model's
versions again, each old one serving until its replacement is ready.

A model's settings may name candidate versions (a shadow's or a rollout's, :meth:`ModelSettings.candidates`):
they are loaded on top of what the version policy picks among the other versions, and a request
that names no version never gets one while another version is available, so a candidate can be
loaded, compared and dropped without a client noticing.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from modelserver.core.choice import Choice
from modelserver.core.platforms import AUTO, detect_platform
from modelserver.core.status import Code, ServingError, invalid_argument, not_found
from modelserver import rollout
from modelserver.quarantine import Quarantine, fingerprint
from modelserver.runtimes import LoadedModel, LoadOptions, get_runtime

if TYPE_CHECKING:
    from modelserver.model_settings import ModelSettings

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"[+-]?\d+")
_INT64_MAX = 2 ** 63 - 1
# How long an unloaded version stays open for requests that looked it up just before it left
# the snapshot (they go from lookup to ``model.run`` in microseconds; this is ample).
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class WarmupOptions:
    """``--enable_model_warmup`` and ``--num_request_iterations_for_warmup``."""

    enabled: bool = True
    iterations: int = 1


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
    path: str = ""                    # its version directory


def quarantine_context(config: ModelConfig, load_context: str) -> str:
    """What keys a model's quarantine records: a version that failed to load on one platform or
    with one set of settings is tried again when they change."""
    return f"platform={config.platform} {load_context}"


class ServedModel:
    """A configured model: its version history and the snapshot requests read."""

    def __init__(self, config: ModelConfig, quarantine_dir: str | None = None, load_context: str = "",
                 settings: ModelSettings | None = None) -> None:
        self.config = config
        self.settings = settings   # its --model_settings_file entry; None: the global flags decide
        self.versions: dict[int, VersionState] = {}
        self.available: dict[int, VersionState] = {}   # replaced, never mutated
        self.labels: dict[str, int] = {}
        # Versions that failed to load: not chosen again until their files (or settings) change.
        self.quarantine = Quarantine(quarantine_dir, config.name, quarantine_context(config, load_context))
        # Every version on disk is quarantined: nothing for the version policy to choose.
        self.unservable = False
        # The runtime serving each loaded version directory, and why (modelserver.autoplatform).
        self.choices: dict[str, Choice] = {}
        self.default: int | None = None                # see choose_default

    def candidates(self) -> frozenset[int]:
        return self.settings.candidates() if self.settings is not None else frozenset()

    def publish(self) -> None:
        self.available = {v: s for v, s in self.versions.items() if s.state == "AVAILABLE"}
        self.choose_default()

    def choose_default(self) -> None:
        """The version a request naming none gets: the newest available that is no candidate,
        and under a ``specific`` policy one it names when one is loaded -- a new pin and new
        settings apply before the poll unloads what the pin dropped (a rollback that pins the
        stable and drops the candidate: no request meets the candidate in between)."""
        available, candidates = self.available, self.candidates()
        served = [v for v in available if v not in candidates]
        if self.config.policy == "specific":
            served = [v for v in served if v in self.config.versions] or served
        self.default = max(served, default=None)


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


def resolve_platform(model: ServedModel, path: str) -> str:
    """The platform that serves version directory ``path``: the model's, or with ``auto`` the
    one chosen when it loaded (else the one its files say)."""
    if model.config.platform != AUTO:
        return model.config.platform
    choice = model.choices.get(path)
    return choice.platform if choice is not None else (detect_platform(Path(path)) or AUTO)


def load_with_runtime(model: ServedModel, path: str, options: LoadOptions) -> LoadedModel:
    """Load ``path`` with the model's runtime, or the one ``auto`` chooses (the default
    ``ModelManager.loader``); the choice is kept in ``model.choices``."""
    from modelserver.autoplatform import load_auto

    if model.config.platform == AUTO:
        from modelserver.model_settings import AutoSettings

        settings = model.settings.auto if model.settings is not None else AutoSettings()
        loaded, choice = load_auto(path, options, settings)
    else:
        runtime = get_runtime(model.config.platform)
        runtime.check_options(options)
        loaded = runtime.load(path, options)
        choice = Choice(model.config.platform, options.precision, "configured")
    model.choices[path] = choice
    return loaded


def _status_of(exc: Exception) -> ServingError:
    """A failed load's status: the runtime's own, or UNKNOWN with the exception's text."""
    return exc if isinstance(exc, ServingError) else ServingError(Code.UNKNOWN, str(exc))


class ModelManager:
    """Owns every served model; one poll thread loads and unloads, request threads only read."""

    def __init__(self, configs: list[ModelConfig], options: LoadOptions, poll_wait_seconds: float,
                 load_threads: int, warmup: WarmupOptions | None = None,
                 quarantine_dir: str | None = None, settings: Mapping[str, ModelSettings] | None = None) -> None:
        self.options = options
        self.quarantine_dir = quarantine_dir or None
        self.poll_wait_seconds = poll_wait_seconds
        self.load_threads = max(load_threads, 1)
        # Loads one version directory; main.py swaps in one that also batches and counts loads.
        self.loader: Callable[[ServedModel, str, LoadOptions], LoadedModel] = load_with_runtime
        # Told the whole model set whenever settings may have changed (features.py: batching, metrics).
        self.on_settings: Callable[[Mapping[str, ServedModel]], None] = lambda models: None
        self.warmup = warmup or WarmupOptions()
        self.settings: dict[str, ModelSettings] = dict(settings or {})
        # SHA-256 of the config files the models follow (set by config_watch; {} without one).
        self.applied_files: dict[str, str] = {}
        self.models: dict[str, ServedModel] = {c.name: self._served(c) for c in configs}  # replaced, never mutated
        self.retired: dict[str, ServedModel] = {}   # removed by a reload; kept for their status history
        self._lock = threading.RLock()              # guards version states
        self._change_lock = threading.RLock()       # serialises polls and reloads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_missing: set[str] = set()

    def _retarget(self, model: ServedModel) -> None:
        """A change of what a load asks (platform, settings): versions that failed otherwise may load now."""
        model.quarantine.retarget(quarantine_context(model.config, self._load_context(model.settings)))

    def _served(self, config: ModelConfig) -> ServedModel:
        """A new model; the settings that decide a load key its quarantine (see modelserver.quarantine)."""
        settings = self.settings.get(config.name)
        return ServedModel(config, self.quarantine_dir, self._load_context(settings), settings)

    def _load_context(self, settings: ModelSettings | None) -> str:
        warmup = self.warmup.enabled if settings is None else settings.warmup
        context = f"tags={','.join(self.options.tags)} warmup={'on' if warmup else 'off'}"
        extra = settings.load_context() if settings is not None else ""
        return f"{context} {extra}" if extra else context

    def _load_options(self, settings: ModelSettings | None) -> LoadOptions:
        """What a load asks of the runtime: the flags', with a settings entry's precision and options."""
        if settings is None:
            return self.options
        return replace(self.options, precision=settings.precision, runtime_options=settings.runtime_options)

    # ---------------------------------------------------------------- lifecycle

    def load_initial(self) -> None:
        """Block until every model has its aspired versions loaded; raise on any failure.

        Models with no version on disk keep startup waiting, as TF Serving does.
        """
        if self._wait_available(list(self.models.values())):
            for model in self.models.values():
                if model.available:      # not: every version quarantined (see _wait_available)
                    self._apply_labels(model)

    def _wait_available(self, models: list[ServedModel], superseded: Callable[[], bool] | None = None) -> bool:
        """Poll ``models`` until each has an AVAILABLE version (False when stopped first, or
        when ``superseded()`` says a newer config waits: a model with no version on disk never
        becomes AVAILABLE, and the version poll loads it if one appears).

        Raises UNKNOWN ``N model(s) did not become available`` when every version of a model on
        disk failed to load (a newer failed version over an older good one serves the older
        one). A model whose versions were all quarantined before this call (by an earlier run
        of the server) is left out instead: the other models start serving, and it loads as
        soon as a new or changed version appears, rather than the server exiting at every
        start.
        """
        if any(self._warms_up(model) for model in models):
            # Here, before the load threads: one importing TensorFlow's runtime while another
            # imports the warmup's protos (which import TensorFlow) wait on each other's module
            # locks, and Python breaks that circle with a half-imported module (a failed load).
            from modelserver.warmup import import_protos

            import_protos()
        started = time.time()
        pending = {m.config.name: m for m in models}
        while pending:
            with self._change_lock, ThreadPoolExecutor(self.load_threads, thread_name_prefix="load") as pool:
                list(pool.map(self._poll_model, [pending[n] for n in sorted(pending)]))
            failures = []
            for name in sorted(pending):
                model = pending[name]
                if model.available or not model.unservable:
                    continue
                entries = model.quarantine.entries
                if all(e.since < started for e in entries.values()):
                    log.error("Model %s is not served: every version of it on disk is quarantined (%s); "
                              "it loads when a new or changed version appears",
                              name, "; ".join(f"version {n}: {e.describe()}" for n, e in sorted(entries.items())))
                    del pending[name]
                    continue
                for state in sorted(model.versions.values(), key=lambda s: s.version):
                    if state.error is not None:
                        failures.append(f"{{name: {name} version: {state.version}}} due to error: "
                                        f"{state.error.to_string()}")
            if failures:
                raise ServingError(Code.UNKNOWN, f"{len(failures)} model(s) did not become available: "
                                                 f"{{{', '.join(failures)}}}")
            pending = {n: m for n, m in pending.items() if not m.available}
            if pending and self._stop.wait(max(self.poll_wait_seconds, 1.0)):
                return False
            if pending and superseded is not None and superseded():
                log.info("No longer waiting for model(s) %s to become available: the config changed",
                         ", ".join(sorted(pending)))
                return False
        return True

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
                    with self._change_lock:
                        if self.models.get(model.config.name) is model:
                            self._poll_model(model)
                except Exception:  # noqa: BLE001 - one bad poll never stops polling
                    log.exception("polling model %s failed", model.config.name)

    # ---------------------------------------------------------------- config reload

    def reload(self, configs: list[ModelConfig], settings: Mapping[str, ModelSettings] | None = None,
               superseded: Callable[[], bool] | None = None) -> None:
        """Replace the model set (``ServerCore::ReloadConfig``), declaratively.

        Models missing from ``configs`` are unloaded; changed ones get their new policy and
        labels (labels first, and only onto versions AVAILABLE now, else FAILED_PRECONDITION);
        new ones are loaded, and this blocks until they are AVAILABLE, raising UNKNOWN
        ``N model(s) did not become available`` if one fails. Labels of new models are applied
        once they are loaded. ``settings`` replaces the per-model settings (None keeps them: a
        ``HandleReloadConfigRequest`` carries none); kept models whose settings changed get
        them applied (:meth:`_apply_settings`). ``superseded`` ends the wait when a newer config
        is there to apply (:meth:`_wait_available`).
        """
        with self._change_lock:
            if settings is not None:
                self.settings = dict(settings)
            current = self.models
            replatformed = set()
            for config in configs:
                old = current.get(config.name)
                if old is not None and old.config.platform != config.platform:
                    # TF Serving refuses this ("Illegal to change a model's platform"); here the
                    # versions load again on the new runtime, each old one serving meanwhile.
                    log.info("Model %s: platform %s -> %s; its versions load again on the new runtime",
                             config.name, old.config.platform, config.platform)
                    replatformed.add(config.name)
            added: list[ServedModel] = []
            kept: list[ServedModel] = []
            models: dict[str, ServedModel] = {}
            for config in configs:
                model = current.get(config.name)
                if model is None:
                    model = self.retired.pop(config.name, None) or self._served(config)
                    added.append(model)
                else:
                    kept.append(model)
                model.config = config
                model.choose_default()      # a new pin picks the version it names at once
                models[config.name] = model
            removed = [m for name, m in current.items() if name not in models]
            self.models = models
            for name in replatformed:
                self._retarget(models[name])
            reload_versions = [m for m in models.values()   # a retired one's settings may be old
                               if self._apply_settings(m) or m.config.name in replatformed]
            self.on_settings(models)
            for model in reload_versions:
                self._reload_versions(model)
            for model in removed:
                log.info("Model %s is no longer in the config; unloading it", model.config.name)
                for version in sorted(model.available):
                    self._unload(model, version)
                model.labels = {}
                self.retired[model.config.name] = model
            label_error: ServingError | None = None
            for model in kept:
                try:
                    self._apply_labels(model)
                except ServingError as exc:
                    label_error = label_error or exc
            for model in kept:
                self._poll_model(model)
            if label_error is not None:
                raise label_error
        if added and self._wait_available(added, superseded):
            for model in added:
                self._apply_labels(model)

    def _apply_settings(self, model: ServedModel) -> bool:
        """Give a model its current settings; True when its loaded versions must load again (a
        changed precision or runtime option: what the runtime was asked at load)."""
        old, new = model.settings, self.settings.get(model.config.name)
        if old == new:
            return False
        model.settings = new
        model.choose_default()
        self._retarget(model)
        log.info("Model %s: settings changed", model.config.name)
        if self._load_options(old) != self._load_options(new):
            return True
        return model.config.platform == AUTO and (old and old.auto) != (new and new.auto)

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
        quarantined = model.quarantine.refresh(config.base_path, on_disk)
        self._report_quarantined(model, quarantined)
        while True:
            # Each round that fails quarantines a version, so the next one picks older ones.
            candidates = model.candidates().intersection(on_disk).difference(quarantined)
            pool = [v for v in on_disk if v not in quarantined]
            if config.policy == "latest":   # a newer candidate must not push the served one out
                pool = [v for v in pool if v not in candidates]
            aspired = candidates | aspired_versions(config, pool)
            with self._lock:
                loaded = {v for v, s in model.versions.items() if s.state == "AVAILABLE"}
            failed = [v for v in sorted(aspired - loaded, reverse=True)
                      if not self._load(model, v, on_disk[v])]
            if not failed:
                break
            quarantined.update(failed)
        model.unservable = not aspired and bool(quarantined)
        with self._lock:
            loaded = {v for v, s in model.versions.items() if s.state == "AVAILABLE"}
            unaspired = sorted(loaded - aspired)
            keep_one = bool(aspired or quarantined) and not (loaded & aspired)
        for version in unaspired:
            if keep_one and len(loaded) == 1:
                break  # availability preserving: never drop the last version while others fail
            self._unload(model, version)
            loaded.discard(version)

    def _report_quarantined(self, model: ServedModel, quarantined: set[int]) -> None:
        """Recorded failures (an earlier run's) show in GetModelStatus as END with their error."""
        with self._lock:
            for number in quarantined:
                if number not in model.versions:
                    entry = model.quarantine.entries[number]
                    code = Code.__members__.get(entry.code, Code.UNKNOWN)
                    model.versions[number] = VersionState(number, "END", ServingError(code, entry.error))

    def _load(self, model: ServedModel, version: int, dirname: str) -> bool:
        """Load and publish one version; False when it failed (it is then quarantined)."""
        name = model.config.name
        path = os.path.join(model.config.base_path, dirname)
        files = fingerprint(path)      # before the load: files replaced meanwhile get a new try
        state = VersionState(version, state="LOADING", path=path)
        with self._lock:
            model.versions[version] = state
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        started = time.monotonic()
        try:
            loaded = self._instance(model, version, path)
        except Exception as exc:  # noqa: BLE001 - a failed load is a version state, not a crash
            error = _status_of(exc)
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error.to_string())
            # Recorded before the state says so: whoever sees END (status, the agent) finds the record.
            model.quarantine.add(version, dirname, files, error.code.name, error.message)
            with self._lock:
                state.state, state.error = "END", error
            log.error("Quarantined servable version {name: %s version: %d}: not loaded again until its files "
                      "change; the newest other version serves", name, version)
            return False
        with self._lock:
            state.model, state.state = loaded, "AVAILABLE"
            model.publish()
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs",
                 name, version, time.monotonic() - started)
        return True

    def _instance(self, model: ServedModel, version: int, path: str) -> LoadedModel:
        """Load ``path`` as the model's settings say and warm it up; the instance, or raise."""
        loaded = self.loader(model, path, self._load_options(model.settings))
        try:
            if self._warms_up(model):
                from modelserver.warmup import run_warmup

                run_warmup(loaded, version, path, self.warmup.iterations)
        except BaseException:
            loaded.close()
            raise
        return loaded

    def _warms_up(self, model: ServedModel) -> bool:
        return self.warmup.enabled if model.settings is None else model.settings.warmup

    def _reload_versions(self, model: ServedModel) -> None:
        """Load every AVAILABLE version of ``model`` again (its settings changed what a load asks
        of the runtime). Each old instance serves until its replacement is ready; one whose
        replacement fails keeps serving as it was loaded, and the failure is logged."""
        name = model.config.name
        on_disk = list_versions(model.config.base_path, name) or {}
        for version, state in sorted(model.available.items()):
            if version not in on_disk:
                continue
            log.info("Loading servable: {name: %s version: %d} again with its new settings", name, version)
            try:
                loaded = self._instance(model, version, os.path.join(model.config.base_path, on_disk[version]))
            except Exception as exc:  # noqa: BLE001 - the serving instance stays; the failure is logged
                error = _status_of(exc)
                log.error("Loading servable {name: %s version: %d} with its new settings failed: %s; it keeps "
                          "serving as loaded before", name, version, error.to_string())
                continue
            with self._lock:
                old, state.model = state.model, loaded
                state.cache.clear()
            self._close_later(name, version, old)
            log.info("Servable {name: %s version: %d} now serves with its new settings", name, version)

    def _close_later(self, name: str, version: int, loaded: LoadedModel | None,
                     then: Callable[[], None] = lambda: None) -> None:
        """Close ``loaded`` after :data:`DRAIN_SECONDS` (requests that looked it up just before
        still hold it), then call ``then``."""
        def close() -> None:
            if loaded is not None:
                try:
                    loaded.close()
                except Exception:  # noqa: BLE001 - a runtime's close failing must not kill the timer thread
                    log.exception("closing {name: %s version: %d} failed", name, version)
            then()
        timer = threading.Timer(DRAIN_SECONDS, close)
        timer.daemon = True
        timer.start()

    def _unload(self, model: ServedModel, version: int) -> None:
        """Unpublish now; close after :data:`DRAIN_SECONDS` (state UNLOADING until then)."""
        with self._lock:
            state = model.versions[version]
            state.state = "UNLOADING"
            model.publish()
        model.labels = {k: v for k, v in model.labels.items() if v != version}
        name = model.config.name
        log.info("Unloading servable version {name: %s version: %d}", name, version)
        self._close_later(name, version, state.model, lambda: self._finish_unload(name, state))

    def _finish_unload(self, name: str, state: VersionState) -> None:
        model = self.models.get(name) or self.retired.get(name)
        with self._lock:
            state.model, state.state = None, "END"
            state.cache.clear()
            if model is not None and all(s.path != state.path for s in model.available.values()):
                model.choices.pop(state.path, None)
        log.info("Done unloading servable version {name: %s version: %d}", name, state.version)

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
                chosen = rollout.choose(self.rollout_of(name), available, model.default)
                if chosen is None:   # the newest version that is no candidate (or the newest)
                    chosen = model.default if model.default in available else max(available)
                return available[chosen]
            raise not_found(f"Servable not found for request: Latest({name})")
        state = available.get(version)
        if state is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return state

    def rollout_of(self, name: str) -> tuple[int, float] | None:
        """The model's canary (candidate version, percent), or None (:mod:`modelserver.rollout`)."""
        model = self.models.get(name)
        return model.settings.rollout if model is not None and model.settings is not None else None

    def runtimes(self) -> dict[str, dict[str, Any]]:
        """Each model's AVAILABLE versions: the runtime serving it and why (``GET /appliance/v1/runtimes``)."""
        out: dict[str, dict[str, Any]] = {}
        for name, model in sorted(self.models.items()):
            rows = {str(v): model.choices[s.path].to_json() for v, s in sorted(model.available.items())
                    if s.path in model.choices}
            out[name] = {"platform": model.config.platform, "versions": rows}
        return out

    def status_proto(self, name: str, version: int | None = None) -> Any:
        """GetModelStatusResponse for one model (all versions, or one): REST and gRPC share it."""
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.version_states(name, version):
            row = response.model_version_status.add()
            row.version = state.version
            row.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            row.status.SetInParent()
            if state.error is not None:
                row.status.error_code = int(state.error.code)
                row.status.error_message = state.error.message
        return response

    def version_states(self, name: str, version: int | None = None) -> list[VersionState]:
        """Rows for GetModelStatus, newest first; historical (END) versions included."""
        model = self.models.get(name) or self.retired.get(name)
        with self._lock:
            states = sorted(model.versions.values(), key=lambda s: -s.version) if model else []
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            states = [s for s in states if s.version == version]
            if not states:
                raise not_found(f"Could not find version {version} of model {name}")
        return states
