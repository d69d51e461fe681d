"""``--model_settings_file``: per-model batching, warmup, metrics, precision and runtime options.

An appliance extension. TF Serving has one batching configuration for the whole server
(``--enable_batching``, ``--batching_parameters_file``) and one warmup switch; the appliance
configures these per model, so the node renders them into a JSON file next to models.config::

    {"models": {"resnet": {"batching": null | {"max_batch_size": 32, "batch_timeout_micros": 1000,
                                              "max_enqueued_batches": 100, "num_batch_threads": 0,
                                              "allowed_batch_sizes": [], "pad_variable_length_inputs": false},
                           "warmup": true, "metrics": true, "precision": "f32",
                           "openvino": {"performance_hint": "throughput", "streams": 0, "threads": 0},
                           "auto": {"runtimes": ["tensorflow", "onnx", "openvino"], "precisions": ["f32"],
                                    "atol": 1e-4, "rtol": 1e-3, "top1": true, "ignore": ["classes"],
                                    "outputs": {"probabilities": {"atol": 0.02, "rtol": 0.1}}},
                           "shadow": null | {"version": 2, "sample": 10.0, "atol": 1e-5, "rtol": 1e-5, "topk": 5}}}}

``auto`` says what ``model_platform: "auto"`` may choose and how close a candidate's answers
must be to the reference runtime's (:mod:`modelserver.autoplatform`). ``openvino`` may also hold
``perturb_weights`` (a number): for tests only, it scales the OpenVINO network's weights by
``1 + x`` so that ``auto`` has a disagreeing runtime to refuse.

``batching: null`` is batching off for that model; ``shadow`` (:mod:`modelserver.shadow`) copies
a sample of the model's unversioned requests to a candidate version and compares the answers. A key left out takes its default (batching
fields: TF's scheduler defaults). A model without an entry keeps the global flags' behaviour,
so the file changes nothing for a server run as ``tensorflow_model_server`` would be. Errors are
collected for the whole file, each with its key path (``models.resnet.batching.max_batch_size:
...``), so one read says everything that is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from modelserver.config_protos import BatchingSettings, validate_batching
from modelserver.core.status import ServingError

PRECISIONS = ("f32", "bf16")
RUNTIMES = ("tensorflow", "onnx", "openvino")
PERFORMANCE_HINTS = ("latency", "throughput")
MAX_FILE_BYTES = 1 << 20

_BATCHING_INTS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_OPENVINO_INTS = ("streams", "threads")
_SHADOW_KEYS = ("version", "sample", "atol", "rtol", "topk")


@dataclass(frozen=True)
class ShadowSettings:
    """A shadow of one model: which version gets copies of its unversioned requests, how many,
    and when two answers count as the same (see :mod:`modelserver.shadow`)."""

    version: int                # the candidate
    sample: float = 10.0        # percent of unversioned requests copied, (0, 100]
    atol: float = 1e-5          # a value differs only when its absolute error exceeds atol...
    rtol: float = 1e-5          # ...and its relative error exceeds rtol (Polygraphy's rule)
    topk: int = 5               # top-k overlap of classifier outputs; 0: no classifier checks


@dataclass(frozen=True)
class AutoSettings:
    """What ``model_platform: "auto"`` measures and how it judges agreement."""

    runtimes: tuple[str, ...] = RUNTIMES          # the runtimes it may choose
    precisions: tuple[str, ...] = ("f32",)        # the precisions it may choose (f32 is the reference's)
    atol: float = 1e-4                            # |candidate - reference| <= atol + rtol * |reference|
    rtol: float = 1e-3
    outputs: Mapping[str, tuple[float, float]] = field(default_factory=dict)   # alias -> (atol, rtol)
    top1: bool = True                             # score outputs ([batch, classes]) must agree on the top class
    ignore: tuple[str, ...] = ()                  # outputs not compared (derived from one that is: classes)

    def tolerance(self, alias: str) -> tuple[float, float]:
        return self.outputs.get(alias, (self.atol, self.rtol))

    def describe(self) -> str:
        """For the quarantine context and the measurement cache's key: every field."""
        outputs = ",".join(f"{k}={a}/{r}" for k, (a, r) in sorted(self.outputs.items()))
        return (f"auto.runtimes={','.join(self.runtimes)} auto.precisions={','.join(self.precisions)} "
                f"auto.atol={self.atol} auto.rtol={self.rtol} auto.outputs={outputs} auto.top1={self.top1} "
                f"auto.ignore={','.join(self.ignore)}")


@dataclass(frozen=True)
class ModelSettings:
    """One model's entry in the settings file, defaults filled in."""

    batching: BatchingSettings | None = None    # None: no batching for this model
    warmup: bool = True                         # replay assets.extra/tf_serving_warmup_requests at load
    metrics: bool = True                        # record this model's requests in the Prometheus metrics
    precision: str = "f32"                      # what the runtime computes in (runtimes.base.LoadOptions)
    runtime_options: Mapping[str, Any] = field(default_factory=dict)   # the entry's "openvino" object
    rollout: tuple[int, float] | None = None    # (candidate version, percent): modelserver.rollout
    auto: AutoSettings = field(default_factory=AutoSettings)
    shadow: ShadowSettings | None = None        # None: no shadow

    def candidates(self) -> frozenset[int]:
        """Versions loaded on top of the version policy's, which the policy never picks: a
        shadow's candidate (no request naming no version gets it) and a rollout's (only its
        share does, :func:`modelserver.rollout.choose`). So under ``latest`` a candidate that
        is the newest version on disk does not become the served one while it is named."""
        named = [s.version for s in (self.shadow,) if s is not None]
        if self.rollout is not None:
            named.append(self.rollout[0])
        return frozenset(named)

    def load_context(self) -> str:
        """What else decides a load, for the quarantine's context; "" at the defaults, so a
        model that only gained an entry keeps its quarantine record."""
        parts = [] if self.precision == "f32" else [f"precision={self.precision}"]
        parts += [f"{key}={value}" for key, value in sorted(self.runtime_options.items())]
        if self.auto != AutoSettings():
            parts.append(self.auto.describe())
        return " ".join(parts)


class SettingsFileError(Exception):
    """The settings file cannot be used; ``errors`` lists every problem with its key path."""

    def __init__(self, path: str, errors: list[str]) -> None:
        super().__init__(f"invalid model settings file {path}: " + "; ".join(errors))
        self.path = path
        self.errors = errors


def read_model_settings(path: str) -> dict[str, ModelSettings]:
    """The settings of every model in ``path``; raises :class:`SettingsFileError`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsFileError(path, [f"cannot read it: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsFileError(path, [f"larger than {MAX_FILE_BYTES} bytes"])
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SettingsFileError(path, [f"not JSON: {exc}"]) from None
    settings, errors = parse_model_settings(doc)
    if errors:
        raise SettingsFileError(path, errors)
    return settings


def parse_model_settings(doc: Any) -> tuple[dict[str, ModelSettings], list[str]]:
    """``doc`` (the file's JSON) as settings per model, and every error found, with key paths."""
    errors: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        return {}, ['the top level must be an object with a "models" object']
    _unknown(doc, ("models",), "", errors)
    settings = {}
    for name, entry in doc["models"].items():
        where = f"models.{name}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be an object")
            continue
        before = len(errors)
        parsed = _model(entry, where, errors)
        if len(errors) == before:
            settings[name] = parsed
    return settings, errors


def _model(entry: dict, where: str, errors: list[str]) -> ModelSettings:
    _unknown(entry, ("batching", "warmup", "metrics", "precision", "openvino", "rollout", "auto", "shadow"),
             where, errors)
    defaults = ModelSettings()
    precision = entry.get("precision", defaults.precision)
    if precision not in PRECISIONS:
        errors.append(f"{where}.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return ModelSettings(batching=_batching(entry.get("batching"), f"{where}.batching", errors),
                         warmup=_bool(entry, "warmup", defaults.warmup, where, errors),
                         metrics=_bool(entry, "metrics", defaults.metrics, where, errors),
                         precision=precision,
                         runtime_options=_openvino(entry.get("openvino", {}), f"{where}.openvino", errors),
                         rollout=_rollout(entry.get("rollout"), f"{where}.rollout", errors),
                         auto=_auto(entry.get("auto", {}), f"{where}.auto", errors),
                         shadow=_shadow(entry.get("shadow"), f"{where}.shadow", errors))


def _rollout(value: Any, where: str, errors: list[str]) -> tuple[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append(f"{where}: must be null (no rollout) or an object")
        return None
    _unknown(value, ("version", "percent"), where, errors)
    version, percent = value.get("version"), value.get("percent", 0)
    if not _is_int(version) or version < 1:
        errors.append(f"{where}.version: must be a version number, not {version!r}")
        return None
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        errors.append(f"{where}.percent: must be a number from 0 to 100, not {percent!r}")
        return None
    return version, float(percent)


def _batching(value: Any, where: str, errors: list[str]) -> BatchingSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append(f"{where}: must be null (batching off) or an object")
        return None
    fields = (*_BATCHING_INTS, "allowed_batch_sizes", "pad_variable_length_inputs")
    _unknown(value, fields, where, errors)
    defaults = BatchingSettings()
    before = len(errors)
    ints = {key: _int(value, key, getattr(defaults, key), where, errors) for key in _BATCHING_INTS}
    sizes = value.get("allowed_batch_sizes", [])
    if not isinstance(sizes, list) or not all(_is_int(size) for size in sizes):
        errors.append(f"{where}.allowed_batch_sizes: must be a list of integers")
        sizes = []
    pad = _bool(value, "pad_variable_length_inputs", False, where, errors)
    if len(errors) > before:
        return None
    settings = BatchingSettings(**ints, allowed_batch_sizes=tuple(sizes), pad_variable_length_inputs=pad)
    try:
        return validate_batching(settings)
    except ServingError as exc:
        errors.append(f"{where}: {exc.message}")
        return None


def _openvino(value: Any, where: str, errors: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be an object")
        return {}
    _unknown(value, ("performance_hint", *_OPENVINO_INTS, "perturb_weights"), where, errors)
    options: dict[str, Any] = {key: _int(value, key, 0, where, errors) for key in _OPENVINO_INTS if key in value}
    if "perturb_weights" in value:
        options["perturb_weights"] = _float(value, "perturb_weights", 0.0, where, errors)
    if "performance_hint" in value:
        hint = value["performance_hint"]
        if hint not in PERFORMANCE_HINTS:
            errors.append(f"{where}.performance_hint: {hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
        options["performance_hint"] = hint
    return options


def _auto(value: Any, where: str, errors: list[str]) -> AutoSettings:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be an object")
        return AutoSettings()
    _unknown(value, ("runtimes", "precisions", "atol", "rtol", "outputs", "top1", "ignore"), where, errors)
    defaults = AutoSettings()
    runtimes = _choices(value, "runtimes", RUNTIMES, defaults.runtimes, where, errors)
    precisions = _choices(value, "precisions", PRECISIONS, defaults.precisions, where, errors)
    outputs: dict[str, tuple[float, float]] = {}
    listed = value.get("outputs", {})
    if not isinstance(listed, dict):
        errors.append(f"{where}.outputs: must be an object of output alias -> {{atol, rtol}}")
        listed = {}
    for alias, tolerance in listed.items():
        at = f"{where}.outputs.{alias}"
        if not isinstance(tolerance, dict):
            errors.append(f"{at}: must be an object {{atol, rtol}}")
            continue
        _unknown(tolerance, ("atol", "rtol"), at, errors)
        outputs[alias] = (_float(tolerance, "atol", defaults.atol, at, errors),
                          _float(tolerance, "rtol", defaults.rtol, at, errors))
    return AutoSettings(runtimes=runtimes, precisions=precisions,
                        atol=_float(value, "atol", defaults.atol, where, errors),
                        rtol=_float(value, "rtol", defaults.rtol, where, errors),
                        outputs=outputs, top1=_bool(value, "top1", defaults.top1, where, errors),
                        ignore=_names(value, "ignore", where, errors))


def _choices(doc: dict, key: str, valid: tuple[str, ...], default: tuple[str, ...], where: str,
             errors: list[str]) -> tuple[str, ...]:
    value = doc.get(key, list(default))
    if not isinstance(value, list) or not value or any(item not in valid for item in value):
        errors.append(f"{where}.{key}: must be a non-empty list of {', '.join(valid)}, not {value!r}")
        return default
    return tuple(dict.fromkeys(value))


def _names(doc: dict, key: str, where: str, errors: list[str]) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        errors.append(f"{where}.{key}: must be a list of output names, not {value!r}")
        return ()
    return tuple(value)


def _float(doc: dict, key: str, default: float, where: str, errors: list[str]) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        errors.append(f"{where}.{key}: must be a number >= 0, not {value!r}")
        return default
    return float(value)


def _shadow(value: Any, where: str, errors: list[str]) -> ShadowSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append(f"{where}: must be null (no shadow) or an object")
        return None
    _unknown(value, _SHADOW_KEYS, where, errors)
    before = len(errors)
    defaults = ShadowSettings(version=1)
    version = value.get("version")
    if not _is_int(version) or version < 0:
        errors.append(f"{where}.version: must be a version number, not {version!r}")
    sample = _float(value, "sample", defaults.sample, where, errors)
    if not 0 < sample <= 100:
        errors.append(f"{where}.sample: must be a percentage over 0 and at most 100, not {sample!r}")
    tolerances = {key: _float(value, key, getattr(defaults, key), where, errors) for key in ("atol", "rtol")}
    topk = _int(value, "topk", defaults.topk, where, errors)
    if len(errors) > before:
        return None
    return ShadowSettings(version=version, sample=float(sample), topk=topk,
                          **{key: float(number) for key, number in tolerances.items()})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(doc: dict, key: str, default: int, where: str, errors: list[str]) -> int:
    """A non-negative integer (whether 0 is allowed is :func:`validate_batching`'s call)."""
    value = doc.get(key, default)
    if not _is_int(value) or value < 0:
        errors.append(f"{where}.{key}: must be a non-negative integer, not {value!r}")
        return default
    return value


def _bool(doc: dict, key: str, default: bool, where: str, errors: list[str]) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        errors.append(f"{where}.{key}: must be true or false, not {value!r}")
        return default
    return value


def _unknown(doc: dict, known: tuple[str, ...], where: str, errors: list[str]) -> None:
    prefix = f"{where}." if where else ""
    for key in doc:
        if key not in known:
            errors.append(f"{prefix}{key}: unknown key; valid: {', '.join(known)}")
