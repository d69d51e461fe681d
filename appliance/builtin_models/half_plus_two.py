"""``saved_model_half_plus_two_mkl``: TF Serving's demo model, y = 0.5 * x + 2, built here.

Why build it instead of shipping TF Serving's testdata: we may not redistribute those binaries,
and a model built by our own install step proves the toolchain on the node works end to end.

The graph mirrors TF Serving's ``saved_model_half_plus_two.py`` (TF1 graph +
``SavedModelBuilder``) so that every client example written against the official model works
unchanged: the same tensor names, signature names, input/output aliases, shapes and method
names, so the metadata response equals the official
``testdata/half_plus_two_model_metadata.json``.

What cannot match the official ``saved_model.pb`` byte for byte (none of it is visible in the
metadata response or in any output value):

- ``meta_info_def.tensorflow_version``/``git_version``: ours says 2.21, the official one 1.14.
- ``classify_x2_to_y3``: not built. The official saved model and its metadata file have no
  such signature (only ``regress_x2_to_y3``), and matching the metadata is the point.
- Device pinning: the official graph pins ops to ``/device:CPU:0``; ours leaves placement to
  the session (the appliance is CPU-only, so the result is the same).
- Op-level details of a TF 2.21 graph: ``AddV2`` where 1.14 wrote ``Add``, and the saver's
  sharded-filename ops (``StaticRegexFullMatch``, ``Select``). ``ParseExample`` is the same V1 op.
- The asset's original path constant (``/tmp/original/export/assets/foo.txt`` upstream) is the
  temp path of our build; the loader rewrites it to ``<version>/assets/foo.txt`` either way.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NAME = "saved_model_half_plus_two_mkl"
# TF Serving's testdata serves this model as version 123; clients and docs expect that number.
VERSION = "00000123"

CARD: dict[str, Any] = {
    "name": NAME,
    "architecture": "y = a * x + b with a=0.5, b=2.0 (TF Serving's half_plus_two demo model)",
    "weights": "fixed constants a=0.5, b=2.0, c=3.0 (not trained)",
    "signatures": {
        "serving_default": "predict: x [-1,1] float -> y = 0.5x + 2",
        "regress_x_to_y": "regress: tf.Example feature x -> 0.5x + 2",
        "regress_x_to_y2": "regress: tf.Example feature x -> 0.5x + 3",
        "regress_x2_to_y3": "regress: x2 [-1,1] float -> 0.5x2 + 3",
        "classify_x_to_y": "classify: tf.Example feature x -> scores 0.5x + 2",
    },
    "source": "built by appliance.builtin_models.half_plus_two in the install step",
}

# The asset TF Serving's script writes; kept so asset handling is exercised the same way.
_ASSET_NAME = "foo.txt"
_ASSET_CONTENTS = "asset-file-contents"


def build(export_dir: Path) -> None:
    """Write the SavedModel into ``export_dir`` (which must not exist yet).

    Built with the TF1 API on purpose: the model server loads with the TF1 session loader and
    feeds ``x:0``/``tf_example:0`` by name, so the graph must have exactly those tensors.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        # Reference variables (VariableV2), as the official TF 1.14 graph has; resource
        # variables would work too but would change the op set for no reason.
        a = v1.Variable(0.5, name="a", use_resource=False)
        b = v1.Variable(2.0, name="b", use_resource=False)
        c = v1.Variable(3.0, name="c", use_resource=False)

        # Unknown rank, as upstream's (the metadata shows "unknown_rank": true).
        serialized_tf_example = v1.placeholder(tf.string, name="tf_example")
        parsed_x, parsed_x2 = _parse_example(tf, serialized_tf_example)
        # tf.identity names the tensors "x:0"/"x2:0": clients of Predict feed them directly,
        # bypassing the tf.Example parsing.
        x = tf.identity(parsed_x, name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")

        x2 = tf.identity(parsed_x2, name="x2")
        a2 = v1.Variable(0.5, name="a2", use_resource=False)
        c2 = v1.Variable(3.0, name="c2", use_resource=False)
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")

        asset_path = _write_asset(export_dir.parent / (export_dir.name + ".assets-src"))
        asset_tensor = tf.constant(str(asset_path))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_tensor)
        filename_tensor = v1.Variable(_ASSET_NAME, name="filename_tensor", trainable=False,
                                      collections=[], use_resource=False)
        assign_filename_op = filename_tensor.assign(_ASSET_NAME)

        signature_def_map = {
            "serving_default": _signature(v1, {"x": x}, {"y": y},
                                          tf.saved_model.PREDICT_METHOD_NAME),
            "regress_x_to_y": _signature(v1, {"inputs": serialized_tf_example}, {"outputs": y},
                                         tf.saved_model.REGRESS_METHOD_NAME),
            "regress_x_to_y2": _signature(v1, {"inputs": serialized_tf_example}, {"outputs": y2},
                                          tf.saved_model.REGRESS_METHOD_NAME),
            "regress_x2_to_y3": _signature(v1, {"inputs": x2}, {"outputs": y3},
                                           tf.saved_model.REGRESS_METHOD_NAME),
            "classify_x_to_y": _signature(v1, {"inputs": serialized_tf_example}, {"scores": y},
                                          tf.saved_model.CLASSIFY_METHOD_NAME),
        }

        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [tf.saved_model.SERVING],
            signature_def_map=signature_def_map,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            # Upstream's use_main_op=True variant: the "main op" runs after restore, here
            # only to (re)assign the asset file name as upstream does.
            main_op=tf.group(assign_filename_op),
            strip_default_attrs=True,
        )
        builder.save()
    # The source copy of the asset was only needed while saving; the builder copied it into
    # export_dir/assets.
    shutil.rmtree(asset_path.parent, ignore_errors=True)
    log.debug("wrote %s", export_dir)


def _parse_example(tf: Any, serialized: Any) -> tuple[Any, Any]:
    """Parse features ``x`` (required) and ``x2`` (default 0.0), both float [1], from
    serialized tf.Examples.

    Uses the V1 ``ParseExample`` op, as the official graph does, rather than
    ``tf.io.parse_example``: the latter emits ``ParseExampleV2``, which accepts any input rank
    and so cannot infer a shape from the unknown-rank placeholder; the signatures would then say
    ``unknown_rank`` instead of the official ``[-1, 1]``.
    """
    with tf.name_scope("ParseExample"):
        _, _, _, dense = tf.raw_ops.ParseExample(
            serialized=serialized,
            names=tf.constant([], tf.string),
            sparse_keys=[],
            dense_keys=[tf.constant("x"), tf.constant("x2")],
            dense_defaults=[tf.constant([], tf.float32),  # empty default: feature required
                            tf.constant([0.0], tf.float32)],
            sparse_types=[],
            dense_shapes=[[1], [1]],
        )
    return dense[0], dense[1]


def _signature(v1: Any, inputs: dict[str, Any], outputs: dict[str, Any], method: str) -> Any:
    """A SignatureDef from alias -> tensor maps (tensor names and shapes come from the graph)."""
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: info(t) for k, t in inputs.items()},
        outputs={k: info(t) for k, t in outputs.items()},
        method_name=method,
    )


def _write_asset(directory: Path) -> Path:
    """Write the demo asset next to the export dir (same temp area, so a crash leaves no litter
    outside it) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _ASSET_NAME
    path.write_text(_ASSET_CONTENTS)
    return path
