"""``model_platform: "auto"``: serve each version on the fastest runtime that answers as the reference does.

The reference is the runtime the version's files were made for (a SavedModel: TensorFlow; a
``model.onnx``: ONNX Runtime; an IR: OpenVINO), in f32. The candidates are every runtime that
can serve the files (OpenVINO converts SavedModels and reads ONNX) in every precision the model
allows (settings ``auto.runtimes``, ``auto.precisions``; bf16 only on runtimes and CPUs that
have it). At load, each candidate is loaded (converted), the version's warmup set runs through
it, and every output is compared with the reference's: ``|candidate - reference| <= atol + rtol
* |reference|`` element-wise, with the tolerances of each output (``auto.outputs``) or the
model's (``auto.atol``, ``auto.rtol``), and for scores (a float output of shape ``[batch,
classes]``) the top class of every row must be the reference's wherever the reference's own
margin between the two classes exceeds the tolerance (classes the tolerance cannot tell apart
decide nothing). Outputs derived from a compared one (``classes``, the arg-max of ``probabilities``)
may be left out (``auto.ignore``): the top-1 check with its margin judges them. The agreeing candidates then run the warmup set in alternating rounds; the
fastest (median round) serves. A candidate that fails to load or convert, or disagrees, is
reported with the reason and never chosen.

When it measures, so cold starts and small models do not pay for it:

* only when more than one candidate can serve the files (an IR has only OpenVINO);
* only on the version's own warmup set, ``assets.extra/tf_serving_warmup_requests`` (what TF
  Serving users ship as representative requests; a model without one serves on the reference
  runtime and says "not measured: no warmup requests");
* once per content: the result is kept in the runtime cache (``--runtime_cache_dir``) by the
  version's content hash, the runtimes' versions and the settings that decide it, so a restart
  (or the same model under another name) loads the chosen runtime directly.

The choice, each candidate's speed and its largest difference are a version's
:class:`Choice`, answered at ``GET /appliance/v1/runtimes`` (``status``, ``models ls`` and the
log viewer show it) and logged at load.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from modelserver.core.choice import Candidate, Choice
from modelserver.core.platforms import describe_markers, detect_platform
from modelserver.core.status import Code, ServingError
from modelserver.runtimes import LoadedModel, LoadOptions, get_runtime
from modelserver.runtimes import artefacts

log = logging.getLogger(__name__)

# Which runtimes can serve a version, by the platform its files are for; the first is the reference.
CAN_SERVE: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "openvino"),
    "onnx": ("onnx", "openvino"),
    "openvino": ("openvino",),
}
REFERENCE_PRECISION = "f32"
TIMED_ROUNDS = 3
CACHE_FORMAT = "auto-choice-1"


# ----------------------------------------------------------------------------- the warmup set


def warmup_set(version_dir: str) -> list[tuple[str, Any]]:
    """The version's warmup records as (log type, request); [] without a warmup file."""
    from modelserver.warmup import read_records

    return list(read_records(version_dir))


def run_set(model: LoadedModel, records: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """Every record through ``model`` the way a request runs; each answer's numbers by a key
    ``<record>/<output>`` (Predict: the output alias; Classify: ``scores`` and ``classes``;
    Regress: ``outputs``)."""
    from modelserver.warmup import RUNNERS

    out: dict[str, np.ndarray] = {}
    for i, (kind, request) in enumerate(records):
        response = RUNNERS[kind](model, 0, request)
        for key, value in _arrays(response).items():
            out[f"{i}/{key}"] = value
    return out


def _arrays(response: Any) -> dict[str, np.ndarray]:
    from modelserver.tensor_proto import ndarray_from_proto

    if isinstance(response, bytes):   # grpc_inference.predict answers the serialized PredictResponse
        from tensorflow_serving.apis import predict_pb2

        response = predict_pb2.PredictResponse.FromString(response)
    name = type(response).__name__
    if name == "PredictResponse":
        return {alias: ndarray_from_proto(proto, alias) for alias, proto in response.outputs.items()}
    if name == "MultiInferenceResponse":
        return {f"{i}.{k}": v for i, result in enumerate(response.results) for k, v in _arrays(result).items()}
    result = response.result if hasattr(response, "result") else response
    if hasattr(result, "classifications"):
        rows = result.classifications
        return {"scores": np.array([[c.score for c in row.classes] for row in rows], dtype=np.float32),
                "classes": np.array([[c.label for c in row.classes] for row in rows], dtype=object)}
    return {"outputs": np.array([r.value for r in result.regressions], dtype=np.float32)}


# ----------------------------------------------------------------------------- agreement


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
            tolerance: Callable[[str], tuple[float, float]], top1: bool,
            ignore: tuple[str, ...] = ()) -> tuple[float, float, str]:
    """(largest absolute difference, largest relative difference, why they disagree or "");
    outputs named in ``ignore`` are not compared."""
    max_abs = max_rel = 0.0
    for key, want in reference.items():
        alias = key.split("/", 1)[1]
        if alias in ignore:
            continue
        have = got.get(key)
        if have is None or have.shape != want.shape:
            return max_abs, max_rel, f"output {alias}: shape {None if have is None else list(have.shape)}, " \
                                     f"the reference's {list(want.shape)}"
        if want.dtype.kind not in "fc" and not np.issubdtype(want.dtype, np.integer):
            if not np.array_equal(want, have):
                return max_abs, max_rel, f"output {alias}: values differ"
            continue
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        diff = np.abs(have64 - want64)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(want64), 1e-12)).max()))
        atol, rtol = tolerance(alias)
        if np.issubdtype(want.dtype, np.integer):
            atol, rtol = 0.0, 0.0      # class ids, counts: exact
        over = diff > atol + rtol * np.abs(want64)
        if over.any():
            worst = np.unravel_index(int(np.argmax(diff - (atol + rtol * np.abs(want64)))), diff.shape)
            return max_abs, max_rel, (f"output {alias}: {int(over.sum())} of {diff.size} values outside atol {atol:g} "
                                      f"+ rtol {rtol:g} (at {list(map(int, worst))}: {have64[worst]:.6g} vs "
                                      f"{want64[worst]:.6g})")
        if top1 and want.ndim == 2 and want.shape[1] > 1 and want.dtype.kind == "f":
            rows = np.arange(want.shape[0])
            mine, theirs = have64.argmax(axis=1), want64.argmax(axis=1)
            margin = want64[rows, theirs] - want64[rows, mine]
            decided = margin > atol + rtol * np.abs(want64[rows, theirs])
            flips = (mine != theirs) & decided
            if flips.any():
                return max_abs, max_rel, f"output {alias}: top class differs on {int(flips.sum())} of {len(rows)} rows"
    return max_abs, max_rel, ""


# ----------------------------------------------------------------------------- choosing


def _candidates(detected: str, settings: Any) -> list[Candidate]:
    """The reference first, then every allowed runtime and precision that can serve the files."""
    found = [Candidate(detected, REFERENCE_PRECISION)]
    for runtime in CAN_SERVE[detected]:
        if runtime not in settings.runtimes:
            continue
        for precision in settings.precisions:
            if (runtime, precision) != (detected, REFERENCE_PRECISION):
                found.append(Candidate(runtime, precision))
    return found


def _allowed(candidate: Candidate, settings: Any) -> bool:
    return candidate.runtime in settings.runtimes and candidate.precision in settings.precisions


def _can_run(runtime: str, precision: str) -> bool:
    """False only when the runtime says it has no such precision; a runtime that cannot even start
    (not installed) stays a candidate, so the report says why it was not chosen."""
    try:
        return precision in get_runtime(runtime).precisions
    except Exception:  # noqa: BLE001 - reported by the load that follows
        return True


def _load(candidate: Candidate, path: str, options: LoadOptions) -> LoadedModel:
    runtime = get_runtime(candidate.runtime)
    asked = replace(options, precision=candidate.precision)
    runtime.check_options(asked)
    return runtime.load(path, asked)


def _measurement_key(path: str, options: LoadOptions, settings: Any) -> str:
    import importlib.metadata as md

    versions = []
    for package in ("tensorflow", "onnxruntime", "openvino"):
        try:
            versions.append(f"{package}={md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package}=none")
    return artefacts.cache_key(CACHE_FORMAT, artefacts.content_hash(path), *versions, settings.describe(),
                               json.dumps(dict(options.runtime_options), sort_keys=True), ",".join(options.tags),
                               str(options.intra_op_threads), str(options.inter_op_threads), str(os.cpu_count()))


def load_auto(path: str, options: LoadOptions, settings: Any) -> tuple[LoadedModel, Choice]:
    """Load the version at ``path`` on the runtime ``auto`` picks for it; see the module docstring."""
    detected = detect_platform(Path(path))
    if detected is None:
        raise ServingError(Code.NOT_FOUND, f"Could not find a model at {path} (model_platform auto): a version "
                                           f"directory holds {describe_markers()}")
    # Other runtimes are only started (OpenVINO imported) once a measurement is going to happen.
    candidates = _candidates(detected, settings)
    if len(candidates) == 1:
        return _load(candidates[0], path, options), Choice(detected, REFERENCE_PRECISION, "only candidate")
    records = warmup_set(path)
    if not records:
        chosen = candidates[0]
        if not _allowed(chosen, settings):   # e.g. auto.runtimes: [openvino] on a SavedModel
            chosen = next((c for c in candidates[1:] if _allowed(c, settings) and _can_run(c.runtime, c.precision)),
                          chosen)
        return _load(chosen, path, options), Choice(
            chosen.runtime, chosen.precision,
            "not measured: no warmup requests (assets.extra/tf_serving_warmup_requests) to compare runtimes on")
    candidates = [candidates[0], *(c for c in candidates[1:] if _can_run(c.runtime, c.precision))]
    allowed = [c for c in candidates if _allowed(c, settings)]
    cache = artefacts.cache_at(options.cache_dir, options.cache_bytes)
    key = _measurement_key(path, options, settings) if cache is not None else ""
    entry = cache.get(key) if cache is not None else None
    if entry is not None:
        try:
            choice = Choice.from_json(json.loads((entry / "choice.json").read_text()))
            chosen = Candidate(choice.platform, choice.precision)
            loaded = _load(chosen, path, options)
            choice.how = "measured earlier"
            log.info("auto: %s: %s", path, choice.describe())
            return loaded, choice
        except (OSError, ValueError, TypeError, ServingError) as exc:
            log.warning("auto: %s: the cached choice does not load (%s); measuring again", path, exc)
    loaded, choice = _measure(path, options, settings, candidates, allowed, records)
    if cache is not None:
        cache.put(key, lambda d: (d / "choice.json").write_text(json.dumps(choice.to_json())))
    log.info("auto: %s: %s", path, choice.describe())
    return loaded, choice


def _measure(path: str, options: LoadOptions, settings: Any, candidates: list[Candidate],
             allowed: list[Candidate], records: list[tuple[str, Any]]) -> tuple[LoadedModel, Choice]:
    reference = candidates[0]
    models: dict[int, LoadedModel] = {}
    try:
        models[0] = _load(reference, path, options)
        want = run_set(models[0], records)
        reference.verdict, reference.max_abs_diff, reference.max_rel_diff = "reference", 0.0, 0.0
        for i, candidate in enumerate(candidates[1:], start=1):
            try:
                models[i] = _load(candidate, path, options)
                got = run_set(models[i], records)
            except ServingError as exc:
                candidate.verdict, candidate.reason = "failed", exc.message
                models.pop(i, None)
                continue
            except Exception as exc:  # noqa: BLE001 - a runtime that breaks is reported, never chosen
                candidate.verdict, candidate.reason = "failed", f"{type(exc).__name__}: {exc}"
                models.pop(i, None)
                continue
            candidate.max_abs_diff, candidate.max_rel_diff, why = compare(want, got, settings.tolerance,
                                                                          settings.top1, settings.ignore)
            candidate.verdict, candidate.reason = ("disagrees", why) if why else ("agrees", "")
        timed = {i: [] for i in models}
        for _ in range(TIMED_ROUNDS):
            for i, model in models.items():
                started = time.perf_counter()
                run_set(model, records)
                timed[i].append(time.perf_counter() - started)
        for i, rounds in timed.items():
            candidates[i].seconds_per_pass = statistics.median(rounds)
        eligible = [i for i, c in enumerate(candidates) if i in models and c.verdict in ("reference", "agrees")
                    and c in allowed]
        if not eligible:
            eligible = [0]  # only the reference agrees with itself; it serves even if not "allowed"
        best = min(eligible, key=lambda i: candidates[i].seconds_per_pass)
        chosen = models.pop(best)
        return chosen, Choice(candidates[best].runtime, candidates[best].precision, "measured", candidates,
                              len(records))
    finally:
        for model in models.values():
            model.close()
