"""The agent's cheap check that a version directory holds a model (appliance/modelfiles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import modelfiles
from appliance.modelfiles import NotAModel, check_version
from tests.conftest import TFS_TESTDATA
from tests.tfmodels import saved_model_bytes


def _version(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("data,why", [
    (b"not a SavedModel", "saved_model.pb is not a tensorflow.SavedModel protobuf (DecodeError: Error parsing "
                          "message with type 'tensorflow.SavedModel'"),
    (b"\x08\x01", "saved_model.pb parses as tensorflow.SavedModel but it holds no MetaGraphDef"),
    (b"", "saved_model.pb parses as tensorflow.SavedModel but it holds no MetaGraphDef"),
])
def test_a_saved_model_that_does_not_parse_is_not_a_model(tmp_path: Path, data: bytes, why: str) -> None:
    with pytest.raises(NotAModel) as err:
        check_version(_version(tmp_path, {"saved_model.pb": data, "variables/variables.index": b"x"}))
    assert str(err.value).startswith(why)


def test_saved_models_onnx_models_and_neither(tmp_path: Path) -> None:
    check_version(_version(tmp_path / "pb", {"saved_model.pb": saved_model_bytes(100)}))
    check_version(_version(tmp_path / "txt", {"saved_model.pbtxt": b"meta_graphs { meta_info_def { tags: 'serve' } }"}))
    with pytest.raises(NotAModel, match="saved_model.pbtxt is not a tensorflow.SavedModel protobuf"):
        check_version(_version(tmp_path / "badtxt", {"saved_model.pbtxt": b"meta_graphs {"}))
    with pytest.raises(NotAModel, match=r"^the version directory holds no model: expected saved_model.pb"):
        check_version(_version(tmp_path / "none", {"variables/variables.index": b"x"}))
    onnx = pytest.importorskip("onnx")
    from tests import onnxmodels

    onnxmodels.build(tmp_path / "onnx", {"m": {1: onnxmodels.half_plus(2.0)}})
    check_version(tmp_path / "onnx/m/1")
    with pytest.raises(NotAModel, match="model.onnx is not a onnx.ModelProto protobuf"):
        check_version(_version(tmp_path / "badonnx", {"model.onnx": b"\xff\xff garbage"}))
    empty = onnx.ModelProto(ir_version=8).SerializeToString()
    with pytest.raises(NotAModel, match="model.onnx parses as onnx.ModelProto but it holds no graph"):
        check_version(_version(tmp_path / "nograph", {"model.onnx": empty}))


@pytest.mark.skipif(not TFS_TESTDATA.is_dir(), reason="TF Serving testdata not present")
def test_tf_servings_own_test_models_pass() -> None:
    for version in TFS_TESTDATA.glob("saved_model_half_plus_*/*"):
        if (version / "saved_model.pb").is_file():
            check_version(version)


def test_without_the_schema_the_wire_format_is_checked(tmp_path: Path) -> None:
    assert modelfiles.message_class("no_such_package_here", "x/y.proto", "x.Y") is None
    modelfiles._check_wire(saved_model_bytes(50), (2,), "not a model")
    with pytest.raises(NotAModel, match="not a model"):
        modelfiles._check_wire(b"not a SavedModel", (2,), "not a model")
    with pytest.raises(NotAModel, match="field 7 is missing"):
        modelfiles._check_wire(b"\x08\x01", (7,), "not a model")


def test_an_openvino_ir_needs_its_weights_and_a_net(tmp_path: Path) -> None:
    check_version(_version(tmp_path / "ir", {"model.xml": b"<?xml version='1.0'?><net name='m' version='11'/>",
                                             "model.bin": b""}))
    with pytest.raises(NotAModel, match="needs its weights, model.bin"):
        check_version(_version(tmp_path / "nobin", {"model.xml": b"<net/>"}))
    with pytest.raises(NotAModel, match="not well-formed XML"):
        check_version(_version(tmp_path / "bad", {"model.xml": b"<net", "model.bin": b""}))
    with pytest.raises(NotAModel, match=r"root element is <html>"):
        check_version(_version(tmp_path / "html", {"model.xml": b"<html/>", "model.bin": b""}))
