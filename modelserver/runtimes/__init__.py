"""Model runtimes, chosen by ``model_platform``; each one is imported only when first used."""

from __future__ import annotations

import importlib
import threading

from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import LoadedModel, LoadOptions, Runtime, Signature, TensorSpec

__all__ = ["LoadedModel", "LoadOptions", "Runtime", "Signature", "TensorSpec", "get_runtime", "PLATFORMS"]

# model_platform -> "module:class". Importing TensorFlow takes seconds, so it happens on first use.
PLATFORMS: dict[str, str] = {
    "tensorflow": "modelserver.runtimes.tensorflow:TensorFlowRuntime",
    "onnx": "modelserver.runtimes.onnx:OnnxRuntime",
    "openvino": "modelserver.runtimes.openvino:OpenVinoRuntime",
}

_instances: dict[str, Runtime] = {}
_lock = threading.Lock()


def get_runtime(platform: str) -> Runtime:
    """The (shared) runtime for ``platform``; an unknown platform lists the valid ones."""
    with _lock:
        runtime = _instances.get(platform)
        if runtime is None:
            target = PLATFORMS.get(platform)
            if target is None:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"Model platform '{platform}' is not supported; valid platforms: "
                                   f"{', '.join(sorted(PLATFORMS))}")
            module_name, class_name = target.split(":")
            runtime = getattr(importlib.import_module(module_name), class_name)()
            _instances[platform] = runtime
        return runtime
