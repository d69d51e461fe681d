"""What the model server does with a request that names no version, besides answering it.

A request naming a version (``/versions/N``, ``/labels/L``, gRPC ``model_spec.version`` or
``version_label``) is served by that version and nothing else happens to it. A request naming
none is answered by the model's default version (``ModelManager.lookup``: the newest available
version that is no candidate of a shadow) and then shown to :meth:`Rollout.answered`, which
hands a sample to the model's shadow (:mod:`modelserver.shadow`) without delaying the answer.
REST (``handlers.py``) and gRPC (``grpc_server.py``) both call it, after the primary ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from modelserver.manager import VersionState
    from modelserver.shadow import ShadowTap


class Rollout:
    """The hooks the request paths call for requests that name no version."""

    def __init__(self, shadow: ShadowTap | None = None) -> None:
        self.shadow = shadow

    def answered(self, name: str, api: str, state: VersionState, signature: str,
                 inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """``state`` answered an unversioned request of model ``name`` with ``outputs``."""
        if self.shadow is not None:
            self.shadow.offer(name, api, state, signature, inputs, outputs)
