"""The TensorFlow SavedModel runtime, loading like TF Serving's C++ ``LoadSavedModel``.

Models load with the TF1 session loader into their own Graph and Session: ``tf.saved_model.load``
rejects some official test models (``half_plus_three``'s sigdef shapes disagree with its graph).
Each signature gets one callable made once at load time with ``_make_callable_from_options``; it
feeds and fetches by the SignatureDef's tensor names and, unlike ``Session.run``, skips Python's
feed-shape check, because TF Serving never checks request shapes against the SignatureDef (a
``[3]`` tensor fed to a ``[-1,1]`` placeholder is valid there). That API is private, so
``tests/unit/test_modelserver_runtime.py`` pins it.

TF's executor hands every run to its inter-op thread pool and makes the caller wait, even for a
graph that computes in 10 us: two context switches per request, more than the model costs (a
perf count on the benchmark showed one voluntary switch per request on ``tf_Compute`` and one
preemption of the event loop). So each signature also gets a second callable with
``RunOptions.inter_op_thread_pool = -1``, which runs the graph in the calling thread, as TF's
``config.proto`` recommends "ONLY for simple graphs": a version whose recent runs average under
``INLINE_MAX_MICROS`` uses it (``run_cost``, kept by the server, which also decides from it that a
request runs on its event loop: ``modelserver/core/inline.py``); heavier graphs, and a
version whose cost is not known yet, keep the pool and its parallelism.

Ranks: TF's oneDNN kernels (on by default on x86) trust their input's rank, and a convolution
fed a 3-D image aborts the whole process on a failed CHECK (plain TF answers "convolution input
must be 4-dimensional"). So a request whose input has another rank than its placeholder's is
run through TF's shape inference first (:class:`RankCheck`), once per signature and ranks.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Callable, Mapping

import numpy as np

from modelserver.core.platforms import SAVED_MODEL, SAVED_MODEL_TEXT
from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import LoadedModel, LoadOptions, Runtime, Signature, TensorSpec
from modelserver.tfdevices import import_tensorflow

tf = import_tensorflow()  # this module is imported when the first TF model loads

from tensorflow.core.framework import types_pb2  # noqa: E402 - after TF's quiet import
from tensorflow.core.protobuf import config_pb2  # noqa: E402

log = logging.getLogger(__name__)

# Every SavedModel written by TF2's tf.saved_model.save carries this signature: its one "output"
# is the init NoOp, which cannot be fetched. TF Serving lists it in the metadata and serves
# nothing from it; so do we, without a warning at each load.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def _spec(alias: str, info: Any) -> TensorSpec:
    shape_proto = info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(d.size for d in shape_proto.dim)
    return TensorSpec(alias=alias, dtype=types_pb2.DataType.Name(info.dtype), shape=shape, tensor_name=info.name)


def _signature(name: str, sigdef: Any) -> Signature:
    return Signature(
        name=name,
        method_name=sigdef.method_name,
        inputs={alias: _spec(alias, sigdef.inputs[alias]) for alias in sorted(sigdef.inputs)},
        outputs={alias: _spec(alias, sigdef.outputs[alias]) for alias in sorted(sigdef.outputs)},
    )


def _serving_error(exc: BaseException) -> ServingError:
    if isinstance(exc, tf.errors.OpError):
        return ServingError(Code(exc.error_code), exc.message)
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        # TF's Python binding could not decode the status message, so it raised this instead and the
        # code is lost. Bytes that are not UTF-8 in a TF error come from the request's data (e.g.
        # StringToNumber quoting its input): a client error, as TF Serving answers it.
        return ServingError(Code.INVALID_ARGUMENT, exc.object.decode("utf-8", "replace"))
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")


def signatures_of(meta_graph: Any) -> dict[str, Signature]:
    """The MetaGraph's SignatureDefs in the runtime interface's terms."""
    sigdefs = meta_graph.signature_def
    return {name: _signature(name, sigdefs[name]) for name in sigdefs}


def servable(signature: Signature) -> bool:
    """False for a signature with nothing to fetch, or TF2's init op (a NoOp): listed, never run."""
    return bool(signature.outputs) and signature.name != INIT_OP_SIGNATURE


def signature_def_map(sigdefs: Mapping[str, Any]) -> Any:
    """GetModelMetadata's SignatureDefMap: the SavedModel's own SignatureDefs, as TF Serving shows them."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    result = get_model_metadata_pb2.SignatureDefMap()
    for name, sigdef in sigdefs.items():
        result.signature_def[name].CopyFrom(sigdef)
    return result


def _scalar(value: Any) -> np.ndarray:
    """A 0-d output as an array: the session returns a scalar string as plain ``bytes``."""
    return np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)


#: Input ranks a model checks besides its placeholders' own, at most (each check imports the
#: graph again: a client cannot make a model import without end).
MAX_RANK_CHECKS = 8


class RankCheck:
    """Whether TF's shape inference takes a signature's inputs at ranks other than their
    placeholders' (TF Serving feeds any shape: half_plus_two's ``[-1, 1]`` ``x`` takes a
    ``[3]``), before a kernel that trusts the rank sees them. The verdict of each signature and
    ranks is kept; at most :data:`MAX_RANK_CHECKS` of them per model."""

    def __init__(self, graph: Any, signatures: Mapping[str, Signature]) -> None:
        self._graph = graph
        self._ranks: dict[str, list[int | None]] = {}   # signature -> each input's placeholder rank
        for name, signature in signatures.items():
            ranks = []
            for spec in signature.inputs.values():
                try:
                    ranks.append(graph.get_tensor_by_name(spec.tensor_name).shape.rank)
                except (KeyError, ValueError):
                    ranks.append(None)
            if any(rank is not None for rank in ranks):
                self._ranks[name] = ranks
        self._verdicts: dict[tuple[str, tuple[int | None, ...]], str] = {}
        self._lock = threading.Lock()

    def check(self, signature: Signature, values: list[np.ndarray]) -> None:
        ranks = self._ranks.get(signature.name)
        if ranks is None:
            return
        key = tuple(None if rank is None or value.ndim == rank else value.ndim for rank, value in zip(ranks, values))
        if not any(rank is not None for rank in key):
            return
        verdict = self._verdicts.get((signature.name, key))
        if verdict is None:
            verdict = self._infer(signature, key)
        if verdict:
            raise ServingError(Code.INVALID_ARGUMENT, verdict)

    def _infer(self, signature: Signature, key: tuple[int | None, ...]) -> str:
        with self._lock:
            if (signature.name, key) in self._verdicts:
                return self._verdicts[(signature.name, key)]
            if len(self._verdicts) >= MAX_RANK_CHECKS:
                return (f"inputs of ranks {list(key)} in signature {signature.name}: this model checked "
                        f"{MAX_RANK_CHECKS} other input ranks already")
            specs = list(signature.inputs.values())
            graph = tf.Graph()
            with graph.as_default():
                replaced = {specs[i].tensor_name: tf.compat.v1.placeholder(
                    self._graph.get_tensor_by_name(specs[i].tensor_name).dtype, shape=[None] * rank)
                    for i, rank in enumerate(key) if rank is not None}
                try:
                    tf.graph_util.import_graph_def(self._graph.as_graph_def(), input_map=replaced, name="checked")
                    verdict = ""
                except ValueError as exc:
                    reason = str(exc).splitlines()[0].replace("checked/", "")
                    # "... for '{{node y}} = Conv2D[T=DT_FLOAT, ...](...)' with input shapes: ...": the node and op
                    reason = re.sub(r" for '\{\{node (\S+)\}\} = (\w+)\[.*", r" for node \1 (\2)", reason)
                    ranks = ", ".join(f"{alias} of rank {rank}" for alias, rank in zip(signature.inputs, key)
                                      if rank is not None)
                    verdict = f"The model cannot take input {ranks}: {reason}"
            log.info("signature %s, inputs of ranks %s: %s", signature.name, list(key), verdict or "fine")
            self._verdicts[(signature.name, key)] = verdict
            return verdict


class TensorFlowModel(LoadedModel):
    """A SavedModel in its own Session, with one prepared callable per signature."""

    def __init__(self, path: str, session: Any, meta_graph: Any, options: LoadOptions) -> None:
        super().__init__(path, signatures_of(meta_graph))
        self._session = session
        self._sigdefs = dict(meta_graph.signature_def)
        self._callables: dict[str, Callable[..., list]] = {}
        self._in_caller: dict[str, Callable[..., list]] = {}  # same, run in the calling thread
        for name, signature in self.signatures.items():
            if not servable(signature):
                continue
            callable_options = config_pb2.CallableOptions(
                feed=[spec.tensor_name for spec in signature.inputs.values()],
                fetch=[spec.tensor_name for spec in signature.outputs.values()])
            if options.run_timeout_ms > 0:
                callable_options.run_options.timeout_in_ms = options.run_timeout_ms
            try:
                self._callables[name] = session._make_callable_from_options(callable_options)
                callable_options.run_options.inter_op_thread_pool = -1
                self._in_caller[name] = session._make_callable_from_options(callable_options)
            except Exception as exc:  # noqa: BLE001 - a broken signature must not fail the others
                log.warning("signature %r of %s cannot be served: %s", name, path, exc)
        self._ranks = RankCheck(session.graph, self.signatures)

    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = (self._in_caller if self.run_cost.computes_here() else self._callables).get(signature.name)
        if run is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature.name}" not found.')
        feed = [inputs[alias] for alias in signature.inputs]
        self._ranks.check(signature, feed)
        try:
            values = run(*feed)
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a status
            raise _serving_error(exc) from None
        return {alias: value if type(value) is np.ndarray else _scalar(value)
                for alias, value in zip(signature.outputs, values)}

    def signature_def_map(self) -> Any:
        return signature_def_map(self._sigdefs)

    def close(self) -> None:
        self._callables.clear()
        self._in_caller.clear()


class TensorFlowRuntime(Runtime):
    """``model_platform: "tensorflow"``: SavedModels through the TF1 session loader."""

    platform = "tensorflow"

    def load(self, path: str, options: LoadOptions) -> LoadedModel:
        session, meta_graph = load_session(path, options)
        try:
            return TensorFlowModel(path, session, meta_graph, options)
        except ServingError:
            session.close()
            raise
        except Exception as exc:  # noqa: BLE001 - report any loader failure as the load status
            session.close()
            raise ServingError(Code.UNKNOWN, f"Failed to load SavedModel at {path}: {exc}") from None


def new_session(options: LoadOptions) -> Any:
    """A Session on a Graph of its own, with the server's thread flags."""
    config = config_pb2.ConfigProto(intra_op_parallelism_threads=options.intra_op_threads,
                                    inter_op_parallelism_threads=options.inter_op_threads)
    return tf.compat.v1.Session(graph=tf.Graph(), config=config)


def load_session(path: str, options: LoadOptions) -> tuple[Any, Any]:
    """The SavedModel at ``path`` loaded into a new Session: ``(session, meta_graph)``.

    Shared with the OpenVINO runtime, which converts what this loads: both accept the same models.
    """
    if not any(os.path.isfile(os.path.join(path, name)) for name in (SAVED_MODEL, SAVED_MODEL_TEXT)):
        raise ServingError(Code.NOT_FOUND, f"Could not find SavedModel .pb or .pbtxt at supplied export "
                                           f"directory path: {path}")
    session = new_session(options)
    try:
        with session.graph.as_default():
            return session, tf.compat.v1.saved_model.loader.load(session, list(options.tags), path)
    except Exception as exc:  # noqa: BLE001 - report any loader failure as the load status
        session.close()
        if isinstance(exc, tf.errors.OpError):
            raise _serving_error(exc) from None
        raise ServingError(Code.UNKNOWN, f"Failed to load SavedModel at {path}: {exc}") from None
