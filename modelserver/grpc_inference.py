"""PredictionService requests run against one loaded model version, proto in, proto out.

Shared by the gRPC servicer (after it has resolved the model spec to a version) and by warmup
(which replays logged requests against a version that is not serving yet), so a warmup record
exercises exactly the code a live request takes. Classify/Regress/MultiInference reuse the
core in :mod:`modelserver.examples`, the same one REST uses.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from modelserver import examples, monitoring
from modelserver.core.status import Code, ServingError, invalid_argument
from modelserver.tensor_proto import length_delimited, ndarray_from_proto, serialized_tensor
from modelserver.runtimes import LoadedModel

DEFAULT_SIGNATURE = "serving_default"


def _model_spec(out: Any, name: str, signature_name: str | None, version: int) -> None:
    """``MakeModelSpec``: the response names the version and (if asked) the signature used."""
    out.name = name
    if signature_name is not None:
        out.signature_name = signature_name or DEFAULT_SIGNATURE
    out.version.value = version


def predict(model: LoadedModel, version: int, request: Any,
            answered: Callable[[str, Mapping[str, Any], Mapping[str, Any]], None] | None = None) -> bytes:
    """``RunPredict``: checks, input decoding, output filter, ``*_val`` outputs; the serialized
    ``PredictResponse``, written field by field (``outputs`` map entries, then ``model_spec``).
    ``answered`` is shown the signature, inputs and outputs of a request that ran (rollout.py)."""
    from tensorflow_serving.apis import model_pb2

    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = model.signatures.get(signature_name)
    if signature is None:
        raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
    wanted = list(request.output_filter)
    seen: set[str] = set()
    for alias in wanted:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to "
                                   f"be in the set {{{','.join(signature.outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    if request.inputs.keys() == signature.inputs.keys():
        inputs = {alias: ndarray_from_proto(request.inputs[alias], alias) for alias in signature.inputs}
    else:
        inputs = dict(request.inputs)  # LoadedModel.run reports the mismatch in TF Serving's words
    outputs = model.run(signature.name, inputs)
    if answered is not None:
        answered(signature.name, inputs, outputs)
    spec = model_pb2.ModelSpec()
    _model_spec(spec, request.model_spec.name, signature_name, version)
    entries = [length_delimited(1, length_delimited(1, alias.encode()) + length_delimited(2, serialized_tensor(outputs[alias])))
               for alias in (wanted or outputs)]
    return b"".join(entries) + length_delimited(2, spec.SerializeToString())



def classify(model: LoadedModel, version: int, request: Any) -> Any:
    """``RunClassify``: ``result.classifications[].classes[]{label, score}``."""
    from tensorflow_serving.apis import classification_pb2

    signature = examples.classification_signature(model, request.model_spec.signature_name)
    return _run_examples(model, version, request, classification_pb2.ClassificationResponse(),
                         lambda serialized: examples.classify(model, signature, serialized), fill_classifications)


def regress(model: LoadedModel, version: int, request: Any) -> Any:
    """``RunRegress``: ``result.regressions[].value``."""
    from tensorflow_serving.apis import regression_pb2

    signature = examples.regression_signature(model, request.model_spec.signature_name)
    return _run_examples(model, version, request, regression_pb2.RegressionResponse(),
                         lambda serialized: examples.regress(model, signature, serialized), fill_regressions)


def _run_examples(model: LoadedModel, version: int, request: Any, response: Any,
                  run: Any, fill: Any) -> Any:
    """Classify and Regress alike: the request's tf.Examples through ``run``, ``fill``ed into ``response``."""
    _model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name, version)
    serialized = examples.serialized_from_input(request.input)
    monitoring.record_examples(request.model_spec.name, len(serialized))
    fill(response.result, run(serialized))
    return response


def multi_inference(model: LoadedModel, version: int, request: Any) -> Any:
    """``RunMultiInference``: every task on the one shared ``input``, all on the same model."""
    from tensorflow_serving.apis import inference_pb2

    tasks = examples.multi_inference_tasks(
        model, [(t.model_spec.name, t.model_spec.signature_name, t.method_name) for t in request.tasks])
    serialized = examples.serialized_from_input(request.input)
    monitoring.record_examples(request.tasks[0].model_spec.name, len(serialized))
    response = inference_pb2.MultiInferenceResponse()
    for spec, task in zip((t.model_spec for t in request.tasks), tasks):
        result = examples.run_task(model, task, serialized)
        out = response.results.add()
        if task.method == examples.CLASSIFY_METHOD:
            fill_classifications(out.classification_result, result)
        else:
            fill_regressions(out.regression_result, result)
        _model_spec(out.model_spec, spec.name, spec.signature_name, version)
    return response


def fill_classifications(out: Any, result: examples.Classifications) -> None:
    classes, scores = result.classes, result.scores
    n = (scores if scores is not None else classes).shape[0]
    labels = classes.tolist() if classes is not None else None
    values = scores.tolist() if scores is not None else None
    for i in range(n):
        row = out.classifications.add()
        for k in range(result.width):
            item = row.classes.add()
            if labels is not None:
                label = labels[i][k]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if values is not None:
                item.score = values[i][k]


def fill_regressions(out: Any, values: Any) -> None:
    for value in values.tolist():
        out.regressions.add().value = value
