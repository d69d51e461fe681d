#!/usr/bin/env python3
"""Send a JPEG to the ``resnet`` model over REST and print the predicted class.

The appliance's counterpart of the user guide's ``/opt/app/test/resnet_client.py`` (itself TF
Serving's ResNet example): the model takes encoded JPEG bytes (``image_bytes``), so the image is
sent as is, base64 in a ``{"b64": ...}`` object, and the server decodes and resizes it. Only the
standard library is used, so this runs with any Python 3.

    python3 clients/resnet_client.py cat.jpg                       # a node on localhost:8080
    python3 clients/resnet_client.py cat.jpg --server 10.0.0.11:8080 --model resnet
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request


def predict(server: str, model: str, jpeg: bytes, timeout: float = 60) -> dict:
    """POST one image to ``<server>/v1/models/<model>:predict``; the decoded JSON answer."""
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode("ascii")}]}).encode()
    request = urllib.request.Request(f"http://{server}/v1/models/{model}:predict", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:  # TF Serving's {"error": ...} body says what is wrong
        raise SystemExit(f"error: HTTP {err.code} from {server}: {err.read().decode(errors='replace')}")
    except urllib.error.URLError as err:
        raise SystemExit(f"error: cannot reach {server}: {err.reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a JPEG (or PNG/GIF/BMP) file")
    parser.add_argument("--server", default="localhost:8080", help="host:port of any node's REST port")
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    args = parser.parse_args(argv)
    with open(args.image, "rb") as f:
        jpeg = f.read()
    started = time.perf_counter()
    answer = predict(args.server, args.model, jpeg)
    latency_ms = (time.perf_counter() - started) * 1000
    if args.json:
        json.dump(answer, sys.stdout)
        print()
        return 0
    prediction = answer["predictions"][0]
    print(f"Prediction class: {prediction['classes']}, latency: {latency_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
