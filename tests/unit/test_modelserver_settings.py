"""``--model_settings_file`` parsing and validation, ``model_platform: auto``, and how settings
reach the manager (no processes: a real ModelManager over model directories that hold nothing
to load)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from modelserver.config_protos import BatchingSettings
from modelserver.core.status import Code, ServingError
from modelserver.model_settings import (ModelSettings, SettingsFileError, parse_model_settings,
                                        read_model_settings)
from tests.conftest import wait_until

FULL = {"models": {
    "resnet": {"batching": {"max_batch_size": 8, "batch_timeout_micros": 500, "max_enqueued_batches": 4,
                            "num_batch_threads": 2, "allowed_batch_sizes": [2, 8],
                            "pad_variable_length_inputs": False},
               "warmup": False, "metrics": False, "precision": "bf16",
               "openvino": {"performance_hint": "latency", "streams": 2, "threads": 4}},
    "plain": {"batching": None, "warmup": True, "metrics": True, "precision": "f32",
              "openvino": {"performance_hint": "throughput", "streams": 0, "threads": 0}},
}}


def test_the_contract_format_parses() -> None:
    settings, errors = parse_model_settings(FULL)
    assert errors == []
    assert settings["resnet"] == ModelSettings(
        batching=BatchingSettings(max_batch_size=8, batch_timeout_micros=500, max_enqueued_batches=4,
                                  num_batch_threads=2, allowed_batch_sizes=(2, 8)),
        warmup=False, metrics=False, precision="bf16",
        runtime_options={"performance_hint": "latency", "streams": 2, "threads": 4})
    assert settings["plain"].batching is None and settings["plain"].warmup and settings["plain"].metrics


def test_left_out_keys_take_their_defaults() -> None:
    settings, errors = parse_model_settings({"models": {"m": {}, "b": {"batching": {"max_batch_size": 4}}}})
    assert errors == []
    assert settings["m"] == ModelSettings()
    assert settings["b"].batching == BatchingSettings(max_batch_size=4)


def test_every_error_is_reported_with_its_key_path() -> None:
    settings, errors = parse_model_settings({"models": {
        "a": {"batching": {"max_batch_size": 0, "colour": 1}, "precision": "fp8", "warmup": "yes",
              "openvino": {"performance_hint": "fast", "streams": -1}, "extra": 1},
        "b": {"batching": {"max_batch_size": 8, "allowed_batch_sizes": [2, 4]}},
        "c": {"batching": {"max_batch_size": True}},
        "ok": {"metrics": False},
    }, "other": 1})
    assert sorted(errors) == sorted([
        "other: unknown key; valid: models",
        "models.a.extra: unknown key; valid: batching, warmup, metrics, precision, openvino, rollout, auto, shadow",
        "models.a.batching.colour: unknown key; valid: max_batch_size, batch_timeout_micros, max_enqueued_batches, "
        "num_batch_threads, allowed_batch_sizes, pad_variable_length_inputs",
        "models.a.batching: max_batch_size must be positive",
        "models.a.precision: 'fp8' is not one of f32, bf16",
        "models.a.warmup: must be true or false, not 'yes'",
        "models.a.openvino.streams: must be a non-negative integer, not -1",
        "models.a.openvino.performance_hint: 'fast' is not one of latency, throughput",
        "models.b.batching: Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
        "expected 8",
        "models.c.batching.max_batch_size: must be a non-negative integer, not True",
    ])
    assert list(settings) == ["ok"]


@pytest.mark.parametrize("text,error", [
    ("{", "not JSON: "),
    ('{"models": []}', 'the top level must be an object with a "models" object'),
    ('{"models": {"m": 3}}', "models.m: must be an object"),
    ('{"models": {"m": {"batching": 3}}}', "models.m.batching: must be null (batching off) or an object"),
])
def test_a_bad_file_names_itself_and_the_problem(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "model-settings.json"
    path.write_text(text)
    with pytest.raises(SettingsFileError) as info:
        read_model_settings(str(path))
    assert str(info.value).startswith(f"invalid model settings file {path}: {error}")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError, match="cannot read it: No such file or directory"):
        read_model_settings(str(tmp_path / "absent.json"))


def test_load_context_is_empty_at_the_defaults() -> None:
    """A model that only gained a settings entry keeps its quarantine record."""
    assert ModelSettings(warmup=False, metrics=False).load_context() == ""
    assert ModelSettings(precision="bf16", runtime_options={"streams": 2, "performance_hint": "latency"}) \
        .load_context() == "precision=bf16 performance_hint=latency streams=2"


def test_runtimes_refuse_a_precision_they_cannot_do() -> None:
    from modelserver.runtimes import LoadOptions, get_runtime

    runtime = get_runtime("onnx")
    runtime.check_options(LoadOptions())
    with pytest.raises(ServingError) as info:
        runtime.check_options(LoadOptions(precision="bf16"))
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == "precision bf16 is not supported by the onnx runtime (supported: f32)"


def test_auto_platform_comes_from_the_version_files(tmp_path: Path) -> None:
    """Before a version loads (no choice measured yet), ``auto`` is the platform its files say."""
    from modelserver.autoplatform import load_auto
    from modelserver.core.choice import Choice
    from modelserver.runtimes import LoadOptions
    from modelserver.manager import ModelConfig, ServedModel, resolve_platform
    from modelserver.model_settings import AutoSettings

    model = ServedModel(ModelConfig(name="m", base_path=str(tmp_path), platform="auto"))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"")
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "3").mkdir()
    assert resolve_platform(model, str(tmp_path / "1")) == "onnx"
    assert resolve_platform(model, str(tmp_path / "2")) == "tensorflow"
    model.choices[str(tmp_path / "2")] = Choice("openvino", "f32", "measured")
    assert resolve_platform(model, str(tmp_path / "2")) == "openvino"
    assert resolve_platform(ServedModel(ModelConfig(name="m", base_path=str(tmp_path), platform="onnx")),
                            str(tmp_path / "2")) == "onnx"
    with pytest.raises(ServingError) as info:
        load_auto(str(tmp_path / "3"), LoadOptions(), AutoSettings())
    assert info.value.code is Code.NOT_FOUND
    assert info.value.message.startswith(f"Could not find a model at {tmp_path / '3'} (model_platform auto): "
                                         "a version directory holds saved_model.pb")


def test_the_inference_pool_can_grow() -> None:
    """Pins ``ThreadPoolExecutor._max_workers``, the attribute InferencePool.grow raises."""
    from modelserver.features import InferencePool

    pool = InferencePool(2)
    try:
        pool.grow(5)
        assert pool._max_workers == 5
        pool.grow(3)
        assert pool._max_workers == 5
        assert sorted(pool.map(lambda x: x * 2, range(4))) == [0, 2, 4, 6]
    finally:
        pool.shutdown()


def _watched(tmp_path: Path, settings: dict) -> tuple:
    from modelserver.config_watch import ConfigFileWatcher
    from modelserver.manager import ModelManager
    from modelserver.model_config import read_model_server_config
    from modelserver.runtimes import LoadOptions

    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ config {{ name: 'm' base_path: '{tmp_path}/m' "
                      "model_platform: 'auto' } }\n")
    settings_file = tmp_path / "model-settings.json"
    settings_file.write_text(json.dumps(settings))
    manager = ModelManager(read_model_server_config(str(config)), LoadOptions(), 1.0, 1,
                           settings=read_model_settings(str(settings_file)))
    return manager, ConfigFileWatcher(str(config), manager, 1.0, str(settings_file)), settings_file


def test_a_changed_settings_file_reaches_the_model(tmp_path: Path) -> None:
    manager, watcher, settings_file = _watched(tmp_path, {"models": {"m": {"metrics": False}}})
    seen = []
    manager.on_settings = lambda models: seen.append({n: m.settings for n, m in models.items()})
    assert manager.models["m"].settings == ModelSettings(metrics=False)
    assert not watcher.check()                       # nothing changed
    settings_file.write_text(json.dumps({"models": {"m": {"batching": {"max_batch_size": 4}}}}))
    assert watcher.check()
    wanted = ModelSettings(batching=BatchingSettings(max_batch_size=4))
    assert manager.models["m"].settings == wanted and seen == [{"m": wanted}]
    settings_file.write_text(json.dumps({"models": {}}))
    assert watcher.check()
    assert manager.models["m"].settings is None       # not listed: the global flags decide again


def test_an_invalid_settings_file_keeps_the_settings_in_force(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    manager, watcher, settings_file = _watched(tmp_path, {"models": {"m": {"metrics": False}}})
    for bad in ('{"models": {"m": {"metrics": 3}}}', "{"):
        settings_file.write_text(bad)
        assert watcher.check()
        assert manager.models["m"].settings == ModelSettings(metrics=False)
        assert not watcher.check()                   # logged once, not at every poll
    assert "keeping the current model settings" in caplog.text
    assert "models.m.metrics: must be true or false, not 3" in caplog.text
    settings_file.unlink()
    assert watcher.check()
    assert manager.models["m"].settings == ModelSettings(metrics=False)


def test_the_applied_config_names_the_bytes_in_force_or_why_not(tmp_path: Path) -> None:
    """What GET /appliance/v1/applied-config answers: a node's up/reload waits on it."""
    from modelserver.core.applied import digest

    manager, watcher, settings_file = _watched(tmp_path, {"models": {"m": {"metrics": False}}})
    config = tmp_path / "models.config"
    started = {"model_config_file": digest(config.read_bytes()),
               "model_settings_file": digest(settings_file.read_bytes())}
    assert manager.applied_files == started
    settings_file.write_text(json.dumps({"models": {"m": {"metrics": True}}}))
    assert watcher.check()
    assert manager.applied_files == {**started, "model_settings_file": digest(settings_file.read_bytes())}
    in_force = dict(manager.applied_files)
    settings_file.write_text("{")
    assert watcher.check()
    assert manager.applied_files["model_settings_file"] == in_force["model_settings_file"]
    assert "model-settings.json is not valid" in manager.applied_files["error"]
    settings_file.write_text(json.dumps({"models": {"m": {"metrics": True}}}))
    config.write_text("model_config_list { config { name: 'm' }")          # not valid
    assert watcher.check()
    assert manager.applied_files["model_config_file"] == in_force["model_config_file"]
    assert "models.config is not valid" in manager.applied_files["error"]
    config.write_text("model_config_list { config { name: 'm' base_path: '/nowhere' model_platform: 'onnx' } }")
    assert watcher.check()             # a new platform (TF Serving refuses it): versions load again
    assert manager.applied_files == {"model_config_file": digest(config.read_bytes()),
                                     "model_settings_file": digest(settings_file.read_bytes())}
    assert manager.models["m"].config.platform == "onnx"


def test_a_newer_config_ends_the_wait_for_a_model_with_no_versions(tmp_path: Path) -> None:
    """A reload waits until its new models are AVAILABLE, and a model with no version on disk
    never is: a newer models.config must still be applied (the watcher polls in that wait),
    not wait behind it for ever."""
    manager, watcher, _ = _watched(tmp_path, {"models": {"empty": {"warmup": False}}})
    config = Path(watcher.path)
    kept = config.read_text()
    config.write_text(kept.replace("} }", f"}} config {{ name: 'empty' base_path: '{tmp_path}/none' "
                                          "model_platform: 'auto' } }"))
    waiting = threading.Thread(target=watcher.check, daemon=True)
    waiting.start()
    assert wait_until(lambda: "empty" in manager.models, 30, what="the reload to add the model")
    config.write_text(kept)                          # the operator takes it back
    waiting.join(60)
    assert not waiting.is_alive(), "the watcher still waits for a model no config has"
    assert watcher.check() and list(manager.models) == ["m"]
