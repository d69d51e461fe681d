"""``--model_config_file_poll_wait_seconds``: re-read models.config and reload it declaratively.

TF Serving re-reads the file every N seconds and calls ``ServerCore::ReloadConfig`` with it, the
same entry point ``HandleReloadConfigRequest`` uses; here that is :meth:`ModelManager.reload`.
A file that does not parse (or fails validation) is logged and the running config is kept.
Reloads happen only when the file's bytes differ from the last applied ones, so an unchanged file
costs one read and a failed reload (a label waiting for its version) is retried.
"""

from __future__ import annotations

import logging
import threading

from modelserver.manager import ModelManager
from modelserver.model_config import ConfigFileError, read_model_server_config
from modelserver.core.status import ServingError

log = logging.getLogger(__name__)


class ConfigFileWatcher:
    """A daemon thread reloading ``path`` into ``manager`` every ``wait_seconds``."""

    def __init__(self, path: str, manager: ModelManager, wait_seconds: float) -> None:
        self.path = path
        self.manager = manager
        self.wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._last = self._read_bytes()
        self._thread = threading.Thread(target=self._loop, name="config-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _read_bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.wait_seconds):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - one bad cycle never stops the watcher
                log.exception("re-reading model config %s failed", self.path)

    def check(self) -> bool:
        """Reload when the file changed; True when a reload was attempted."""
        data = self._read_bytes()
        if data is None or data == self._last:
            return False
        try:
            configs = read_model_server_config(self.path)
        except ConfigFileError as exc:
            log.error("Error parsing text-format tensorflow.serving.ModelServerConfig: %s", exc.details)
            log.error("Failed to reload model config %s: INVALID_ARGUMENT: %s; keeping the current config",
                      self.path, exc)
            self._last = data
            return True
        except ServingError as exc:
            log.error("Failed to reload model config %s: %s; keeping the current config", self.path, exc.to_string())
            self._last = data
            return True
        log.info("Model config %s changed; reloading %d model(s)", self.path, len(configs))
        try:
            self.manager.reload(configs)
        except ServingError as exc:  # retried next cycle (e.g. a label waiting for its version)
            log.error("ReloadConfig failed: %s", exc.to_string())
            return True
        self._last = data
        return True
