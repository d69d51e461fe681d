"""Small ONNX models built with ``onnx.helper`` for the model server tests.

Each model is written as ``<dest>/<model>/<version>/model.onnx``, the layout the ONNX runtime
serves. Dimensions named ``batch`` are symbolic, so the server reports them as -1.
"""

from __future__ import annotations

from pathlib import Path


def _save(path: Path, graph) -> None:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="appliance-tests")
    model.ir_version = 8  # readable by every onnxruntime this project supports
    checker.check_model(model)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(model.SerializeToString())


def half_plus(bias: float, batch_dims: list | None = None):
    """y = 0.5 * x + bias; ``x`` is 1-D by default, like TF Serving's half_plus_two fed over REST."""
    from onnx import TensorProto, helper

    dims = batch_dims or ["batch"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    a = helper.make_tensor("a", TensorProto.FLOAT, [], [0.5])
    b = helper.make_tensor("b", TensorProto.FLOAT, [], [bias])
    return helper.make_graph([helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Add", ["ax", "b"], ["y"])],
                             "half_plus", [x], [y], [a, b])


def two_io():
    """Two inputs, two outputs, two dtypes: ``a`` float [batch,2] -> a+1; ``n`` int64 [batch] -> 2n."""
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"])
    a1 = helper.make_tensor_value_info("a_plus_1", TensorProto.FLOAT, ["batch", 2])
    n2 = helper.make_tensor_value_info("n_times_2", TensorProto.INT64, ["batch"])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    two = helper.make_tensor("two", TensorProto.INT64, [], [2])
    return helper.make_graph([helper.make_node("Add", ["a", "one"], ["a_plus_1"]),
                              helper.make_node("Mul", ["n", "two"], ["n_times_2"])],
                             "two_io", [a, n], [a1, n2], [one, two])


def build(dest: Path, models: dict[str, dict[int, object]]) -> dict[str, Path]:
    """Write ``{name: {version: graph}}`` under ``dest``; returns model name -> base path."""
    paths = {}
    for name, versions in models.items():
        for version, graph in versions.items():
            _save(dest / name / str(version), graph)
        paths[name] = dest / name
    return paths


def model_config(paths: dict[str, Path]) -> str:
    """A ModelServerConfig text serving every model with ``model_platform: 'onnx'``."""
    entries = "".join(f"  config {{\n    name: '{name}'\n    base_path: '{path}'\n    model_platform: 'onnx'\n  }}\n"
                      for name, path in paths.items())
    return "model_config_list {\n" + entries + "}\n"
