"""What a model version directory is, and which runtime platform its files belong to.

One place for these small facts: the model server (loading), the appliance's config checks,
its agent (installing a synced version), ``models push`` and ``doctor`` all ask here. Standard
library only, so the lightest caller (the config loader) can import it.

A model directory holds numbered version directories (``<model>/<version>/``): the name is a
plain ASCII decimal number (TF Serving's rule: ``1``, ``42``; no sign, no spaces). What is in
a version directory says its platform:

* ``saved_model.pb`` (or ``saved_model.pbtxt``): ``tensorflow``
* ``model.onnx``: ``onnx``
* ``model.xml`` with ``model.bin`` (OpenVINO IR): ``openvino``
"""

from __future__ import annotations

from pathlib import Path

# Every platform a model may name in the appliance's config. ``auto`` (the default) detects the
# platform from each version's files when the model server loads it.
AUTO = "auto"
PLATFORMS: tuple[str, ...] = ("tensorflow", "onnx", "openvino")

SAVED_MODEL = "saved_model.pb"
SAVED_MODEL_TEXT = "saved_model.pbtxt"
ONNX_MODEL = "model.onnx"
OPENVINO_XML = "model.xml"
OPENVINO_BIN = "model.bin"

# Which files make a version directory one platform's, in the order they are looked for.
MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tensorflow", (SAVED_MODEL,)),
    ("tensorflow", (SAVED_MODEL_TEXT,)),
    ("onnx", (ONNX_MODEL,)),
    ("openvino", (OPENVINO_XML, OPENVINO_BIN)),
)


def is_version_name(name: str) -> bool:
    """A version directory's name: a plain ASCII decimal number."""
    return bool(name) and name.isascii() and name.isdigit()


def version_dirs(model_dir: Path) -> list[Path]:
    """The model's version directories, lowest version first; none if ``model_dir`` is absent."""
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return []
    found = [p for p in entries if is_version_name(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name))


def has_version(model_dir: Path) -> bool:
    return bool(version_dirs(model_dir))


def detect_platform(version_dir: Path) -> str | None:
    """The platform of the model files in ``version_dir``, or None when it holds no known model."""
    for platform, files in MARKERS:
        if all((version_dir / name).is_file() for name in files):
            return platform
    return None


def describe_markers() -> str:
    """The files that make a version directory a model, for error messages."""
    return ("saved_model.pb (a TensorFlow SavedModel), model.onnx (ONNX) or "
            "model.xml + model.bin (OpenVINO IR)")
