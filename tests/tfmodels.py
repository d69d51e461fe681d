"""Small SavedModels built with TensorFlow for the model server tests (TF1-style graphs).

Each model is exported the way TF Serving's own test models are: a Graph, placeholders, and
SignatureDefs saved with ``SavedModelBuilder`` under the ``serve`` tag, into
``<dest>/<model>/<version>/``.
"""

from __future__ import annotations

from pathlib import Path


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def saved_model_bytes(size: int, seed: int = 0) -> bytes:
    """A ``saved_model.pb`` of exactly ``size`` (>= 8) bytes that parses as a SavedModel but holds
    no graph: one MetaGraphDef whose ``meta_info_def.meta_graph_version`` is padding, written in
    the protobuf wire format (no TensorFlow). For sync tests: the agent checks that the proto
    parses, no model server loads it."""
    fill = chr(ord("a") + seed % 26).encode()
    for pad in range(size, -1, -1):
        # SavedModel.meta_graphs(2) -> MetaGraphDef.meta_info_def(1) -> MetaInfoDef.meta_graph_version(1)
        data = _field(0x12, _field(0x0A, _field(0x0A, fill * pad)))
        if len(data) == size:
            return data
    raise ValueError(f"no SavedModel of exactly {size} bytes")


def _save(path: Path, build) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        signatures = build(tf, v1)
        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
        builder.save()


def _sig(v1, inputs: dict, outputs: dict, method: str = "tensorflow/serving/predict"):
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: info(t) for k, t in inputs.items()}, outputs={k: info(t) for k, t in outputs.items()},
        method_name=method)


def half_plus(bias: float, split_inputs: bool = False):
    """y = 0.5 * x + bias, with predict, classify and regress signatures like TF Serving's half_plus_two.

    ``split_inputs`` gives classify and regress their own tf.Example placeholder, as a TF2 export
    (``saved_model_half_plus_two_tf2_cpu``) does; otherwise they share one, as TF1 exports do.
    """
    def examples(tf, v1, a, b, name):
        serialized = v1.placeholder(tf.string, name=name)
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})
        return serialized, tf.add(a * parsed["x"], b)

    def build(tf, v1):
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(bias, name="b")
        x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
        y = tf.add(a * x, b, name="y")
        classify_in, classify_out = examples(tf, v1, a, b, "tf_example")
        regress_in, regress_out = (examples(tf, v1, a, b, "tf_example_regress") if split_inputs
                                   else (classify_in, classify_out))
        return {
            "serving_default": _sig(v1, {"x": x}, {"y": y}),
            "classify_x_to_y": _sig(v1, {"inputs": classify_in}, {"scores": classify_out},
                                    "tensorflow/serving/classify"),
            "regress_x_to_y": _sig(v1, {"inputs": regress_in}, {"outputs": regress_out},
                                   "tensorflow/serving/regress"),
        }
    return build


def two_inputs(tf, v1):
    """Two named inputs and two outputs: sum and difference."""
    a = v1.placeholder(tf.float32, shape=[None], name="a")
    b = v1.placeholder(tf.float32, shape=[None], name="b")
    return {"serving_default": _sig(v1, {"a": a, "b": b}, {"sum": a + b, "diff": a - b})}


def strings(tf, v1):
    """String in; the same bytes out as ``echo_bytes`` (b64 in JSON) and ``echo`` (plain), and lengths."""
    s = v1.placeholder(tf.string, shape=[None], name="s")
    return {"serving_default": _sig(v1, {"s": s}, {"echo_bytes": tf.identity(s), "echo": tf.identity(s),
                                                   "length": tf.strings.length(s)})}


def ints(tf, v1):
    """int32 in, doubled int32 out; int64 out as well."""
    x = v1.placeholder(tf.int32, shape=[None], name="x")
    return {"serving_default": _sig(v1, {"x": x}, {"y": x * 2})}


def numbers(tf, v1):
    """Strings parsed as float32 (``tf.strings.to_number``): TF's error quotes a string it cannot parse."""
    s = v1.placeholder(tf.string, shape=[None], name="s")
    return {"serving_default": _sig(v1, {"s": s}, {"y": tf.strings.to_number(s)})}


def special(tf, v1):
    """``y = bessel_i0e(x)``: numbers in and out, but OpenVINO has no conversion rule for BesselI0e."""
    x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
    return {"serving_default": _sig(v1, {"x": x}, {"y": tf.math.special.bessel_i0e(x)})}


def conv(tf, v1):
    """A 2x2 convolution of a [?, 4, 4, 1] image: TF's oneDNN kernel aborts the process on a
    3-D one unless the model server refuses it first (modelserver/runtimes/tensorflow.py)."""
    x = v1.placeholder(tf.float32, shape=[None, 4, 4, 1], name="x")
    y = tf.nn.conv2d(x, tf.ones([2, 2, 1, 1]), strides=1, padding="VALID", name="y")
    return {"serving_default": _sig(v1, {"x": x}, {"y": y})}


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    """``assets.extra/tf_serving_warmup_requests`` of ``version_dir``: a TFRecord of PredictionLogs."""
    import tensorflow as tf

    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record)


def predict_log(model: str, inputs: dict, signature: str = "") -> bytes:
    """A PredictionLog record of a Predict request; ``inputs``: alias -> array-like (shape kept)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return entry.SerializeToString()


def classifier(perturb: float = 0.0, flip: bool = False, dropout: float = 0.0):
    """Four-class scores of ``x`` (float [None, 4]): softmax(3x), whose top class is argmax(x).

    Variants for shadow tests: ``perturb`` added to every score; ``flip`` moves the scores one
    class on (a changed top class) for the rows whose ``x[0]`` is negative; ``dropout`` drops
    inputs at inference, so two runs answer differently (a nondeterministic model).
    """
    def build(tf, v1):
        x = v1.placeholder(tf.float32, shape=[None, 4], name="x")
        h = tf.nn.dropout(x, rate=dropout) if dropout else x
        scores = tf.nn.softmax(3.0 * h) + perturb
        if flip:
            scores = tf.where(x[:, :1] < 0, tf.roll(scores, 1, axis=1), scores)
        return {"serving_default": _sig(v1, {"x": x}, {"scores": tf.identity(scores, name="scores")})}
    return build


def classifier_batch(rng, rows: int = 20):
    """``rows`` inputs of :func:`classifier` with distinct positive values; exactly one has a
    negative ``x[0]`` (the one ``flip`` changes): 1 in ``rows`` inputs changes class."""
    import numpy as np

    batch = np.array([rng.sample([0.1, 0.4, 0.7, 1.0], 4) for _ in range(rows)], dtype=np.float32)
    batch[rng.randrange(rows), 0] = -1.0
    return batch


def classifier_scores(batch):
    """What :func:`classifier` (no variant) answers for ``batch``."""
    import numpy as np

    exp = np.exp(3.0 * batch)
    return exp / exp.sum(axis=1, keepdims=True)


def send_classifier(rest_url: str, grpc_target: str, model: str, count: int, seed: int, rows: int = 20,
                    check: bool = True) -> None:
    """``count`` requests of :func:`classifier_batch` naming no version, every third over gRPC;
    with ``check`` every answer must be version 1's (:func:`classifier_scores`): a shadow never
    changes what the client gets."""
    import random

    import grpc
    import numpy as np
    import requests
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    rng = random.Random(seed)
    channel = grpc.insecure_channel(grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with requests.Session() as session:
        for i in range(count):
            batch = classifier_batch(rng, rows)
            if i % 3 == 2:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model
                request.inputs["x"].dtype = 1  # DT_FLOAT
                request.inputs["x"].tensor_shape.dim.add().size = rows
                request.inputs["x"].tensor_shape.dim.add().size = 4
                request.inputs["x"].float_val.extend(batch.reshape(-1).tolist())
                response = stub.Predict(request, timeout=30)
                assert response.model_spec.version.value == 1
                scores = np.array(response.outputs["scores"].float_val).reshape(rows, 4)
            else:
                resp = session.post(f"{rest_url}/v1/models/{model}:predict", json={"instances": batch.tolist()},
                                    timeout=30)
                assert resp.status_code == 200, resp.text
                scores = np.array(resp.json()["predictions"])
            if check:
                np.testing.assert_allclose(scores, classifier_scores(batch), rtol=1e-5)
    channel.close()


MODELS = {
    "half_plus_two": {1: half_plus(2.0)},
    "half_plus": {1: half_plus(2.0, split_inputs=True), 2: half_plus(3.0, split_inputs=True)},
    "two_inputs": {1: two_inputs},
    "strings": {1: strings},
    "ints": {1: ints},
    "numbers": {1: numbers},
    "conv": {1: conv},
}


def build_all(dest: Path, only: tuple[str, ...] = ()) -> dict[str, Path]:
    """Export every model (or just those in ``only``) under ``dest``; returns model name -> base path."""
    paths = {}
    for name, versions in MODELS.items():
        if only and name not in only:
            continue
        for version, build in versions.items():
            _save(dest / name / str(version), build)
        paths[name] = dest / name
    return paths


def save_version(path: Path, build) -> None:
    """Export one version directory (``build`` as in :data:`MODELS`), e.g. into a staging dir."""
    _save(path, build)


def model_config(paths: dict[str, Path]) -> str:
    """A ModelServerConfig text serving every built model; ``half_plus`` serves all versions with labels."""
    parts = []
    for name, path in paths.items():
        extra = ""
        if name == "half_plus":
            extra = ("    model_version_policy { all {} }\n"
                     "    version_labels { key: 'stable' value: 1 }\n"
                     "    version_labels { key: 'canary' value: 2 }\n")
        parts.append(f"  config {{\n    name: '{name}'\n    base_path: '{path}'\n    model_platform: 'tensorflow'\n"
                     f"{extra}  }}\n")
    return "model_config_list {\n" + "".join(parts) + "}\n"


def start_model_server(processes, args: list[str], log: Path, timeout: float = 120.0, **popen) -> str:
    """Start ``appliance-model-server`` on a free loopback REST port; return its base URL once ready.

    The REST port opens only after every model is AVAILABLE, so "port answers" means "ready".
    """
    import urllib.error
    import urllib.request

    from tests.conftest import GiveUp, free_port, venv_bin, wait_until

    # A --port among ``args`` was drawn and let go: the kernel may hand the same port out again.
    drawn = {arg.split("=", 1)[1] for arg in args if arg.startswith("--port=")}
    port = free_port()
    while str(port) in drawn:
        port = free_port()
    proc = processes.start([venv_bin("appliance-model-server"), "--listen_address=127.0.0.1", "--port=0",
                            f"--rest_api_port={port}", *args], log=log, **popen)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise GiveUp(f"model server exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/v1/models/x", timeout=2)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    try:
        wait_until(ready, timeout=timeout, what=f"model server on {url}")
    except TimeoutError:
        raise
    except GiveUp as exc:
        raise AssertionError(str(exc)) from None
    return url


def serve_config(processes, config: Path, log_name: str, timeout: float = 120.0,
                 extra: list[str] = ()) -> tuple[str, int]:
    """Start a server on ``config`` (and ``extra`` flags) with REST and gRPC on free ports, logging to
    test-artifacts/<log_name> (emptied first); returns (REST base URL, gRPC port)."""
    from tests.conftest import ARTIFACTS, free_port

    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / log_name
    log.write_bytes(b"")
    grpc_port = free_port()
    return start_model_server(processes, [f"--model_config_file={config}", f"--port={grpc_port}", *extra], log,
                              timeout=timeout), grpc_port


def serve_test_models(root: Path, processes, log_name: str, args: list[str] = (),
                      only: tuple[str, ...] = (), **popen) -> str:
    """Build the test models under ``root``, write their models.config, start a server on it.

    The log goes to test-artifacts/<log_name> (emptied first); returns the REST base URL.
    """
    from tests.conftest import ARTIFACTS

    config = root / "models.config"
    config.write_text(model_config(build_all(root / "models", only=only)))
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / log_name
    log.write_bytes(b"")
    return start_model_server(processes, [f"--model_config_file={config}", *args], log, **popen)


def canary(bias: float, fail_at: float | None = None, work: int = 0):
    """y = 0.5 * x + bias on x of shape [None], for rollout tests. ``fail_at``: a request with an
    input at or above it fails (INVALID_ARGUMENT: a candidate failing on some inputs); ``work``:
    that many chained 256x256 matrix products per request, so a version with twice the work is
    twice as slow."""
    def build(tf, v1):
        import numpy as np

        x = v1.placeholder(tf.float32, shape=[None], name="x")
        y = 0.5 * x + bias
        checks = [v1.assert_less(x, fail_at, message="input too large")] if fail_at is not None else []
        if work:
            w = tf.constant(np.random.RandomState(0).uniform(-0.1, 0.1, (256, 256)).astype(np.float32))
            start = tf.ones([1, 256]) * tf.reduce_mean(x)   # depends on the input: not folded away
            _, h = tf.while_loop(lambda i, h: i < work, lambda i, h: (i + 1, tf.tanh(tf.matmul(h, w))),
                                 (tf.constant(0), start))
            y = y + tf.reduce_sum(h) * 1e-30               # below float32 resolution: y unchanged
        with tf.control_dependencies(checks):
            y = tf.identity(y, name="y")
        return {"serving_default": _sig(v1, {"x": x}, {"y": y})}
    return build
