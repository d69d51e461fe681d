"""Per-model settings: the keys ``models.<name>.*`` of the node's config.

``model.name`` says which models a node serves; a ``models:`` section says how, one entry per
model, every key optional (so the user guide's ``model.name: a,b`` keeps working with every
setting at its default)::

    models:
      resnet:
        versions: latest:2
        labels: {stable: 1, canary: 2}
        batching: {enabled: true, max_batch_size: 16, allowed_batch_sizes: [4, 8, 16]}
      scorer:
        platform: onnx

The keys flatten like every other key (``models.resnet.batching.enabled``), so ``--set`` uses
the same names. The values are checked with TF Serving's own rules (version labels, the
batching parameters of ``bundle_factory_util.cc``), so what the model server would refuse at
load is refused here, with its key path, before anything changes on the node.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from modelserver.core.platforms import AUTO, PLATFORMS

from .configkeys import (Invalid, Key, assemble, boolean, choice, items, non_negative, positive,
                         string, value_of)

PREFIX = "models"
# TF Serving's rule for version labels (g3doc/serving_config.md).
LABEL = re.compile(r"[A-Za-z0-9_]+")
LABELS = "labels"
POLICY_FORMS = "latest, latest:N, all, specific:V1,V2"

Problems = list[tuple[str, str]]


# ----------------------------------------------------------------------------- typed settings


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions the model server serves: TF Serving's ServableVersionPolicy."""

    kind: str                          # latest | all | specific
    num_versions: int = 1              # latest only
    versions: tuple[int, ...] = ()     # specific only, ascending

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.num_versions == 1 else f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return self.kind


@dataclass(frozen=True)
class Batching:
    """Server-side batching of one model: on/off and TF Serving's BatchingParameters."""

    enabled: bool
    max_batch_size: int
    batch_timeout_micros: int
    max_enqueued_batches: int
    num_batch_threads: int
    allowed_batch_sizes: tuple[int, ...]
    pad_variable_length_inputs: bool

    def parameters(self) -> dict[str, Any] | None:
        """The model server's form (model-settings.json): None when batching is off."""
        if not self.enabled:
            return None
        return {"max_batch_size": self.max_batch_size, "batch_timeout_micros": self.batch_timeout_micros,
                "max_enqueued_batches": self.max_enqueued_batches,
                "num_batch_threads": self.num_batch_threads,
                "allowed_batch_sizes": list(self.allowed_batch_sizes),
                "pad_variable_length_inputs": self.pad_variable_length_inputs}


@dataclass(frozen=True)
class OpenVino:
    performance_hint: str
    streams: int
    threads: int


@dataclass(frozen=True)
class Rollout:
    """A canary: ``percent`` of the requests naming no version go to ``version`` (0: none)."""

    version: int
    percent: float

    def parameters(self) -> dict[str, Any] | None:
        """The model server's form (model-settings.json): None when no rollout runs."""
        return {"version": self.version, "percent": self.percent} if self.version else None


@dataclass(frozen=True)
class Auto:
    """What ``platform: auto`` may choose, and how close to the reference it must answer."""

    runtimes: tuple[str, ...]
    precisions: tuple[str, ...]
    atol: float
    rtol: float
    tolerances: tuple[str, ...]     # "output=atol/rtol" each
    top1: bool
    ignore: tuple[str, ...]

    def settings(self) -> dict[str, Any]:
        """The model server's form (model-settings.json's ``auto``)."""
        outputs = {}
        for item in self.tolerances:
            alias, _, pair = item.partition("=")
            atol, _, rtol = pair.partition("/")
            outputs[alias] = {"atol": float(atol), "rtol": float(rtol)}
        return {"runtimes": list(self.runtimes), "precisions": list(self.precisions), "atol": self.atol,
                "rtol": self.rtol, "outputs": outputs, "top1": self.top1, "ignore": list(self.ignore)}


@dataclass(frozen=True)
class Shadow:
    """A shadow: copies of requests naming no version go to ``version`` too (0: none) and its
    answers are compared with the served version's (modelserver/shadow.py)."""

    version: int
    sample: float
    atol: float
    rtol: float
    topk: int

    def parameters(self) -> dict[str, Any] | None:
        """The model server's form (model-settings.json): None when no shadow runs."""
        if not self.version:
            return None
        return {"version": self.version, "sample": self.sample, "atol": self.atol, "rtol": self.rtol,
                "topk": self.topk}


@dataclass(frozen=True)
class ModelEntry:
    """One served model's settings, every default filled in."""

    name: str
    platform: str
    versions: VersionPolicy
    labels: Mapping[str, int]
    batching: Batching
    warmup: bool
    metrics: bool
    precision: str
    openvino: OpenVino
    rollout: Rollout
    auto: Auto
    shadow: Shadow
    # The edge's rules (run/api-keys.json, not model-settings.json: a change reloads no model).
    auth_required: bool = False
    rate: int = 0

    def runtime_settings(self) -> dict[str, Any]:
        """The model server's per-model settings (an entry of model-settings.json)."""
        out = {"batching": self.batching.parameters(), "warmup": self.warmup, "metrics": self.metrics,
               "precision": self.precision,
               "openvino": {"performance_hint": self.openvino.performance_hint,
                            "streams": self.openvino.streams, "threads": self.openvino.threads},
               "auto": self.auto.settings()}
        for section in (self.rollout, self.shadow):   # absent, the file reads as before them
            if section.parameters() is not None:
                out[section.__class__.__name__.lower()] = section.parameters()
        return out


# ----------------------------------------------------------------------------- the schema


#: models.config holds a version number as an int64, latest's num_versions as a uint32: a
#: larger number passes as an integer here and then fails to render.
MAX_VERSION, MAX_LATEST = 2**63 - 1, 2**32 - 1


def _at_most(limit: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = positive(value)
        if number > limit:
            raise Invalid(f"must be {limit} or less, got {number}")
        return number
    return parse


def version_policy(value: Any) -> VersionPolicy:
    text = string(value).strip().lower()
    kind, sep, arg = text.partition(":")
    try:
        if kind == "all" and not sep:
            return VersionPolicy("all")
        if kind == "latest":
            return VersionPolicy("latest", _at_most(MAX_LATEST)(arg) if sep else 1)
        if kind == "specific":
            return VersionPolicy("specific", versions=_specific_versions(arg))
    except Invalid as exc:
        raise Invalid(f"{kind}: {exc}") from None
    raise Invalid(f"unknown version policy {value!r}; valid: {POLICY_FORMS}")


def _specific_versions(text: str) -> tuple[int, ...]:
    if not text.strip():
        raise Invalid("needs at least one version, e.g. specific:1,2")
    versions = [_at_most(MAX_VERSION)(item) for item in items(text)]
    if len(set(versions)) != len(versions):
        raise Invalid("a version is listed twice")
    return tuple(sorted(versions))


def _version_or_none(value: Any) -> int:
    number = non_negative(value)
    if number > MAX_VERSION:
        raise Invalid(f"must be {MAX_VERSION} or less, got {number}")
    return number


def _percent(value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"expected a percentage from 0 to 100, got {value!r}") from None
    if not 0 <= number <= 100:
        raise Invalid(f"expected a percentage from 0 to 100, got {value!r}")
    return number


def _share(value: Any) -> float:
    number = _percent(value)
    if not number:
        raise Invalid("expected a percentage over 0, up to 100")
    return number


def _tolerance(value: Any) -> float:
    try:
        number = float(string(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else value)
    except ValueError:
        raise Invalid(f"expected a number >= 0, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise Invalid(f"expected a number >= 0, got {value!r}")
    return number


def _tolerances(value: Any) -> tuple[str, ...]:
    listed = items(value)
    if listed == [""]:
        return ()
    out = []
    for item in listed:
        alias, sep, pair = item.partition("=")
        atol, slash, rtol = pair.partition("/")
        if not alias or not sep or not slash:
            raise Invalid(f"expected output=atol/rtol items, e.g. probabilities=0.02/0.1, got {item!r}")
        out.append(f"{alias}={_tolerance(atol)}/{_tolerance(rtol)}")
    return tuple(out)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(item for item in items(value) if item)


def _subset(*valid: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        listed = [item for item in items(value) if item]
        wrong = [item for item in listed if item not in valid]
        if wrong or not listed:
            raise Invalid(f"expected a non-empty list of {', '.join(valid)}, got {value!r}")
        return tuple(dict.fromkeys(listed))
    return parse


def _batch_sizes(value: Any) -> tuple[int, ...]:
    listed = items(value)
    return () if listed == [""] else tuple(positive(item) for item in listed)


MODEL_SCHEMA: tuple[Key, ...] = (
    Key("platform", "", "platform", choice(AUTO, *PLATFORMS), AUTO,
        f"The model's runtime: {AUTO} (the fastest runtime whose answers agree with those of the "
        f"runtime the version's files call for, measured on its warmup set) or one of {', '.join(PLATFORMS)}."),
    Key("versions", "", "versions", version_policy, "latest",
        "Versions served: latest (the newest), latest:N (the N newest), all, or specific:V1,V2."),
    Key("batching.enabled", "batching", "enabled", boolean, False,
        "Batch this model's requests on the server (TF Serving's --enable_batching, per model)."),
    Key("batching.max_batch_size", "batching", "max_batch_size", positive, 32,
        "Largest batch the model runs at once."),
    Key("batching.batch_timeout_micros", "batching", "batch_timeout_micros", non_negative, 1000,
        "How long a batch waits to fill up before it runs, in microseconds."),
    Key("batching.max_enqueued_batches", "batching", "max_enqueued_batches", positive, 100,
        "Batches that may wait; past that a request gets UNAVAILABLE (HTTP 503)."),
    Key("batching.num_batch_threads", "batching", "num_batch_threads", non_negative, 0,
        "Threads running batches; 0 means one per CPU the model server may use."),
    Key("batching.allowed_batch_sizes", "batching", "allowed_batch_sizes", _batch_sizes, "",
        "Batch sizes a batch is padded up to (a list, increasing, the last one max_batch_size); "
        "empty means any size."),
    Key("batching.pad_variable_length_inputs", "batching", "pad_variable_length_inputs", boolean,
        False, "Pad inputs of different lengths in one batch to the longest."),
    Key("warmup", "", "warmup", boolean, True,
        "Replay the version's assets.extra/tf_serving_warmup_requests when it loads."),
    Key("metrics", "", "metrics", boolean, True,
        "Count this model's requests in the model server's Prometheus metrics."),
    Key("precision", "", "precision", choice("f32", "bf16"), "f32",
        "Compute precision: f32, or bf16 on runtimes that can run it."),
    Key("openvino.performance_hint", "openvino", "performance_hint", choice("latency", "throughput"),
        "throughput", "OpenVINO only: tune for latency or throughput."),
    Key("openvino.streams", "openvino", "streams", non_negative, 0,
        "OpenVINO only: inference streams; 0 means the runtime decides."),
    Key("openvino.threads", "openvino", "threads", non_negative, 0,
        "OpenVINO only: inference threads; 0 means the runtime decides."),
    Key("rollout.version", "rollout", "version", _version_or_none, 0,
        "Canary: the candidate version that gets rollout.percent of the requests naming no "
        "version (0: no rollout). Set by `appliance rollout`; loaded on top of the versions "
        "policy, which never picks it while named (the rest go to the policy's version)."),
    Key("rollout.percent", "rollout", "percent", _percent, 0,
        "Canary: the share (0-100) of requests naming no version sent to rollout.version; "
        "requests naming a version or label are never redirected."),
    Key("auto.runtimes", "auto", "runtimes", _subset(*PLATFORMS), ",".join(PLATFORMS),
        "platform auto: the runtimes it may choose (the files' own runtime is measured as the "
        "reference anyway); tensorflow alone means SavedModels are never measured."),
    Key("auto.precisions", "auto", "precisions", _subset("f32", "bf16"), "f32",
        "platform auto: the precisions it may choose (bf16 where the runtime and CPU have it)."),
    Key("auto.atol", "auto", "atol", _tolerance, 1e-4,
        "platform auto: absolute tolerance of every output against the reference runtime in f32."),
    Key("auto.rtol", "auto", "rtol", _tolerance, 1e-3,
        "platform auto: relative tolerance of every output against the reference runtime in f32."),
    Key("auto.tolerances", "auto", "tolerances", _tolerances, "",
        "platform auto: tolerances of single outputs, output=atol/rtol items, e.g. probabilities=0.02/0.1."),
    Key("auto.top1", "auto", "top1", boolean, True,
        "platform auto: score outputs ([batch, classes]) must also agree on each row's top class."),
    Key("auto.ignore", "auto", "ignore", _names, "",
        "platform auto: outputs not compared, e.g. classes when it is the arg-max of a compared "
        "probabilities output (the top-1 check judges it)."),
    Key("shadow.version", "shadow", "version", _version_or_none, 0,
        "Shadow: the candidate version that gets a copy of shadow.sample % of the requests naming "
        "no version, off the clients' path, its answers compared with the served version's "
        "(0: no shadow). Loaded while set; never answers a client. Set by `appliance shadow start`."),
    Key("shadow.sample", "shadow", "sample", _share, 10.0,
        "Shadow: the percentage (over 0, up to 100) of requests naming no version that are copied."),
    Key("shadow.atol", "shadow", "atol", _tolerance, 1e-5,
        "Shadow: absolute tolerance; a value differs only when its absolute error exceeds atol "
        "and its relative error exceeds rtol."),
    Key("shadow.rtol", "shadow", "rtol", _tolerance, 1e-5,
        "Shadow: relative tolerance (see shadow.atol)."),
    Key("shadow.topk", "shadow", "topk", non_negative, 5,
        "Shadow: k of the top-k overlap reported for classifier outputs (float [batch, classes]); "
        "0: no top-1/top-k checks."),
    Key("auth.required", "", "auth_required", boolean, False,
        "Requests to this model need an API key (auth.required asks it for every model)."),
    Key("rate", "", "rate", non_negative, 0,
        "Requests per second to this model each serving node lets through; 429 (gRPC "
        "RESOURCE_EXHAUSTED) past it. 0: no limit."),
)
MODEL_KEYS = {key.name: key for key in MODEL_SCHEMA}
MODEL_SECTIONS = {"batching": Batching, "openvino": OpenVino, "rollout": Rollout, "auto": Auto,
                  "shadow": Shadow}
LABEL_DOC = ("The version a label names (TF Serving's version_labels; a label is letters, digits "
             "and `_`), e.g. `labels: {stable: 1, canary: 2}`; requests may then name "
             "`/labels/canary` instead of `/versions/2`.")
# Relative names a key of a model may end with, longest first (to find where a name ends).
_TAILS = sorted([*MODEL_KEYS, *MODEL_SECTIONS, LABELS], key=len, reverse=True)


# ----------------------------------------------------------------------------- parsing


def is_model_key(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ".")


def parse(values: Mapping[str, Any], names: tuple[str, ...] | None) -> tuple[dict[str, ModelEntry], Problems]:
    """The settings of every model in ``names`` from the flat ``models*`` keys, and every problem.

    ``names`` is ``model.name`` parsed, or None when it did not parse (then a section's model
    is not checked against it).
    """
    problems: Problems = []
    given: dict[str, dict[str, Any]] = {name: {} for name in names or ()}
    for key, value in values.items():
        if key == PREFIX:
            if not _empty(value):
                problems.append((key, "expected a mapping of model names to their settings, "
                                      "e.g. models: {resnet: {platform: onnx}}"))
            continue
        name, rel = _split(key[len(PREFIX) + 1:], names or ())
        given.setdefault(name, {})[rel] = value
    for name in given:
        if names is not None and name not in names:
            problems.append((f"{PREFIX}.{name}", f"model {name!r} is not in model.name; add it "
                             f"to model.name, or run `appliance models add {name}`"))
    settings = {}
    for name, raw in given.items():
        entry, found = _entry(name, raw)
        problems += found
        if entry is not None and name in (names or ()):
            settings[name] = entry
    return settings, problems


def _split(rest: str, names: Iterable[str]) -> tuple[str, str]:
    """``"resnet.batching.enabled"`` -> ``("resnet", "batching.enabled")`` (names may hold dots)."""
    for name in sorted(names, key=len, reverse=True):
        if rest == name or rest.startswith(name + "."):
            return name, rest[len(name) + 1:]
    if f".{LABELS}." in rest:
        name, _, label = rest.rpartition(f".{LABELS}.")
        return name, f"{LABELS}.{label}"
    for tail in _TAILS:
        if rest.endswith("." + tail):
            return rest[:-len(tail) - 1], tail
    name, _, rel = rest.partition(".")
    return name, rel


def _empty(value: Any) -> bool:
    """An empty section (``models: {}``, ``batching:``) flattens to one key holding nothing."""
    return value is None or (isinstance(value, Mapping) and not value)


def _entry(name: str, raw: Mapping[str, Any]) -> tuple[ModelEntry | None, Problems]:
    """One model's entry from its relative keys, or None with the problems."""
    where = f"{PREFIX}.{name}"
    problems: Problems = []
    labels: dict[str, int] = {}
    for rel, value in raw.items():
        path = f"{where}.{rel}" if rel else where
        if rel in ("", *MODEL_SECTIONS, LABELS) and _empty(value):
            continue
        if rel.startswith(LABELS + "."):
            problems += _label(path, rel[len(LABELS) + 1:], value, labels)
        elif not rel or rel in (*MODEL_SECTIONS, LABELS):
            problems.append((path, "expected a mapping of settings, e.g. "
                                   f"{where}: {{platform: onnx, batching: {{enabled: true}}}}"))
        elif rel not in MODEL_KEYS:
            close = difflib.get_close_matches(rel, [*MODEL_KEYS, f"{LABELS}.<label>"], n=1)
            hint = f"; did you mean {where}.{close[0]}?" if close else ""
            problems.append((path, f"unknown key{hint}"))
    parsed: dict[str, Any] = {}
    for key in MODEL_SCHEMA:
        try:
            parsed[key.name] = key.parse(raw.get(key.name, key.default))
        except Invalid as exc:
            problems.append((f"{where}.{key.name}", str(exc)))
    problems += _batching_checks(where, parsed) + _label_checks(where, parsed, labels)
    if problems:
        return None, problems
    return assemble(MODEL_SCHEMA, parsed, MODEL_SECTIONS, ModelEntry,
                    {"": {"name": name, "labels": labels}}), []


def _label(path: str, label: str, value: Any, labels: dict[str, int]) -> Problems:
    if not LABEL.fullmatch(label):
        return [(path, f"a version label may hold only letters, digits and _, got {label!r}")]
    try:
        labels[label] = _at_most(MAX_VERSION)(value)
    except Invalid as exc:
        return [(path, f"expected a version number: {exc}")]
    return []


def _batching_checks(where: str, parsed: Mapping[str, Any]) -> Problems:
    """TF Serving's rules for allowed_batch_sizes (``batching_settings_from_proto``)."""
    sizes, largest = parsed.get("batching.allowed_batch_sizes"), parsed.get("batching.max_batch_size")
    path = f"{where}.batching.allowed_batch_sizes"
    if not sizes:
        return []
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        return [(path, "allowed_batch_sizes entries must be monotonically increasing")]
    if largest is not None and sizes[-1] != largest:
        return [(path, f"the last entry must match max_batch_size; last entry was {sizes[-1]}; "
                       f"expected {largest}")]
    return []


def _label_checks(where: str, parsed: Mapping[str, Any], labels: Mapping[str, int]) -> Problems:
    """A label under a specific policy must name a version the policy serves."""
    policy = parsed.get("versions")
    if policy is None or policy.kind != "specific":
        return []
    return [(f"{where}.{LABELS}.{label}", f"version {version} is not served: versions is {policy}")
            for label, version in labels.items() if version not in policy.versions]


def flat_values(settings: Mapping[str, ModelEntry]) -> dict[str, Any]:
    """Every model's settings as flat keys, labels included (what :func:`parse` reads back)."""
    out: dict[str, Any] = {}
    for name, entry in settings.items():
        for key in MODEL_SCHEMA:
            out[f"{PREFIX}.{name}.{key.name}"] = value_of(key, entry)
        for label, version in sorted(entry.labels.items()):
            out[f"{PREFIX}.{name}.{LABELS}.{label}"] = version
    return out
