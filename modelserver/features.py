"""Monitoring and batching, read from their flags once and wired into the server from one place.

``main.py`` asks this module three things: the Prometheus page path (or None), the loader the
manager uses for every version (runtime load + load metrics + batching + runtime timing), and
the inference thread pool (a caller waiting for its batch holds a thread, so batching needs
more of them than the CPU count).

Per-model settings (``--model_settings_file``) are applied here whenever the manager's model set
or settings change (:meth:`ServerFeatures.apply_settings`): a model with an entry gets its own
batch scheduler (or none), a model without one the global flags' scheduler; a changed batching
swaps the scheduler of every loaded version in place (no reload; queued calls still run on the
old one), and ``"metrics": false`` mutes the model's metrics at once.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from modelserver import monitoring
from modelserver.batching import BatchingModel, BatchScheduler
from modelserver.config_protos import (FLAG_ONLY_BATCHING, BatchingSettings, MonitoringSettings,
                                       read_batching_parameters, read_monitoring_config)
from modelserver.manager import ServedModel, load_with_runtime, resolve_platform
from modelserver.core.status import Code, ServingError
from modelserver.runtimes import LoadedModel, LoadOptions

if TYPE_CHECKING:
    from modelserver.flags import Options
    from modelserver.manager import ModelManager

log = logging.getLogger(__name__)

# Callers waiting in batch queues each hold an inference thread; beyond this many the pool stops
# growing (threads are started only when needed, so a high cap costs nothing when idle).
MAX_BATCH_WAITERS = 512


class InferencePool(ThreadPoolExecutor):
    """The inference thread pool, whose cap can be raised while it serves: batching turned on
    for a model at run time needs room for the callers waiting in its batches.

    ``ThreadPoolExecutor`` starts a thread per submit while it has fewer than ``_max_workers``
    (CPython 3.8 to 3.13 alike); raising that attribute is all growing takes.
    ``tests/unit/test_modelserver_settings.py`` pins it.
    """

    def grow(self, workers: int) -> None:
        self._max_workers = max(self._max_workers, workers)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` in the caller's context (``run_in_executor`` does not carry it): the
        request's metrics slot (:func:`monitoring.request_started`) reaches the model run."""
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class ServerFeatures:
    """What ``--monitoring_config_file``, ``--enable_batching`` and ``--batching_parameters_file``
    ask for, and each model's batching and metrics from its settings."""

    def __init__(self, monitoring_settings: MonitoringSettings, batching: BatchingSettings | None) -> None:
        self.monitoring = monitoring_settings
        self.batching = batching                                # the flags': models without settings
        self._global: BatchScheduler | None = None              # its scheduler, started by attach
        self._schedulers: dict[str, BatchScheduler] = {}        # models whose settings batch them
        self._pool: InferencePool | None = None
        self._base_threads = 0

    @classmethod
    def from_options(cls, options: Options) -> ServerFeatures:
        """Read and validate the config files; raises ``ConfigFileError`` or ``ServingError``."""
        if options.batching_parameters_file and not options.enable_batching:
            raise ServingError(Code.INVALID_ARGUMENT,
                               "server_options.batching_parameters_file is set without setting "
                               "server_options.enable_batching to true.")
        batching = None
        if options.enable_batching:
            batching = (read_batching_parameters(options.batching_parameters_file)
                        if options.batching_parameters_file else FLAG_ONLY_BATCHING)
        settings = MonitoringSettings()
        if options.monitoring_config_file:
            settings = read_monitoring_config(options.monitoring_config_file)
            if settings.prometheus_path and options.rest_api_port <= 0:
                log.warning("Prometheus metrics are enabled but --rest_api_port is not set: they are not served")
        return cls(settings, batching)

    def executor(self, base: int) -> InferencePool:
        """The inference pool: ``base`` threads, plus room for the callers batching makes wait."""
        self._base_threads = base
        self._pool = InferencePool(self.executor_threads(base), thread_name_prefix="runtime")
        return self._pool

    def executor_threads(self, base: int) -> int:
        batchings = [*([self.batching] if self.batching else []), *(s.settings for s in self._schedulers.values())]
        return base + min(sum(2 * b.max_batch_size for b in batchings), MAX_BATCH_WAITERS)

    def attach(self, manager: ModelManager) -> None:
        """Give ``manager`` the loader with metrics (and batching), the versions gauge, and the
        settings hook; apply the settings it starts with."""
        monitoring.collect(self.monitoring.prometheus_path is not None)
        monitoring.watch_manager(manager)
        if self.batching is not None:
            self._global = BatchScheduler(self.batching)
        manager.loader = self._load
        manager.on_settings = self.apply_settings
        self.apply_settings(manager.models)

    def _load(self, model: ServedModel, path: str, options: LoadOptions) -> LoadedModel:
        start = time.perf_counter()
        resident = monitoring.resident_bytes()
        try:
            loaded = load_with_runtime(model, path, options)
        except Exception:
            monitoring.record_load(path, False, start)
            raise
        monitoring.record_load(path, True, start)
        resident = max(0, monitoring.resident_bytes() - resident)
        scheduler = self._scheduler(model)
        if scheduler is not None:
            loaded = scheduler.wrap(loaded)
        dirname = os.path.basename(os.path.normpath(path))
        return monitoring.InstrumentedModel(loaded, model.config.name, resolve_platform(model, path),
                                            str(int(dirname)) if dirname.isdigit() else dirname, resident)

    def _scheduler(self, model: ServedModel) -> BatchScheduler | None:
        """The scheduler a model's versions go through: its own, none, or the flags' one."""
        if model.settings is None:
            return self._global
        return self._schedulers.get(model.config.name)

    @staticmethod
    def _wanted(name: str, model: ServedModel | None) -> BatchingSettings | None:
        if model is None or model.settings is None or model.settings.batching is None:
            return None
        return replace(model.settings.batching, thread_pool_name=f"{name}_batch_threads")

    def apply_settings(self, models: Mapping[str, ServedModel]) -> None:
        """Bring metrics and batching in line with every model's settings, without a reload."""
        monitoring.mute(frozenset(name for name, model in models.items()
                                  if model.settings is not None and not model.settings.metrics))
        retired = [self._schedulers.pop(name) for name, scheduler in list(self._schedulers.items())
                   if scheduler.settings != self._wanted(name, models.get(name))]
        for name, model in models.items():
            wanted = self._wanted(name, model)
            if wanted is not None and name not in self._schedulers:
                self._schedulers[name] = BatchScheduler(wanted, model_name=name)
            for state in list(model.available.values()):
                self._rebatch(model, state.model)
        for scheduler in retired:
            scheduler.stop()
        if self._pool is not None:
            self._pool.grow(self.executor_threads(self._base_threads))

    def _rebatch(self, model: ServedModel, loaded: LoadedModel | None) -> None:
        """Put one loaded version on the model's scheduler now; the old queues drain meanwhile."""
        if not isinstance(loaded, monitoring.InstrumentedModel):
            return
        current = loaded.inner
        batched = current if isinstance(current, BatchingModel) else None
        scheduler = self._scheduler(model)
        if (batched.scheduler if batched else None) is scheduler:
            return
        raw = batched.inner if batched else current
        loaded.swap_inner(scheduler.wrap(raw) if scheduler is not None else raw)
        if batched is not None:
            batched.detach()
        log.info("Model %s version at %s: batching %s", model.config.name, loaded.path,
                 "off" if scheduler is None else f"on (max_batch_size {scheduler.max_batch_size})")
