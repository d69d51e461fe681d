"""KServe's Python ``ModelServer`` serving the SavedModel through a custom ``kserve.Model``.

The minimal custom predictor of KServe's docs ("Deploy Custom Python Serving Runtime"): a
``kserve.Model`` subclass with ``load()`` and ``predict()``, answering the V1 protocol
(``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``, the same body TF Serving
takes). Best settings used (see bench/README.md): uvloop event loop, per-request latency
logging off, uvicorn's access log off, one worker per core given to the server.

    python kserve_model.py --model_name NAME --base_path DIR --http_port PORT [--workers N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kserve  # noqa: E402
import numpy as np  # noqa: E402
from kserve import model_server  # noqa: E402

from savedmodel import SavedModel  # noqa: E402


class TFSavedModel(kserve.Model):
    def __init__(self, name: str, base_path: str) -> None:
        super().__init__(name)
        self.base_path = base_path
        self.model: SavedModel | None = None
        self.load()

    def load(self) -> bool:
        self.model = SavedModel(self.base_path)
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        instances = payload["instances"]
        if self.model.inputs == ["image_bytes"]:
            import base64

            arr = np.array([base64.b64decode(i["b64"]) for i in instances], dtype=object)
        else:
            arr = np.asarray(instances, dtype=np.float32)
        outputs = self.model(arr)
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        keys = list(outputs)
        return {"predictions": [{k: outputs[k][i].tolist() for k in keys} for i in range(len(instances))]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--base_path", required=True)
    args, _ = parser.parse_known_args()
    model = TFSavedModel(args.model_name, args.base_path)
    server = kserve.ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                                enable_latency_logging=False, event_loop="uvloop", enable_docs_url=False)
    logging.getLogger("uvicorn.access").disabled = True
    server.start([model])
