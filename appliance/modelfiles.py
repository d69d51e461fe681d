"""A cheap check that a version directory holds a model, before the agent installs it.

The model server is the final judge (it loads the version), but a garbage ``saved_model.pb``
installed with a plain "installed" only fails later, on every node. So the agent checks what it
can without a runtime and refuses the version with a reason otherwise:

* ``saved_model.pb`` parses as ``tensorflow.SavedModel`` with at least one MetaGraphDef
  (``saved_model.pbtxt``: the same in text format);
* ``model.onnx`` parses as ``onnx.ModelProto`` with a graph;
* a directory with neither is no model version.

The message classes come from the installed packages' generated ``_pb2`` modules, but those
modules are *not imported*: ``import tensorflow.core.protobuf.saved_model_pb2`` imports all of
TensorFlow (measured 2.7 s and 670 MB RSS), far too much for the agent. Each generated module
carries its schema as one serialized ``FileDescriptorProto`` literal; it is read from the source
text (``ast.literal_eval``, nothing is executed) into a private descriptor pool, with the files
it depends on: a full-depth parse with the exact schema the runtime uses, in milliseconds. When a
package is not installed, the check falls back to the protobuf wire format of the top level
(every field well formed, the required field present).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

from modelserver.core.platforms import (ONNX_MODEL, OPENVINO_BIN, OPENVINO_XML, SAVED_MODEL,
                                        SAVED_MODEL_TEXT, describe_markers)

log = logging.getLogger(__name__)

MAX_PROTO_BYTES = 2 << 30        # protobuf's own limit on a message


class NotAModel(ValueError):
    """The version directory does not hold a model; the message says why, in plain words."""


def check_version(directory: Path) -> None:
    """Raise :class:`NotAModel` unless ``directory`` holds a SavedModel, an ONNX model or an
    OpenVINO IR that parses."""
    checked = False
    if (directory / SAVED_MODEL).is_file():
        _check(directory / SAVED_MODEL, "tensorflow", "tensorflow/core/protobuf/saved_model.proto",
               "tensorflow.SavedModel", _has_meta_graph, (2,))
        checked = True
    elif (directory / SAVED_MODEL_TEXT).is_file():
        _check(directory / SAVED_MODEL_TEXT, "tensorflow", "tensorflow/core/protobuf/saved_model.proto",
               "tensorflow.SavedModel", _has_meta_graph, None)
        checked = True
    if (directory / ONNX_MODEL).is_file():
        _check(directory / ONNX_MODEL, "onnx", "onnx/onnx-ml.proto", "onnx.ModelProto", _has_graph, (7,))
        checked = True
    if (directory / OPENVINO_XML).is_file():
        _check_ir(directory)
        checked = True
    if not checked:
        raise NotAModel(f"the version directory holds no model: expected {describe_markers()}")


def _check_ir(directory: Path) -> None:
    """An OpenVINO IR: ``model.xml`` is well-formed XML whose root is ``<net>``, next to a ``model.bin``."""
    import xml.etree.ElementTree as ElementTree

    if not (directory / OPENVINO_BIN).is_file():
        raise NotAModel(f"{OPENVINO_XML} (an OpenVINO IR) needs its weights, {OPENVINO_BIN}, beside it")
    try:
        root = ElementTree.parse(directory / OPENVINO_XML).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise NotAModel(f"{OPENVINO_XML} is not well-formed XML ({exc})") from None
    if root.tag != "net":
        raise NotAModel(f"{OPENVINO_XML} is not an OpenVINO IR (its root element is <{root.tag}>, not <net>)")


def _has_meta_graph(message: Any) -> str:
    return "" if len(message.meta_graphs) else "it holds no MetaGraphDef"


def _has_graph(message: Any) -> str:
    return "" if message.HasField("graph") else "it holds no graph"


def _check(path: Path, package: str, proto: str, type_name: str, complete: Any,
           wire_required: tuple[int, ...] | None) -> None:
    size = path.stat().st_size
    if size > MAX_PROTO_BYTES:
        raise NotAModel(f"{path.name} is {size} bytes, over protobuf's 2 GiB limit")
    data = path.read_bytes()
    what = f"{path.name} is not a {type_name} protobuf"
    cls = message_class(package, proto, type_name)
    if cls is None:
        if wire_required is not None:
            _check_wire(data, wire_required, what)
        return
    message = cls()
    try:
        if wire_required is None:
            from google.protobuf import text_format

            text_format.Parse(data.decode("utf-8"), message)
        else:
            message.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, ParseError, UnicodeError: all say "not a model"
        raise NotAModel(f"{what} ({type(exc).__name__}: {exc or 'wire format is corrupt'})") from None
    missing = complete(message)
    if missing:
        raise NotAModel(f"{path.name} parses as {type_name} but {missing}")


def _check_wire(data: bytes, required: tuple[int, ...], what: str) -> None:
    """Without the schema: the top level is well-formed protobuf and has the required fields."""
    from google.protobuf import empty_pb2
    from google.protobuf.unknown_fields import UnknownFieldSet

    message = empty_pb2.Empty()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends
        raise NotAModel(f"{what} ({exc or 'wire format is corrupt'})") from None
    present = {field.field_number for field in UnknownFieldSet(message)}
    missing = [n for n in required if n not in present]
    if missing:
        raise NotAModel(f"{what} (field {', '.join(map(str, missing))} is missing)")


@functools.lru_cache(maxsize=None)
def message_class(package: str, proto: str, type_name: str) -> Any:
    """The message class of ``type_name`` built from ``package``'s generated modules, or None."""
    from google.protobuf import descriptor_pool, message_factory

    try:
        spec = importlib.util.find_spec(package)     # finds the package without running it
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        log.info("%s is not installed: checking %s by its wire format only", package, type_name)
        return None
    root = Path(list(spec.submodule_search_locations)[0]).parent
    pool = descriptor_pool.DescriptorPool()
    try:
        _add_file(pool, root, proto, set())
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))
    except Exception as exc:  # noqa: BLE001 - a package layout we do not know: fall back, never fail
        log.warning("cannot read the %s schema from %s (%s): checking by wire format only",
                    type_name, root / package, exc)
        return None


def _add_file(pool: Any, root: Path, proto: str, added: set[str]) -> None:
    from google.protobuf import descriptor_pb2

    if proto in added:
        return
    added.add(proto)
    if proto.startswith("google/protobuf/"):
        module = importlib.import_module(proto[:-len(".proto")].replace("/", ".") + "_pb2")
        file_proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file_proto)
    else:
        source = root / (proto[:-len(".proto")].replace("-", "_") + "_pb2.py")
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(_serialized_descriptor(source))
    for dependency in file_proto.dependency:
        _add_file(pool, root, dependency, added)
    pool.Add(file_proto)


def _serialized_descriptor(source: Path) -> bytes:
    """The bytes literal passed to ``AddSerializedFile`` in a generated module (not executed)."""
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, bytes):
            return node.args[0].value
    raise ValueError(f"no serialized descriptor in {source}")
