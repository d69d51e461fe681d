"""The config: defaults, the user guide's dotted names, and every error reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import cli
from appliance.config import (NodePaths, build, effective_values, flatten, load_config,
                              model_name_problem, parse_overrides)
from appliance.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_user_guide_defaults() -> None:
    config = load_config(None)
    assert config.model.default == "saved_model_half_plus_two_mkl"
    assert config.model.names == ("saved_model_half_plus_two_mkl", "resnet")
    assert (config.http_port, config.grpc_port) == (8080, 9000)
    assert (config.serving.rest_port, config.serving.grpc_port) == (8501, 8500)
    assert config.envoy.admin_port == 8001
    assert config.s3.type == "none" and config.access_log is False


def test_nested_and_dotted_yaml_mean_the_same(tmp_path: Path) -> None:
    nested = load_config(write(tmp_path, "model:\n  name: resnet\n  base:\n    path: /m\n"
                                         "enable:\n  access:\n    log: true\nhttp:\n  port: 8081\n"))
    dotted = load_config(write(tmp_path, "model.name: resnet\nmodel.base.path: /m\n"
                                         "enable.access.log: true\nhttp.port: 8081\n"))
    assert nested == dotted
    assert nested.model.names == ("resnet",) and nested.access_log and nested.http_port == 8081


def test_set_overrides_use_the_user_guide_names(tmp_path: Path) -> None:
    path = write(tmp_path, "model.name: a\nhttp.port: 8081\n")
    config = load_config(path, ["model.name=resnet", "http.port=8082", "grpc.port=9001",
                                "enable.access.log=on", "s3.access.key=AK", "s3.secret.key=SK"])
    assert config.model.names == ("resnet",)
    assert (config.http_port, config.grpc_port, config.access_log) == (8082, 9001, True)
    assert config.s3.access_key == "AK" and config.s3.secret_key == "SK"


@pytest.mark.parametrize("key", ["http.port", "grpc.port"])
@pytest.mark.parametrize("port", ["8500", "8501"])
def test_public_ports_refuse_the_model_server_ports(key: str, port: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={port}"])
    assert err.value.problems[0][0] == key
    assert "reserved" in err.value.problems[0][1]


def test_every_mistake_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8501\ngrpc.port: ninety\nmodel:\n  nmae: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["s3.type=ftp"])
    keys = [key for key, _ in err.value.problems]
    assert sorted(keys) == sorted(["http.port", "grpc.port", "model.nmae", "s3.type"])
    text = str(err.value)
    assert "4 configuration error(s)" in text and str(path) in text
    assert "did you mean model.name?" in text
    assert "valid: none, minio, s3, qingstor" in text


def test_cross_key_rules() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["http.port=9000", "model.base.path=s3://models"])
    problems = dict(err.value.problems)
    assert "already used by http.port" in problems["grpc.port"]
    assert "s3.type" in problems["model.base.path"]


def test_bad_yaml_and_bad_override_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "model: [unclosed\n"))
    assert "not valid YAML" in str(err.value)
    assert parse_overrides(["noequals"])[1][0][0] == "noequals"
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "- a list\n"))


def test_secrets_are_masked_and_not_in_repr() -> None:
    config = load_config(None, ["s3.secret.key=TOPSECRET", "s3.access.key=AKID"])
    assert "TOPSECRET" not in repr(config) and "AKID" not in repr(config)
    assert effective_values(config)["s3.secret.key"] == "********"
    assert effective_values(config, mask_secrets=False)["s3.secret.key"] == "TOPSECRET"


def test_model_name_list_forms() -> None:
    assert load_config(None, ["model.name= a , b"]).model.names == ("a", "b")
    for bad in ("", "a,,b", "../x", "a,a"):
        with pytest.raises(ConfigError):
            load_config(None, [f"model.name={bad}"])


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "m:predict"])
def test_the_one_model_name_rule_refuses(name: str) -> None:
    assert model_name_problem(name)


def test_the_one_model_name_rule_allows_what_tf_serving_serves() -> None:
    assert not any(map(model_name_problem, ["resnet", "half_plus-two.v2", "m1 x", "Ünïcode"]))


def test_flatten_and_paths(tmp_path: Path) -> None:
    assert flatten({"a": {"b": {"c": 1}}, "d": [1]}) == {"a.b.c": 1, "d": [1]}
    paths = NodePaths(tmp_path)
    assert paths.local("/data/models") == tmp_path / "data/models" == paths.models


def test_cli_reports_all_mistakes_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In process: a start would trip the unit tier's no-process guard."""
    config = write(tmp_path, "http.port: 8500\ngrpc.port: 0\nmodel.name: ''\n")
    assert cli.main(["--root", str(tmp_path / "root"), "--config", str(config), "up"]) == 2
    stderr = capsys.readouterr().err
    for key in ("http.port", "grpc.port", "model.name"):
        assert f"  {key}: " in stderr
    assert "3 configuration error(s)" in stderr
    assert not (tmp_path / "root").exists()  # nothing rendered, nothing started


def test_the_log_budget_and_start_timeout_are_validated() -> None:
    with pytest.raises(ConfigError) as err:
        build({"log.max.total.mb": 4, "startup.timeout.seconds": 0})
    keys = [key for key, _ in err.value.problems]
    assert keys == ["startup.timeout.seconds", "log.max.total.mb"]
    config = build({"log.max.total.mb": 100, "startup.timeout.seconds": 30})
    assert config.log.max_total_mb == 100 and config.startup.timeout_seconds == 30


@pytest.mark.parametrize("values", [
    {}, {"enable.access.log": True}, {"node.role": "repo", "logviewer.enabled": False},
    {"log.max.total.mb": 16, "enable.access.log": True}, {"log.max.total.mb": 100000}])
def test_every_log_limit_together_stays_within_the_budget(values: dict) -> None:
    from appliance.logbudget import USED, limits

    config = build(values)
    found = limits(config)
    total = sum(limit.max_bytes * (limit.backups + 1) for limit in found.values())
    assert total <= config.log.max_total_mb * (1 << 20) * USED
    assert ("objectstore" in found) == (config.node.role == "repo")


def test_switching_the_logviewer_or_the_access_log_leaves_the_other_log_limits_alone() -> None:
    """Other limits changing would change every program's section: supervisord restarts them."""
    from appliance.logbudget import limits

    base = limits(build({}))
    assert limits(build({"logviewer.enabled": False, "enable.access.log": True})) == base
