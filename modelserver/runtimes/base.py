"""The runtime interface: load a version directory, describe its signatures, run them.

The model server only speaks TF Serving's vocabulary (signatures, aliases, ``DT_*`` dtypes), so
every runtime describes its models in those terms; adding a runtime (ONNX next) means one
module with a :class:`Runtime` and a :class:`LoadedModel`, nothing else. The public
:meth:`LoadedModel.run` does the shared checks and calls the runtime's ``_run``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from modelserver.core.inline import RunCost
from modelserver.core.status import Code, ServingError


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: its alias, ``DT_*`` dtype, shape and graph tensor name."""

    alias: str
    dtype: str
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension
    tensor_name: str


@dataclass(frozen=True)
class Signature:
    """A named signature; inputs and outputs are keyed by alias in sorted order."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


@dataclass(frozen=True)
class LoadOptions:
    """What the server's flags say about loading and running models."""

    tags: tuple[str, ...] = ("serve",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    run_timeout_ms: int = 0  # 0: no timeout; TF Serving uses --rest_api_timeout_in_ms for REST
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Per model (``--model_settings_file``): the numeric precision to run in, checked against
    # :attr:`Runtime.precisions` before the load; and the runtime's own options (the settings'
    # ``openvino`` object: performance_hint, streams, threads), which other runtimes ignore.
    precision: str = "f32"
    runtime_options: Mapping[str, Any] = field(default_factory=dict)
    # Where runtimes keep what they computed from a version's files (``--runtime_cache_dir``,
    # modelserver/runtimes/artefacts.py): "" keeps nothing, every load converts again.
    cache_dir: str = ""
    cache_bytes: int = 4 << 30


class LoadedModel(abc.ABC):
    """One loaded model version. ``run`` may be called from many threads at once."""

    # True when ``run`` may block until other requests arrive (server-side batching): such a
    # model must never run on the event loop (modelserver/core/inline.py).
    waits_for_batch = False

    def __init__(self, path: str, signatures: Mapping[str, Signature]) -> None:
        self.path = path
        self.signatures = dict(signatures)
        # Recent run time, kept by whoever times the runs (the server's InstrumentedModel); where
        # a request runs and how a runtime runs it follow it (modelserver/core/inline.py).
        self.run_cost = RunCost()

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on tensors keyed by input alias; returns outputs keyed by alias."""
        signature = self.signatures.get(signature_name)
        if signature is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
        if inputs.keys() != signature.inputs.keys():
            sent, wanted = set(inputs), set(signature.inputs)
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        return self._run(signature, inputs)

    @abc.abstractmethod
    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the checked request; raise :class:`ServingError` with the runtime's message."""

    @abc.abstractmethod
    def signature_def_map(self) -> Any:
        """A ``tensorflow.serving.SignatureDefMap`` proto, for GetModelMetadata."""

    def close(self) -> None:
        """Release runtime resources; in-flight ``run`` calls hold their own references."""


def build_signature_def_map(signatures: Mapping[str, Signature]) -> Any:
    """A ``SignatureDefMap`` made from signatures (for runtimes whose models carry no SignatureDefs)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    result = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in signatures.items():
        sigdef = result.signature_def[name]
        sigdef.method_name = signature.method_name
        for target, specs in ((sigdef.inputs, signature.inputs), (sigdef.outputs, signature.outputs)):
            for alias, spec in specs.items():
                info = target[alias]
                info.name = spec.tensor_name
                info.dtype = type(info).DESCRIPTOR.fields_by_name["dtype"].enum_type.values_by_name[spec.dtype].number
                if spec.shape is None:
                    info.tensor_shape.unknown_rank = True
                else:
                    for size in spec.shape:
                        info.tensor_shape.dim.add().size = size
    return result


class Runtime(abc.ABC):
    """Loads model versions of one ``model_platform``."""

    platform: str = ""
    # The precisions this runtime can run a model in; a runtime that can do more lists them.
    precisions: tuple[str, ...] = ("f32",)

    def check_options(self, options: LoadOptions) -> None:
        """Refuse, before any work, a load this runtime cannot do as asked (INVALID_ARGUMENT)."""
        if options.precision not in self.precisions:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"precision {options.precision} is not supported by the {self.platform} runtime "
                               f"(supported: {', '.join(self.precisions)})")

    @abc.abstractmethod
    def load(self, path: str, options: LoadOptions) -> LoadedModel:
        """Load the version directory ``path``; raise :class:`ServingError` when it cannot."""
