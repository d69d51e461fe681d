"""SavedModels on OpenVINO: TensorFlow in front for what OpenVINO cannot run, the network on OpenVINO.

OpenVINO's TensorFlow frontend converts numeric graphs, not string ones: it has no rule for
``DecodeImage`` (the built-in ``resnet`` takes JPEG bytes) nor for ``ParseExample`` (every
Classify/Regress signature), and after a ``map_fn`` over images it loses the rank (the RGB->BGR
reverse then fails). So each signature is split where strings end:

1. The SavedModel loads exactly as on the TensorFlow runtime (same loader, same models accepted),
   its variables are frozen into constants and its function calls inlined (Grappler's function
   optimizer): one flat graph for all signatures.
2. The *host* part of a signature is every op that touches a string, variant or resource tensor,
   with everything it depends on that depends on a request input. It stays in TensorFlow: decoding
   and resizing the JPEGs (~12% of ResNet-50's time on TensorFlow) or parsing tf.Examples.
3. The rest (the network) becomes a GraphDef whose inputs are placeholders standing for the
   tensors that cross from the host part (or straight from the request), with the shapes
   TensorFlow inferred for them (``[?, 224, 224, 3]`` for resnet: the rank is known again), and
   is converted with ``openvino.convert_model``. Weights stay FP32.

What the steps above produce (SignatureDefs, the host graph, each network as IR in FP32) is
cached by the version's content (``--runtime_cache_dir``), so a restart skips them: the cached
load imports the host graph and compiles the networks.

A signature without strings runs on OpenVINO alone; one made only of strings (an echo) runs on
TensorFlow alone: there is no network to speed up.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from modelserver.core.status import Code, ServingError
from modelserver.runtimes import artefacts
from modelserver.runtimes.base import LoadOptions, Signature
from modelserver.runtimes.openvino import Network, OpenVinoModel, Stage
from modelserver.runtimes.tensorflow import (_scalar, _serving_error, load_session, new_session, servable,
                                             signature_def_map, signatures_of, tf)

from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2  # noqa: E402

log = logging.getLogger(__name__)

# Tensors of these types cannot cross into OpenVINO: the ops touching them stay in TensorFlow.
HOST_DTYPES = frozenset({tf.string, tf.variant, tf.resource})
INPUT_PREFIX = "openvino_input_"
OUTPUT_PREFIX = "openvino_output_"

Compile = Callable[..., Network]


# Bumped when what a cache entry holds changes, so entries of an older layout are never read.
CACHE_FORMAT = "savedmodel-split-1"


@dataclass
class Plan:
    """One signature's stages as data: what its TensorFlow part feeds and fetches, and its
    network (an ``ov.Model``) with the tensor names of its input and output ports."""

    host_feeds: list[str]
    host_fetches: list[str]
    network: Any = None
    network_feeds: list[str] = field(default_factory=list)
    network_fetches: list[str] = field(default_factory=list)


@dataclass
class Converted:
    """A SavedModel made ready for OpenVINO: its SignatureDefs, the TensorFlow graph of every
    signature's host part, and each signature's plan. What the cache keeps."""

    sigdefs: Any            # a MetaGraphDef holding only the signature_def map
    host_graph: Any         # GraphDef; empty when no signature has a host part
    plans: dict[str, Plan]

    def save(self, directory: Path) -> None:
        import openvino as ov

        (directory / "signatures.pb").write_bytes(self.sigdefs.SerializeToString())
        (directory / "host.pb").write_bytes(self.host_graph.SerializeToString())
        index = {}
        for i, (name, plan) in enumerate(sorted(self.plans.items())):
            entry = {"host_feeds": plan.host_feeds, "host_fetches": plan.host_fetches, "network": None}
            if plan.network is not None:
                entry["network"] = {"file": f"network-{i}.xml", "feeds": plan.network_feeds,
                                    "fetches": plan.network_fetches}
                # compress_to_fp16 defaults to True: the weights would lose precision on disk.
                ov.save_model(plan.network, str(directory / f"network-{i}.xml"), compress_to_fp16=False)
            index[name] = entry
        (directory / "plans.json").write_text(json.dumps(index))

    @classmethod
    def read(cls, directory: Path) -> "Converted":
        import openvino as ov

        sigdefs = meta_graph_pb2.MetaGraphDef()
        sigdefs.ParseFromString((directory / "signatures.pb").read_bytes())
        host_graph = tf.compat.v1.GraphDef()
        host_graph.ParseFromString((directory / "host.pb").read_bytes())
        core = ov.Core()
        plans = {}
        for name, entry in json.loads((directory / "plans.json").read_text()).items():
            plan = Plan(entry["host_feeds"], entry["host_fetches"])
            if entry["network"] is not None:
                plan.network = core.read_model(str(directory / entry["network"]["file"]))
                plan.network_feeds, plan.network_fetches = entry["network"]["feeds"], entry["network"]["fetches"]
            plans[name] = plan
        return cls(sigdefs, host_graph, plans)


def load(path: str, options: LoadOptions, compile_network: Compile) -> OpenVinoModel:
    """The SavedModel at ``path`` on OpenVINO: from the cache of converted models when it holds
    this version's content (:mod:`modelserver.runtimes.artefacts`), else loaded, frozen, split
    and converted here (and cached)."""
    import openvino as ov

    cache = artefacts.cache_at(options.cache_dir, options.cache_bytes)
    converted = None
    if cache is not None:
        key = artefacts.cache_key(CACHE_FORMAT, artefacts.content_hash(path), ov.__version__, tf.__version__,
                                  ",".join(options.tags))
        entry = cache.get(key)
        if entry is not None:
            try:
                converted = Converted.read(entry)
                log.info("openvino: %s: converted network read from the cache (%s)", path, entry)
            except Exception as exc:  # noqa: BLE001 - an unreadable entry is converted again
                log.warning("openvino: %s: cache entry %s unreadable (%s); converting again", path, entry, exc)
        if converted is None:
            converted = convert(path, options)
            cache.put(key, converted.save)
    else:
        converted = convert(path, options)
    return _build(path, converted, options, compile_network)


def convert(path: str, options: LoadOptions, only: str | None = None,
            unshaped: frozenset[str] = frozenset()) -> Converted:
    """Load, freeze and split the SavedModel at ``path``; convert each signature's network.

    ``only``: that signature alone, its network inputs named in ``unshaped`` converted as of no
    known shape (a variant for requests of another rank, :func:`_variant`)."""
    session, meta_graph = load_session(path, options)
    try:
        signatures = {name: sig for name, sig in signatures_of(meta_graph).items()
                      if servable(sig) and only in (None, name)}
        fetches = sorted({spec.tensor_name for sig in signatures.values() for spec in sig.outputs.values()})
        flat = _inline(_freeze(session, fetches), fetches)
    finally:
        session.close()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(flat, name="")
    plans = {name: _plan(path, graph, flat, sig, unshaped) for name, sig in signatures.items()}
    host_nodes = sorted({name.split(":")[0] for plan in plans.values() for name in plan.host_fetches})
    host_graph = (tf.compat.v1.graph_util.extract_sub_graph(flat, host_nodes) if host_nodes
                  else tf.compat.v1.GraphDef())
    sigdefs = meta_graph_pb2.MetaGraphDef()
    for name, sigdef in meta_graph.signature_def.items():
        sigdefs.signature_def[name].CopyFrom(sigdef)
    return Converted(sigdefs, host_graph, plans)


def _build(path: str, converted: Converted, options: LoadOptions, compile_network: Compile) -> OpenVinoModel:
    """The servable model: a TensorFlow session for the host parts, each network compiled."""
    host = new_session(options)
    with host.graph.as_default():
        tf.graph_util.import_graph_def(_parallel_loops(converted.host_graph), name="")
    signatures = signatures_of(converted.sigdefs)
    pipelines: dict[str, list[Stage]] = {}
    for name, plan in converted.plans.items():
        stages: list[Stage] = []
        if plan.host_fetches:
            stages.append(_host_stage(host, plan.host_feeds, plan.host_fetches, options))
        if plan.network is not None:
            aliases = {spec.tensor_name: alias for alias, spec in signatures[name].inputs.items()}
            stages.append(compile_network(plan.network, plan.network_feeds, plan.network_fetches, aliases,
                                          f"{path} signature {name}",
                                          _variant(path, options, name, plan.network_feeds, plan.network_fetches)))
        pipelines[name] = stages
    sigdefs = dict(converted.sigdefs.signature_def)
    return OpenVinoModel(path, signatures, pipelines, lambda: signature_def_map(sigdefs))


def _variant(path: str, options: LoadOptions, signature_name: str, feeds: list[str],
             fetches: list[str]) -> Callable[[frozenset[str]], Any]:
    """How a network is converted again with some inputs of no known shape (the
    :class:`~modelserver.runtimes.openvino.Network` of a request whose shape TensorFlow would
    take, not the declared one): converted with their declared shapes, OpenVINO bakes them in
    (a scalar weight becomes ``[1, 1]`` for an input ``[?, 1]``, so an input ``[3]`` would
    answer ``[1, 3]``, not TensorFlow's ``[3]``). Ports in the order of ``feeds`` and ``fetches``."""
    def convert_again(unshaped: frozenset[str]) -> Any:
        import openvino as ov

        plan = convert(path, options, only=signature_name, unshaped=unshaped).plans[signature_name]
        params, results = plan.network.get_parameters(), plan.network.get_results()
        if sorted(plan.network_feeds) != sorted(feeds) or sorted(plan.network_fetches) != sorted(fetches):
            raise ValueError(f"the network converted again has other ports: {plan.network_feeds}")
        return ov.Model([results[plan.network_fetches.index(name)] for name in fetches],
                        [params[plan.network_feeds.index(name)] for name in feeds], signature_name)
    return convert_again


def _parallel_loops(graph_def: Any) -> Any:
    """``graph_def`` with its loops lowered again when the session runs it.

    :func:`_inline` keeps loops functional (the converter needs them so), but a functional
    ``While`` runs its iterations one after the other: ``map_fn``'s ``parallel_iterations`` only
    take effect once TensorFlow lowers the loop to Switch/Merge, as it does for the SavedModel
    itself. So the host part (resnet: one ``map_fn`` decoding and resizing each JPEG) would
    decode a batch of 32 on one core (~40 ms) where TensorFlow as served uses both.
    """
    copy = tf.compat.v1.GraphDef()
    copy.CopyFrom(graph_def)
    for node in _all_nodes(copy):
        if node.op in ("While", "StatelessWhile", "If", "StatelessIf"):
            node.attr["_lower_using_switch_merge"].b = True
    return copy


def _freeze(session: Any, fetches: list[str]) -> Any:
    from tensorflow.python.framework import convert_to_constants

    nodes = sorted({name.split(":")[0] for name in fetches})
    return convert_to_constants.convert_variables_to_constants_from_session_graph(
        session, session.graph.as_graph_def(), nodes)


def _inline(graph_def: Any, fetches: list[str]) -> Any:
    """The graph with every function call inlined (control flow kept functional), names kept."""
    from tensorflow.python.grappler import tf_optimizer

    for node in _all_nodes(graph_def):
        if node.op in ("While", "StatelessWhile", "If", "StatelessIf"):
            node.attr["_lower_using_switch_merge"].b = False
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=graph)
    fetch_collection = meta_graph_pb2.CollectionDef()
    fetch_collection.node_list.value.extend(fetches)
    meta_graph.collection_def["train_op"].CopyFrom(fetch_collection)
    config = config_pb2.ConfigProto()
    rewrites = config.graph_options.rewrite_options
    rewrites.min_graph_nodes = -1
    rewrites.optimizers.append("function")
    rewrites.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _all_nodes(graph_def: Any) -> Iterable[Any]:
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _closure(start: Iterable[Any]) -> set[Any]:
    """``start`` and every op they depend on (data and control edges)."""
    seen: set[Any] = set()
    stack = list(start)
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return seen


def _dependents(roots: set[Any], within: set[Any]) -> set[Any]:
    """The ops of ``within`` that depend on one of ``roots`` (the request's inputs)."""
    reached = set(roots)
    stack = list(roots)
    while stack:
        for tensor in stack.pop().outputs:
            for consumer in tensor.consumers():
                if consumer in within and consumer not in reached:
                    reached.add(consumer)
                    stack.append(consumer)
    return reached


def _touches_host_types(op: Any) -> bool:
    return any(t.dtype.base_dtype in HOST_DTYPES for t in (*op.inputs, *op.outputs))


def _plan(path: str, graph: Any, flat: Any, signature: Signature, unshaped: frozenset[str] = frozenset()) -> Plan:
    """The signature's plan: TensorFlow for its host ops (if any), then its network (if any).

    ``crossing`` are the tensors the network reads: from the host ops or straight from the
    request; signature outputs that host ops make are fetched from TensorFlow too.
    """
    try:
        outputs = [graph.get_tensor_by_name(spec.tensor_name) for spec in signature.outputs.values()]
    except (KeyError, ValueError) as exc:
        raise ServingError(Code.INTERNAL, f"signature {signature.name} of {path}: {exc}") from None
    needed = _closure(t.op for t in outputs)
    feeds = {spec.tensor_name: graph.get_tensor_by_name(spec.tensor_name) for spec in signature.inputs.values()
             if _in_graph(graph, spec.tensor_name)}
    feed_ops = {t.op for t in feeds.values()}
    dynamic = _dependents(feed_ops, needed)
    host_ops = (_closure(op for op in needed if _touches_host_types(op)) & dynamic) | feed_ops
    crossing = _unique(t for op in needed - host_ops for t in op.inputs if t.op in host_ops)
    network_outputs = [t for t in outputs if t.op not in host_ops]
    host_fetches = _unique([t for t in crossing if t.name not in feeds] +
                           [t for t in outputs if t.op in host_ops and t.name not in feeds])
    plan = Plan([n for n, t in feeds.items() if t.op in _closure(x.op for x in host_fetches)] if host_fetches else [],
                [t.name for t in host_fetches])
    if network_outputs:
        plan.network = _convert(path, signature.name, _body(flat, host_ops, crossing, network_outputs, unshaped))
        plan.network_feeds = [crossing[_index(p, INPUT_PREFIX)].name for p in plan.network.inputs]
        plan.network_fetches = [network_outputs[_index(p, OUTPUT_PREFIX)].name for p in plan.network.outputs]
    log.info("openvino: %s signature %s: %d op(s) on TensorFlow, %d on OpenVINO", path, signature.name,
             len((host_ops - feed_ops) & needed), len(needed - host_ops))
    return plan


def _in_graph(graph: Any, tensor_name: str) -> bool:
    try:
        graph.get_tensor_by_name(tensor_name)
    except (KeyError, ValueError):
        return False  # an input no output depends on: pruned by the freeze, never needed
    return True


def _unique(tensors: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(tensors))


def _host_stage(session: Any, feeds: list[str], fetches: list[str], options: LoadOptions) -> Stage:
    """The TensorFlow part of a signature: request inputs in, the tensors the network needs out."""
    callable_options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
    if options.run_timeout_ms > 0:
        callable_options.run_options.timeout_in_ms = options.run_timeout_ms
    run = session._make_callable_from_options(callable_options)

    def stage(values: Any) -> dict[str, Any]:
        try:
            results = run(*[values[name] for name in feeds])
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a status
            raise _serving_error(exc) from None
        return {name: value if type(value) is np.ndarray else _scalar(value) for name, value in zip(fetches, results)}
    return stage


def _body(flat: Any, host_ops: set[Any], crossing: list[Any], outputs: list[Any],
          unshaped: frozenset[str] = frozenset()) -> Any:
    """The GraphDef of the network: placeholders for the crossing tensors (with the shapes
    TensorFlow inferred, but for those in ``unshaped``), an Identity per output."""
    body = tf.compat.v1.GraphDef()
    body.versions.CopyFrom(flat.versions)
    body.library.CopyFrom(flat.library)
    host_names = {op.name for op in host_ops}
    replaced: dict[str, str] = {}
    for i, tensor in enumerate(crossing):
        node = body.node.add(name=f"{INPUT_PREFIX}{i}", op="Placeholder")
        node.attr["dtype"].type = tensor.dtype.as_datatype_enum
        if tensor.name not in unshaped:
            node.attr["shape"].shape.CopyFrom(tensor.shape.as_proto())
        replaced[tensor.name] = node.name
        if tensor.value_index == 0:
            replaced[tensor.op.name] = node.name
    for node in flat.node:
        if node.name in host_names:
            continue
        copy = body.node.add()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(replaced.get(name, name) for name in node.input
                          if not (name.startswith("^") and name[1:] in host_names))
    for i, tensor in enumerate(outputs):
        body.node.add(name=f"{OUTPUT_PREFIX}{i}", op="Identity", input=[tensor.name]) \
            .attr["T"].type = tensor.dtype.as_datatype_enum
    return tf.compat.v1.graph_util.extract_sub_graph(body, [f"{OUTPUT_PREFIX}{i}" for i in range(len(outputs))])


def _convert(path: str, signature_name: str, body: Any) -> Any:
    """The network as an ``ov.Model`` (FP32: converted in memory, never compressed by a save).

    Converted from a file: given a GraphDef object, the converter walks the graph from Python
    (several times slower for ResNet-50); from a ``.pb`` its C++ frontend parses it.
    """
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="openvino-convert-") as scratch:
        graph_file = os.path.join(scratch, "network.pb")
        with open(graph_file, "wb") as out:
            out.write(body.SerializeToString())
        try:
            return ov.convert_model(graph_file)
        except Exception as exc:  # noqa: BLE001 - a network OpenVINO cannot convert fails the load
            raise ServingError(Code.INVALID_ARGUMENT, f"OpenVINO cannot convert signature {signature_name} of "
                                                      f"{path}: {_conversion_failure(exc)}") from None


def _conversion_failure(exc: Exception) -> str:
    """The converter's reason: its summary lines ("No conversion rule found for operations:
    BesselI0e"), not the source location before them nor the pointer to the docs after them."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    summary = [line[3:] for line in lines if line.startswith("-- ")]
    if summary:
        return "; ".join(summary)
    useful = [line for line in lines if not line.startswith(("To facilitate", "Check '"))]
    return useful[-1] if useful else type(exc).__name__


def _index(port: Any, prefix: str) -> int:
    for name in port.get_names():
        if name.startswith(prefix):
            return int(name[len(prefix):].split(":")[0])
    raise ServingError(Code.INTERNAL, f"converted network has an unexpected port {port.get_any_name()}")
