"""The SavedModel loader both peers use: the same TF1 session callable our model server uses.

MLServer and KServe ship no TensorFlow SavedModel runtime, so each gets the minimal custom model
class its docs describe (``mlserver_model.py``, ``kserve_model.py``). Both call this one loader,
which prepares a ``Session`` callable per signature like ``modelserver/runtimes/tensorflow.py``
(about 10-30 us per half_plus_two call instead of ~300 us for an eager
``tf.saved_model.load(...).signatures[...]`` call): the comparison measures the servers, not
two ways of calling TensorFlow. Like the appliance's runtime does for a cheap graph, the callable
runs the graph in the calling thread (``RunOptions.inter_op_thread_pool = -1``), which saves two
context switches per call (the peers only serve small models here).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class SavedModel:
    """``serving_default`` of the newest version under ``base_path``, as a numpy function."""

    def __init__(self, base_path: str, signature: str = "serving_default") -> None:
        versions = sorted((d for d in os.listdir(base_path) if d.isdigit()), key=int)
        path = os.path.join(base_path, versions[-1])
        graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        sigdef = meta.signature_def[signature]
        self.inputs = sorted(sigdef.inputs)
        self.outputs = sorted(sigdef.outputs)
        from tensorflow.core.protobuf import config_pb2

        # As the appliance's runtime (and TF Serving) does: no Python-side feed-shape check.
        options = config_pb2.CallableOptions(feed=[sigdef.inputs[a].name for a in self.inputs],
                                             fetch=[sigdef.outputs[a].name for a in self.outputs])
        options.run_options.inter_op_thread_pool = -1
        self._run = self.session._make_callable_from_options(options)

    def __call__(self, *arrays: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self._run(*arrays)))
