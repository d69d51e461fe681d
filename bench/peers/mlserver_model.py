"""MLServer serving the SavedModel through a custom ``mlserver.MLModel`` (V2 inference protocol).

The minimal custom runtime of MLServer's docs ("Serving a custom model"): an ``MLModel`` with
``async load()`` and ``async predict(InferenceRequest) -> InferenceResponse``, decoding and
encoding with MLServer's own ``NumpyCodec``. ``serving_bench.py`` writes the settings.json and
model-settings.json next to it (ports, ``parallel_workers``; see bench/README.md) and starts
``mlserver start DIR``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mlserver import MLModel  # noqa: E402
from mlserver.codecs import NumpyCodec  # noqa: E402
from mlserver.types import InferenceRequest, InferenceResponse  # noqa: E402

from savedmodel import SavedModel  # noqa: E402


class TFSavedModel(MLModel):
    async def load(self) -> bool:
        self.model = SavedModel(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        arrays = [NumpyCodec.decode_input(request_input) for request_input in payload.inputs]
        outputs = self.model(*arrays)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(name, value) for name, value in outputs.items()])
