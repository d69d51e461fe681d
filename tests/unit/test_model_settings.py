"""Per-model settings (``models.<name>.*``) and the metrics keys: defaults that keep the user
guide's ``model.name: a,b`` working, TF Serving's rules with key paths, and the round trip
through the flat values the running config is stored as."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from appliance import cli
from appliance.config import PROMETHEUS_PATH, build, effective_values, load_config
from appliance.errors import ConfigError
from appliance.modelsettings import VersionPolicy
from modelserver.config_protos import DEFAULT_PROMETHEUS_PATH
from tests.pem import FAKE_CA

README = Path(__file__).resolve().parents[2] / "README.md"


def problems_of(values: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        build(values)
    return dict(err.value.problems)


def test_the_user_guides_model_list_gets_every_default() -> None:
    config = build({"model.name": "a,b"})
    assert list(config.model.settings) == ["a", "b"]
    entry = config.model.settings["a"]
    assert (entry.name, entry.platform, entry.versions, entry.labels) == ("a", "auto", VersionPolicy("latest"), {})
    assert not entry.batching.enabled and entry.batching.parameters() is None
    assert (entry.batching.max_batch_size, entry.batching.batch_timeout_micros,
            entry.batching.max_enqueued_batches, entry.batching.num_batch_threads) == (32, 1000, 100, 0)
    assert (entry.warmup, entry.metrics, entry.precision) == (True, True, "f32")
    assert (entry.openvino.performance_hint, entry.openvino.streams, entry.openvino.threads) == ("throughput", 0, 0)
    assert config.model.settings["b"] == entry.__class__(**{**entry.__dict__, "name": "b"})
    assert (config.metrics.enabled, config.metrics.path) == (True, PROMETHEUS_PATH)
    assert PROMETHEUS_PATH == DEFAULT_PROMETHEUS_PATH  # the model server's own default page


def test_nested_yaml_dotted_keys_and_overrides_mean_the_same(tmp_path: Path) -> None:
    nested = tmp_path / "nested.yaml"
    nested.write_text("model.name: resnet,scorer\nmodels:\n  resnet:\n    versions: latest:2\n"
                      "    labels: {stable: 1, canary: 2}\n"
                      "    batching: {enabled: true, max_batch_size: 16, allowed_batch_sizes: [4, 8, 16]}\n"
                      "  scorer:\n    platform: onnx\n    openvino: {}\n")
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("model.name: resnet,scorer\nmodels.resnet.versions: latest:2\n"
                      "models.resnet.labels.stable: 1\nmodels.resnet.labels.canary: 2\n"
                      "models.resnet.batching.enabled: true\nmodels.resnet.batching.max_batch_size: 16\n"
                      "models.resnet.batching.allowed_batch_sizes: 4,8,16\nmodels.scorer.platform: onnx\n")
    overridden = load_config(None, ["model.name=resnet,scorer", "models.resnet.versions=latest:2",
                                    "models.resnet.labels.stable=1", "models.resnet.labels.canary=2",
                                    "models.resnet.batching.enabled=on",
                                    "models.resnet.batching.max_batch_size=16",
                                    "models.resnet.batching.allowed_batch_sizes=4, 8, 16",
                                    "models.scorer.platform=ONNX"])
    assert load_config(nested) == load_config(dotted) == overridden
    resnet = overridden.model.settings["resnet"]
    assert resnet.versions == VersionPolicy("latest", 2) and resnet.labels == {"stable": 1, "canary": 2}
    assert resnet.batching.parameters() == {
        "max_batch_size": 16, "batch_timeout_micros": 1000, "max_enqueued_batches": 100,
        "num_batch_threads": 0, "allowed_batch_sizes": [4, 8, 16], "pad_variable_length_inputs": False}
    assert overridden.model.settings["scorer"].platform == "onnx"


def test_an_override_wins_over_the_files_model_setting(tmp_path: Path) -> None:
    path = tmp_path / "appliance.yaml"
    path.write_text("model.name: a\nmodels: {a: {batching: {enabled: true}}}\n")
    assert not load_config(path, ["models.a.batching.enabled=false"]).model.settings["a"].batching.enabled


@pytest.mark.parametrize("text, policy", [
    ("latest", VersionPolicy("latest", 1)), ("latest:1", VersionPolicy("latest", 1)),
    ("LATEST:3", VersionPolicy("latest", 3)), ("all", VersionPolicy("all")),
    ("specific:3,1", VersionPolicy("specific", versions=(1, 3))), ("specific: 7", VersionPolicy("specific", versions=(7,))),
])
def test_version_policies(text: str, policy: VersionPolicy) -> None:
    assert build({"model.name": "m", "models.m.versions": text}).model.settings["m"].versions == policy


@pytest.mark.parametrize("text, message", [
    ("specific:", "specific: needs at least one version"), ("specific", "specific: needs at least one version"),
    ("specific:1,1", "listed twice"), ("specific:0", "must be 1 or more"), ("latest:0", "must be 1 or more"),
    ("latest:x", "expected an integer"), ("newest", "valid: latest, latest:N, all, specific:V1,V2"),
    ("all:2", "unknown version policy"),
    # models.config holds versions as int64 and latest's num_versions as uint32
    ("specific:1,9223372036854775808", "must be 9223372036854775807 or less"),
    ("latest:4294967296", "must be 4294967295 or less"),
])
def test_bad_version_policies_are_refused(text: str, message: str) -> None:
    problems = problems_of({"model.name": "m", "models.m.versions": text})
    assert message in problems["models.m.versions"]


def test_every_model_mistake_is_reported_at_once_with_its_key_path() -> None:
    problems = problems_of({
        "model.name": "a,b", "http.port": 8501,
        "models.zz.platform": "onnx",                       # not in model.name
        "models.a.batchng.enabled": True,                   # typo
        "models.a.platform": "tensorrt",
        "models.a.batching.max_batch_size": 0,
        "models.a.batching.max_enqueued_batches": 0,
        "models.a.batching.batch_timeout_micros": -1,
        "models.b.batching.max_batch_size": 8,
        "models.b.batching.allowed_batch_sizes": [4, 16],
        "models.b.labels.canary-1": 2,
        "models.b.labels.stable": 0,
        "models.b.precision": "f16",
        "models.b.openvino.performance_hint": "fast",
    })
    assert problems["http.port"].startswith("8501 is reserved")
    assert "not in model.name" in problems["models.zz"] and "appliance models add zz" in problems["models.zz"]
    assert "did you mean models.a.batching.enabled?" in problems["models.a.batchng.enabled"]
    assert "valid: auto, tensorflow, onnx, openvino" in problems["models.a.platform"]
    assert "1 or more" in problems["models.a.batching.max_batch_size"]
    assert "1 or more" in problems["models.a.batching.max_enqueued_batches"]
    assert "0 or more" in problems["models.a.batching.batch_timeout_micros"]
    assert problems["models.b.batching.allowed_batch_sizes"] == (
        "the last entry must match max_batch_size; last entry was 16; expected 8")
    assert "letters, digits and _" in problems["models.b.labels.canary-1"]
    assert "1 or more" in problems["models.b.labels.stable"]
    assert "valid: f32, bf16" in problems["models.b.precision"]
    assert "valid: latency, throughput" in problems["models.b.openvino.performance_hint"]
    assert len(problems) == 12


def test_batch_sizes_must_increase() -> None:
    problems = problems_of({"model.name": "m", "models.m.batching.allowed_batch_sizes": "8,8,32"})
    assert "monotonically increasing" in problems["models.m.batching.allowed_batch_sizes"]
    assert "1 or more" in problems_of({"model.name": "m", "models.m.batching.allowed_batch_sizes": "0,32"})[
        "models.m.batching.allowed_batch_sizes"]


def test_a_label_must_name_a_version_a_specific_policy_serves() -> None:
    values = {"model.name": "m", "models.m.versions": "specific:1,2", "models.m.labels.stable": 1}
    assert build(values).model.settings["m"].labels == {"stable": 1}
    problems = problems_of({**values, "models.m.labels.canary": 3})
    assert problems == {"models.m.labels.canary": "version 3 is not served: versions is specific:1,2"}


def test_a_label_names_a_version_models_config_can_hold() -> None:
    assert build({"model.name": "m", "models.m.labels.big": 2**63 - 1}).model.settings["m"].labels
    problems = problems_of({"model.name": "m", "models.m.labels.big": 2**63})
    assert "must be 9223372036854775807 or less" in problems["models.m.labels.big"]


def test_sections_must_be_mappings_and_empty_ones_mean_defaults() -> None:
    empty = build({"model.name": "m", "models": {}, "models.m": None, "models.m.batching": {},
                   "models.m.labels": None})
    assert empty == build({"model.name": "m"})
    problems = problems_of({"model.name": "m", "models.m.batching": 5, "models.m.labels": "stable"})
    assert set(problems) == {"models.m.batching", "models.m.labels"}
    assert "expected a mapping" in problems_of({"models": ["m"]})["models"]


def test_model_names_with_dots_keep_their_sections_apart() -> None:
    config = build({"model.name": "a,a.b", "models.a.platform": "onnx", "models.a.b.platform": "openvino",
                    "models.a.b.labels.x": 1})
    assert config.model.settings["a"].platform == "onnx"
    assert config.model.settings["a.b"].platform == "openvino"
    assert config.model.settings["a.b"].labels == {"x": 1}
    assert set(problems_of({"model.name": "a", "models.c.d.batching.enabled": True})) == {"models.c.d"}


def test_the_metrics_page_keys() -> None:
    config = build({"metrics.enabled": "false", "metrics.path": "/metrics"})
    assert (config.metrics.enabled, config.metrics.path) == (False, "/metrics")
    for bad in ("metrics", "/a b", "/m?x=1"):
        assert "URL path" in problems_of({"metrics.path": bad})["metrics.path"]


@pytest.mark.parametrize("values", [
    {},
    {"model.name": "a,b", "s3.secret.key": "S", "cluster.members": "127.0.0.2,127.0.0.3", **FAKE_CA},
    {"model.name": "resnet,scorer,a.b", "models.resnet.versions": "latest:2",
     "models.resnet.labels.stable": 1, "models.resnet.labels.canary": 2,
     "models.resnet.batching.enabled": True, "models.resnet.batching.allowed_batch_sizes": [4, 8, 32],
     "models.scorer.platform": "onnx", "models.scorer.versions": "specific:3,1",
     "models.scorer.labels.v3": 3, "models.a.b.versions": "all", "models.a.b.warmup": False,
     "models.a.b.openvino.streams": 2, "metrics.enabled": False, "metrics.path": "/m"},
])
def test_effective_values_round_trip(values: dict) -> None:
    config = build(values)
    flat = effective_values(config, mask_secrets=False)
    assert build(flat) == config
    assert build(yaml.safe_load(yaml.safe_dump(flat, sort_keys=False))) == config   # as stored
    assert all(not isinstance(v, (dict, list, tuple)) for v in flat.values())  # one scalar per key
    assert {f"models.{name}.platform" for name in config.model.names} <= set(flat)


def test_effective_values_spell_per_model_keys_as_the_config_file_does() -> None:
    flat = effective_values(build({"model.name": "m", "models.m.versions": "specific:2,1",
                                   "models.m.batching.allowed_batch_sizes": [8, 32],
                                   "models.m.labels.stable": 2}))
    assert flat["models.m.versions"] == "specific:1,2"
    assert flat["models.m.batching.allowed_batch_sizes"] == "8,32"
    assert flat["models.m.labels.stable"] == 2 and flat["models.m.batching.enabled"] is False


def test_a_refused_model_setting_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`up` stops at the config: no run dir, no file rendered, nothing started."""
    config = tmp_path / "appliance.yaml"
    config.write_text("model.name: m\nmodels: {m: {platform: tensorrt, batching: {max_batch_size: 0}}}\n")
    root = tmp_path / "root"
    assert cli.main(["--root", str(root), "--config", str(config), "up"]) == 2
    err = capsys.readouterr().err
    assert "models.m.platform: unknown value 'tensorrt'" in err
    assert "models.m.batching.max_batch_size: must be 1 or more" in err
    assert not root.exists()


def test_the_readmes_models_example_is_a_valid_config(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (example,) = [block for block in blocks if "\nmodels:\n" in block]
    path = tmp_path / "appliance.yaml"
    path.write_text(example)
    settings = load_config(path).model.settings
    assert any(entry.batching.enabled for entry in settings.values())
    assert any(entry.platform == "onnx" for entry in settings.values())
