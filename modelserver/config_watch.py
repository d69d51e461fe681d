"""``--model_config_file_poll_wait_seconds``: re-read models.config and reload it declaratively.

TF Serving re-reads the file every N seconds and calls ``ServerCore::ReloadConfig`` with it, the
same entry point ``HandleReloadConfigRequest`` uses; here that is :meth:`ModelManager.reload`.
A file that does not parse (or fails validation) is logged and the running config is kept.
Reloads happen only when the file's bytes differ from the last applied ones, so an unchanged file
costs one read and a failed reload (a label waiting for its version) is retried.

``--model_settings_file`` (an appliance extension) is re-read on the same poll, and a change of
either file reloads with both: a changed settings file alone applies the new settings to the
models being served. The settings file is also looked at every :data:`SETTINGS_POLL_SECONDS`
(one read of a small file): a canary rollback (:mod:`modelserver.rollout`) must reach every
node within a second or two, whatever the poll wait. An invalid settings file is logged and the settings in force are kept, as
an invalid models.config is.
"""

from __future__ import annotations

import logging
import threading
import time

from modelserver.manager import ModelConfig, ModelManager
from modelserver.model_config import ConfigFileError, read_model_server_config
from modelserver.model_settings import ModelSettings, SettingsFileError, read_model_settings
from modelserver.core.applied import digest
from modelserver.core.status import Code, ServingError

log = logging.getLogger(__name__)

SETTINGS_POLL_SECONDS = 0.1


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


class ConfigFileWatcher:
    """A daemon thread reloading ``path`` (and ``settings_path``) into ``manager`` every ``wait_seconds``."""

    def __init__(self, path: str, manager: ModelManager, wait_seconds: float, settings_path: str = "") -> None:
        self.path = path
        self.settings_path = settings_path
        self.manager = manager
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._last = _read_bytes(path)
        self._last_settings = _read_bytes(settings_path) if settings_path else None
        self._publish(self._last, self._last_settings)   # what the server started with
        self._thread = threading.Thread(target=self._loop, name="config-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        step = min(self.wait_seconds, SETTINGS_POLL_SECONDS) if self.settings_path else self.wait_seconds
        due = time.monotonic() + self.wait_seconds
        while not self._stop.wait(step):
            if time.monotonic() < due and _read_bytes(self.settings_path) == self._last_settings:
                continue
            due = time.monotonic() + self.wait_seconds
            try:
                self.check()
            except Exception:  # noqa: BLE001 - one bad cycle never stops the watcher
                log.exception("re-reading model config %s failed", self.path)

    def check(self) -> bool:
        """Reload when a file changed; True when a reload was attempted."""
        self._why = ""
        data = _read_bytes(self.path)
        settings_data = _read_bytes(self.settings_path) if self.settings_path else None
        config_changed = data is not None and data != self._last
        settings_changed = bool(self.settings_path) and settings_data != self._last_settings
        if not (config_changed or settings_changed):
            return False
        configs = self._configs(data) if config_changed else None
        settings = self._settings(settings_data) if settings_changed else None
        if configs is None and settings is None:
            return True
        configs_read = configs is not None
        if configs is None:
            configs = [model.config for model in self.manager.models.values()]
            log.info("Model settings file %s changed; applying it to %d model(s)", self.settings_path, len(configs))
        else:
            log.info("Model config %s changed; reloading %d model(s)", self.path, len(configs))
        try:
            self.manager.reload(configs, settings, superseded=lambda: self._changed_since(data, settings_data))
        except ServingError as exc:  # retried next cycle (e.g. a label waiting for its version)
            log.error("ReloadConfig failed: %s", exc.to_string())
            if exc.code != Code.FAILED_PRECONDITION:   # a label waiting for its version is no refusal
                self._refused(f"ReloadConfig failed: {exc.to_string()}")
            return True
        took_config, took_settings = configs_read, settings is not None
        self._last, self._last_settings = (data if config_changed else self._last,
                                           settings_data if settings_changed else self._last_settings)
        self._publish(data if took_config else self._in_force[0],
                      settings_data if took_settings else self._in_force[1])
        if self._why:   # the other file was taken; this one was not
            self._refused(self._why)
        return True

    def _publish(self, config: bytes | None, settings: bytes | None) -> None:
        """Say which bytes of each file the models now follow (``GET /appliance/v1/applied-config``): a
        node's ``up``/``reload`` waits until they are the bytes it wrote."""
        self._in_force = (config, settings)
        self.manager.applied_files = {"model_config_file": digest(config),
                                      "model_settings_file": digest(settings)}

    def _refused(self, why: str) -> None:
        """A change the models do not follow: reported with the digests still in force."""
        self._why = why
        self.manager.applied_files = {**self.manager.applied_files, "error": why}

    def _changed_since(self, data: bytes | None, settings_data: bytes | None) -> bool:
        """A file changed again since this reload read it: the next check applies it."""
        return (_read_bytes(self.path) not in (None, data)
                or bool(self.settings_path) and _read_bytes(self.settings_path) != settings_data)

    def _configs(self, data: bytes) -> list[ModelConfig] | None:
        """models.config's models; None (logged, and not tried again until it changes) when invalid."""
        try:
            return read_model_server_config(self.path)
        except ConfigFileError as exc:
            log.error("Error parsing text-format tensorflow.serving.ModelServerConfig: %s", exc.details)
            log.error("Failed to reload model config %s: INVALID_ARGUMENT: %s; keeping the current config",
                      self.path, exc)
        except ServingError as exc:
            log.error("Failed to reload model config %s: %s; keeping the current config", self.path, exc.to_string())
        self._refused("models.config is not valid; the current config is kept (see the model server's log)")
        self._last = data
        return None

    def _settings(self, data: bytes | None) -> dict[str, ModelSettings] | None:
        """The settings file's models; None (logged, not tried again until it changes) when invalid."""
        try:
            return read_model_settings(self.settings_path)
        except SettingsFileError as exc:
            log.error("Failed to reload %s; keeping the current model settings", exc)
            self._refused("model-settings.json is not valid; the current settings are kept "
                          "(see the model server's log)")
        self._last_settings = data
        return None
