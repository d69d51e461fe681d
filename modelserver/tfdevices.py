"""TensorFlow's import and device probe, once per process, without its start-up false alarms.

Why: the ``tensorflow`` wheel carries CUDA support, so the first device lookup calls ``cuInit``;
on a machine without a GPU driver that fails and TF logs, in red, on every start
``E ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... (303)``. TF runs on
the CPU, which is what this appliance does, so there is nothing to fix. The line, and the oneDNN /
CUDA-stub / CPU-feature notes printed while TF loads, come from C++ *before* absl's logging is
initialised: ``TF_CPP_MIN_LOG_LEVEL`` does not filter them (3 would hide the cuInit line, and
every real error with it), and ``CUDA_VISIBLE_DEVICES=""`` does not avoid the call. So the import
and the probe (``tf.config.list_physical_devices``) run with file descriptor 2 read through a
pipe that drops the cuInit line and the notes ``TF_CPP_MIN_LOG_LEVEL`` would have hidden, and
passes every other byte on; then the descriptor is restored. Log lines of TF after that are
filtered by TF itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from types import ModuleType
from typing import Callable, Iterator

log = logging.getLogger(__name__)

CUINIT_FAILED = b"failed call to cuInit"
_SEVERITY = re.compile(rb"^([IWEF])\d{4} ")
_LEVELS = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
# Printed by absl once before its first early line, and a continuation of cpu_feature_guard's.
_NOTES = (b"WARNING: All log messages before absl::InitializeLog()",
          b"To enable the following instructions:")

_lock = threading.Lock()
_devices: list[str] = []


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, with its devices probed once (the line "TensorFlow devices: CPU")."""
    with _lock:
        if not _devices:
            with stderr_without(_start_up_noise):
                import tensorflow as tf

                _devices.extend(sorted({d.device_type for d in tf.config.list_physical_devices()}))
            log.info("TensorFlow devices: %s", ", ".join(_devices))
    import tensorflow as tf

    return tf


def _start_up_noise(line: bytes) -> bool:
    if CUINIT_FAILED in line:
        return True
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    match = _SEVERITY.match(line)
    if match:
        return _LEVELS[match.group(1)] < min_level
    return min_level >= 1 and line.startswith(_NOTES)


@contextlib.contextmanager
def stderr_without(drop: Callable[[bytes], bool]) -> Iterator[None]:
    """Lines written to file descriptor 2 (by C++ too) that ``drop`` selects are discarded."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not drop(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(10)
        os.close(saved)
