"""Pins the private TF API the TensorFlow runtime relies on, and the runtime's behaviour."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from modelserver.core.status import Code, ServingError

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests import tfmodels

    path = tmp_path_factory.mktemp("runtime") / "hp2" / "1"
    tfmodels._save(path, tfmodels.half_plus(2.0))
    return path


def test_make_callable_from_options_skips_python_shape_check(half_plus_two: Path) -> None:
    """TF Serving feeds shape [3] to a [-1,1] placeholder; Session.run refuses, the callable must not."""
    from tensorflow.core.protobuf import config_pb2

    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(half_plus_two))
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        sess.run("y:0", feed_dict={"x:0": np.array([2.0, 3.0, 4.0], np.float32)})
    run = sess._make_callable_from_options(config_pb2.CallableOptions(feed=["x:0"], fetch=["y:0"]))
    (out,) = run(np.array([2.0, 3.0, 4.0], np.float32))
    assert out.tolist() == [3.0, 3.5, 4.0]


def test_runtime_load_and_run(half_plus_two: Path) -> None:
    from modelserver.runtimes import LoadOptions, get_runtime

    model = get_runtime("tensorflow").load(str(half_plus_two), LoadOptions(run_timeout_ms=30000))
    sig = model.signatures["serving_default"]
    assert sig.inputs["x"].dtype == "DT_FLOAT" and sig.inputs["x"].shape == (-1, 1)
    assert sig.inputs["x"].tensor_name == "x:0"
    assert model.run("serving_default", {"x": np.array([2.0, 3.0], np.float32)})["y"].tolist() == [3.0, 3.5]
    with pytest.raises(ServingError) as info:
        model.run("serving_default", {"x": np.array([[1.0, 2.0]], np.float32), "z": np.zeros(1)})
    assert info.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ServingError) as info:
        model.run("serving_default", {"x": np.array([1, 2], np.int32)})
    assert info.value.code == Code.INVALID_ARGUMENT
    assert set(model.signature_def_map().signature_def) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}


def test_an_input_of_a_rank_its_kernels_cannot_take_is_refused_before_it_runs(half_plus_two: Path,
                                                                            tmp_path: Path) -> None:
    """A 3-D image to a convolution: INVALID_ARGUMENT from TF's shape inference (run as is, the
    oneDNN kernel aborts this process). Other ranks TF takes still run; the checks are bounded."""
    from modelserver.runtimes import LoadOptions, get_runtime
    from modelserver.runtimes.tensorflow import MAX_RANK_CHECKS
    from tests import tfmodels

    tfmodels.save_version(tmp_path / "conv", tfmodels.conv)
    conv = get_runtime("tensorflow").load(str(tmp_path / "conv"), LoadOptions())
    for shape in ((4, 4, 1), (4, 4), (1, 4, 4, 1, 1)):
        with pytest.raises(ServingError) as info:
            conv.run("serving_default", {"x": np.ones(shape, np.float32)})
        assert info.value.code == Code.INVALID_ARGUMENT
        assert info.value.message == (f"The model cannot take input x of rank {len(shape)}: Shape must be rank 4 "
                                      f"but is rank {len(shape)} for node y (Conv2D)"), info.value.message
    assert conv.run("serving_default", {"x": np.ones((1, 4, 4, 1), np.float32)})["y"].tolist() == [[[[4.0]] * 3] * 3]

    model = get_runtime("tensorflow").load(str(half_plus_two), LoadOptions())
    for rank in range(MAX_RANK_CHECKS + 1):
        if rank != 2:                                  # x is [-1, 1]: rank 2 needs no check
            x = np.full((2,) * rank, 4.0, np.float32)
            assert model.run("serving_default", {"x": x})["y"].tolist() == (x * 0.5 + 2).tolist()
    with pytest.raises(ServingError) as info:
        model.run("serving_default", {"x": np.ones((1,) * (MAX_RANK_CHECKS + 1), np.float32)})
    assert info.value.message.endswith(f"this model checked {MAX_RANK_CHECKS} other input ranks already")
    assert model.run("serving_default", {"x": np.ones((3,), np.float32)})["y"].tolist() == [2.5] * 3


def test_runtime_load_failure_and_unknown_platform(tmp_path: Path) -> None:
    from modelserver.runtimes import LoadOptions, get_runtime

    with pytest.raises(ServingError) as info:
        get_runtime("tensorflow").load(str(tmp_path), LoadOptions())
    assert info.value.code == Code.NOT_FOUND
    with pytest.raises(ServingError, match="valid platforms: onnx, openvino, tensorflow"):
        get_runtime("caffe")


def _tf_pool_switches() -> int:
    """Voluntary context switches of TF's inter-op pool threads (``tf_Compute``) so far."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "tf_Compute":
                continue
            status = (task / "status").read_text()
        except OSError:
            continue
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def test_cheap_graphs_run_in_the_calling_thread(half_plus_two: Path) -> None:
    """Once a version's runs are known to be cheap, TF's inter-op pool is no longer woken per run.

    A run counts as handed to the pool when TF's pool threads switched during that run: counted
    over the run alone, not the pauses between runs, so TF work of other threads in this process
    (earlier tests' leftovers) is hardly ever counted. Only runs that start while the version is
    cheap are judged: a noisy machine may push its cost over the line for a while, and moving it
    to the pool then is the cost measure's job, not a fault."""
    from modelserver.core.inline import MIN_SAMPLES
    from modelserver.monitoring import InstrumentedModel
    from modelserver.runtimes import LoadOptions, get_runtime

    model = InstrumentedModel(get_runtime("tensorflow").load(str(half_plus_two), LoadOptions()),
                              "hp2", "tensorflow")
    x = {"x": np.array([2.0, 3.0], np.float32)}

    def run() -> None:
        assert model.run("serving_default", x)["y"].tolist() == [3.0, 3.5]

    def handed_to_pool(count: int, cheap: bool) -> int:
        """Of ``count`` runs 5 ms apart (TF's pool threads spin a moment before they sleep), each
        started while the version is cheap if ``cheap`` (run until it is): those the pool computed."""
        handed = 0
        for _ in range(count):
            for _ in range(1000 if cheap else 0):
                if model.run_cost.cheap():
                    break
                run()                     # measured again: back under the line once it is cheap
            assert model.run_cost.cheap() or not cheap, f"half_plus_two averages {model.run_cost.mean:.0f} us per run"
            pool = _tf_pool_switches()
            run()
            handed += _tf_pool_switches() != pool
            time.sleep(0.005)
        return handed

    assert handed_to_pool(MIN_SAMPLES, cheap=False) >= MIN_SAMPLES // 2   # cost unknown yet: TF's pool
    assert handed_to_pool(50, cheap=True) < 5


def test_a_tf2_saved_model_loads_without_an_init_op_warning(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """tf.saved_model.save writes a ``__saved_model_init_op`` signature (the built-in resnet has
    one): it stays in the metadata, as in TF Serving, and its load logs no warning."""
    from modelserver.runtimes import LoadOptions, get_runtime

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2.0 * x}

    module = Double()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.serve})
    with caplog.at_level("WARNING"):
        model = get_runtime("tensorflow").load(str(tmp_path / "1"), LoadOptions())
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
            and r.name.startswith("appliance")] == []
    assert "__saved_model_init_op" in model.signature_def_map().signature_def
    assert model.run("serving_default", {"x": np.array([1.5], np.float32)})["y"].tolist() == [3.0]
