"""Monitoring and batching, read from their flags once and wired into the server from one place.

``main.py`` asks this module three things: the Prometheus page path (or None), the loader the
manager uses for every version (runtime load + load metrics + batching + runtime timing), and
how many inference threads the server needs (a caller waiting for its batch holds a thread, so
batching needs more of them than the CPU count).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from modelserver import monitoring
from modelserver.config_protos import (FLAG_ONLY_BATCHING, BatchingSettings, MonitoringSettings,
                                                 read_batching_parameters, read_monitoring_config)
from modelserver.manager import ModelConfig, load_with_runtime
from modelserver.core.status import Code, ServingError
from modelserver.runtimes import LoadedModel, LoadOptions

if TYPE_CHECKING:
    from modelserver.flags import Options
    from modelserver.manager import ModelManager

log = logging.getLogger(__name__)

# Callers waiting in batch queues each hold an inference thread; beyond this many the pool stops
# growing (threads are started only when needed, so a high cap costs nothing when idle).
MAX_BATCH_WAITERS = 512


@dataclass
class ServerFeatures:
    """What ``--monitoring_config_file``, ``--enable_batching`` and ``--batching_parameters_file`` ask for."""

    monitoring: MonitoringSettings
    batching: BatchingSettings | None

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
        return cls(monitoring=settings, batching=batching)

    def executor_threads(self, base: int) -> int:
        if self.batching is None:
            return base
        return base + min(self.batching.max_batch_size * 2, MAX_BATCH_WAITERS)

    def attach(self, manager: ModelManager) -> None:
        """Give ``manager`` the loader with metrics (and batching), and the versions gauge."""
        monitoring.collect(self.monitoring.prometheus_path is not None)
        monitoring.watch_manager(manager)
        manager.loader = self._loader()

    def _loader(self) -> Callable[[ModelConfig, str, LoadOptions], LoadedModel]:
        scheduler = None
        if self.batching is not None:
            from modelserver.batching import BatchScheduler

            scheduler = BatchScheduler(self.batching)

        def load(config: ModelConfig, path: str, options: LoadOptions) -> LoadedModel:
            start = time.perf_counter()
            try:
                loaded = load_with_runtime(config, path, options)
            except Exception:
                monitoring.record_load(path, False, start)
                raise
            monitoring.record_load(path, True, start)
            if scheduler is not None:
                loaded = scheduler.wrap(loaded)
            return monitoring.InstrumentedModel(loaded, config.name, config.platform)

        return load
