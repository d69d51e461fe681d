"""The built-in models, loaded the way our model server loads them: TF1 session loader, feeds
and fetches by SignatureDef tensor names (no server here).

The session fixture ``builtin_models`` builds them once, exactly as the install step does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from appliance.builtin_models import (BUILTIN_MODELS, CARD_PATH, TEMP_PREFIX, BuiltinModel,
                                      BuiltinModelError, build_all, main)
from tests.conftest import TFS_TESTDATA
from tests.jpeg import make_jpeg

pytestmark = pytest.mark.slow

HPT = "saved_model_half_plus_two_mkl"
HPT_VERSION = "00000123"


class Loaded:
    """A SavedModel loaded with ``tf.compat.v1.saved_model.loader.load`` in its own graph."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(path))

    def sig(self, name: str) -> Any:
        return self.meta.signature_def[name]

    def run(self, signature: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run ``signature`` with Python's shape-checked ``Session.run``."""
        sig = self.sig(signature)
        names = list(sig.outputs)
        values = self.sess.run([sig.outputs[n].name for n in names],
                               {sig.inputs[k].name: v for k, v in feeds.items()})
        return dict(zip(names, values))

    def run_unchecked(self, feed: str, fetch: str, value: np.ndarray) -> np.ndarray:
        """Feed by tensor name without the Python shape check, as TF Serving's C++ does."""
        from tensorflow.core.protobuf import config_pb2

        fn = self.sess._make_callable_from_options(  # noqa: SLF001 - see ref §0.2
            config_pb2.CallableOptions(feed=[feed], fetch=[fetch]))
        return fn(value)[0]

    def close(self) -> None:
        self.sess.close()


@pytest.fixture(scope="module")
def half_plus_two(builtin_models: Path) -> Iterator[Loaded]:
    loaded = Loaded(builtin_models / HPT / HPT_VERSION)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def resnet(builtin_models: Path) -> Iterator[Loaded]:
    loaded = Loaded(builtin_models / "resnet" / "1")
    yield loaded
    loaded.close()


def _dims(tensor_info: Any) -> list[int] | None:
    shape = tensor_info.tensor_shape
    return None if shape.unknown_rank else [d.size for d in shape.dim]


# --- half_plus_two ---------------------------------------------------------------------------

@pytest.mark.skipif(not TFS_TESTDATA.is_dir(),
                    reason=f"TF Serving's official test models are not at {TFS_TESTDATA}")
def test_half_plus_two_metadata_equals_official(half_plus_two: Loaded) -> None:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    sigmap = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in half_plus_two.meta.signature_def.items():
        sigmap.signature_def[key].CopyFrom(sig)
    ours = json.loads(json_format.MessageToJson(sigmap, preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True))
    official = json.loads((TFS_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert ours == official["metadata"]["signature_def"]


def test_half_plus_two_signatures(half_plus_two: Loaded) -> None:
    sigs = half_plus_two.meta.signature_def
    assert set(sigs) == {"serving_default", "classify_x_to_y", "regress_x_to_y",
                         "regress_x_to_y2", "regress_x2_to_y3"}
    predict = sigs["serving_default"]
    assert predict.method_name == "tensorflow/serving/predict"
    assert (predict.inputs["x"].name, _dims(predict.inputs["x"])) == ("x:0", [-1, 1])
    assert predict.outputs["y"].name == "y:0"
    assert sigs["classify_x_to_y"].method_name == "tensorflow/serving/classify"
    assert sigs["classify_x_to_y"].inputs["inputs"].name == "tf_example:0"
    assert _dims(sigs["classify_x_to_y"].inputs["inputs"]) is None  # unknown rank, as upstream
    assert sigs["regress_x2_to_y3"].inputs["inputs"].name == "x2:0"


def test_half_plus_two_predict_batch_of_rows(half_plus_two: Loaded) -> None:
    out = half_plus_two.run("serving_default", {"x": np.array([[1.0], [2.0], [5.0]], np.float32)})
    np.testing.assert_allclose(out["y"], [[2.5], [3.0], [4.5]])


def test_half_plus_two_predict_rank1_input_like_tf_serving(half_plus_two: Loaded) -> None:
    # REST {"instances": [1.0, 2.0, 5.0]} arrives as shape [3]; TF Serving feeds it unchecked.
    y = half_plus_two.run_unchecked("x:0", "y:0", np.array([1.0, 2.0, 5.0], np.float32))
    np.testing.assert_allclose(y, [2.5, 3.0, 4.5])


def test_half_plus_two_regress_and_classify_from_tf_examples(half_plus_two: Loaded) -> None:
    import tensorflow as tf

    def example(**features: float) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            for k, v in features.items()})).SerializeToString()

    batch = np.array([example(x=1.0, x2=4.0), example(x=5.0)], dtype=object)
    np.testing.assert_allclose(half_plus_two.run("regress_x_to_y", {"inputs": batch})["outputs"],
                               [[2.5], [4.5]])
    np.testing.assert_allclose(half_plus_two.run("regress_x_to_y2", {"inputs": batch})["outputs"],
                               [[3.5], [5.5]])
    np.testing.assert_allclose(half_plus_two.run("classify_x_to_y", {"inputs": batch})["scores"],
                               [[2.5], [4.5]])
    # x2 defaults to 0.0 when the example lacks it.
    x2 = half_plus_two.sess.run("x2:0", {"tf_example:0": batch})
    np.testing.assert_allclose(half_plus_two.run("regress_x2_to_y3", {"inputs": x2})["outputs"],
                               [[5.0], [3.0]])


# --- resnet ----------------------------------------------------------------------------------

def test_resnet_signature(resnet: Loaded) -> None:
    from tensorflow.core.framework import types_pb2

    sig = resnet.sig("serving_default")
    assert sig.method_name == "tensorflow/serving/predict"
    assert set(sig.inputs) == {"image_bytes"}
    assert set(sig.outputs) == {"classes", "probabilities"}
    assert (sig.inputs["image_bytes"].dtype, _dims(sig.inputs["image_bytes"])) == (types_pb2.DT_STRING, [-1])
    assert (sig.outputs["classes"].dtype, _dims(sig.outputs["classes"])) == (types_pb2.DT_INT64, [-1])
    assert ((sig.outputs["probabilities"].dtype, _dims(sig.outputs["probabilities"]))
            == (types_pb2.DT_FLOAT, [-1, 1001]))


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet_predict_on_jpegs(resnet: Loaded, batch: int) -> None:
    images = np.array([make_jpeg(seed=i, size=(64 + 16 * i, 80)) for i in range(batch)], dtype=object)
    out = resnet.run("serving_default", {"image_bytes": images})
    classes, probs = out["classes"], out["probabilities"]
    assert classes.shape == (batch,) and classes.dtype == np.int64
    assert probs.shape == (batch, 1001) and probs.dtype == np.float32
    assert ((classes >= 1) & (classes <= 1000)).all()  # 0 is the never-predicted background
    np.testing.assert_array_equal(classes, probs.argmax(axis=1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (probs[:, 0] == 0).all()


def test_resnet_build_is_deterministic(builtin_models: Path, tmp_path: Path) -> None:
    """Seeded weights: a rebuild gives byte-identical variables (comparable benchmark runs)."""
    [again] = build_all(tmp_path, ["resnet"], progress=lambda _: None)
    data = "variables/variables.data-00000-of-00001"
    assert (again / data).read_bytes() == (builtin_models / "resnet" / "1" / data).read_bytes()


# --- build_all -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, version", [(HPT, HPT_VERSION), ("resnet", "1")])
def test_model_card(builtin_models: Path, name: str, version: str) -> None:
    card = json.loads((builtin_models / name / version / CARD_PATH).read_text())
    assert card["name"] == name and card["version"] == version
    assert card["weights"] and card["architecture"]
    if name == "resnet":
        assert card["architecture"] == "ResNet-50" and card["weights"].startswith("random")


def test_build_all_is_idempotent(builtin_models: Path) -> None:
    before = {p: os.stat(p).st_ino for p in builtin_models.glob("*/*/saved_model.pb")}
    lines: list[str] = []
    start = time.monotonic()
    paths = build_all(builtin_models, progress=lines.append)
    assert time.monotonic() - start < 2.0
    assert len(lines) == len(BUILTIN_MODELS) and all("skipped" in line for line in lines)
    assert paths == [builtin_models / m.name / m.version for m in BUILTIN_MODELS.values()]
    assert {p: os.stat(p).st_ino for p in builtin_models.glob("*/*/saved_model.pb")} == before


def test_build_all_leaves_no_temp_dirs(builtin_models: Path) -> None:
    assert sorted(p.name for p in builtin_models.iterdir()) == sorted(BUILTIN_MODELS)


def test_failed_build_leaves_nothing_and_leftovers_are_cleaned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(export_dir: Path) -> None:
        export_dir.mkdir()
        (export_dir / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    def good(export_dir: Path) -> None:
        export_dir.mkdir()
        (export_dir / "saved_model.pb").write_bytes(b"whole")

    monkeypatch.setitem(BUILTIN_MODELS, "fake", BuiltinModel("fake", "7", broken, {"name": "fake"}))
    with pytest.raises(RuntimeError):
        build_all(tmp_path, ["fake"], progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / f"{TEMP_PREFIX}fake-crashed").mkdir()  # what a SIGKILLed build leaves
    monkeypatch.setitem(BUILTIN_MODELS, "fake", BuiltinModel("fake", "7", good, {"name": "fake"}))
    [path] = build_all(tmp_path, ["fake"], progress=lambda _: None)
    assert path == tmp_path / "fake" / "7" and (path / "saved_model.pb").read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["fake"]


def test_unknown_model_name_lists_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(BuiltinModelError, match="resnet"):
        build_all(tmp_path, ["nope"])
    assert main([str(tmp_path), "--only", "nope"]) == 2
    assert "unknown built-in model" in capsys.readouterr().err
