"""Flags, ModelServerConfig parsing, version discovery and policies (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserver.flags import FlagError, parse_flags
from modelserver.manager import ModelConfig, aspired_versions, list_versions
from modelserver.model_config import ConfigFileError, read_model_server_config
from modelserver.core.status import ServingError


def test_flag_syntax() -> None:
    opts = parse_flags(["--port=9000", "--rest_api_port", "9001", "--rest_api_enable_cors_support",
                        "--model_name=m", "--xla_cpu_compilation_enabled=false",
                        "--file_system_poll_wait_seconds", "0"])
    assert (opts.port, opts.rest_api_port, opts.rest_api_enable_cors_support) == (9000, 9001, True)
    assert opts.model_name == "m" and opts.file_system_poll_wait_seconds == 0
    assert opts.ignored_given == ["xla_cpu_compilation_enabled"]
    assert parse_flags([]).rest_api_port == 0 and parse_flags([]).port == 8500
    assert parse_flags(["--rest_api_enable_cors_support", "false"]).rest_api_enable_cors_support is False
    assert parse_flags([]).rest_api_num_threads >= 1


@pytest.mark.parametrize("argv", [["--no_such_flag=1"], ["positional"], ["--port=abc"], ["--port"]])
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(FlagError):
        parse_flags(argv)


def test_model_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text("""model_config_list {
      config { name: 'a' base_path: '/m/a' model_platform: 'tensorflow'
               model_version_policy { specific { versions: 42 versions: 43 } }
               version_labels { key: 'stable' value: 42 } }
      config: { name: "b", base_path: "/m/b", model_platform: "tensorflow",
                model_version_policy: { latest: { num_versions: 2 } } }
      config { name: 'c' base_path: '/m/c' model_platform: 'tensorflow' model_version_policy { all {} } }
      config { name: 'd' base_path: '/m/d' model_platform: 'tensorflow' }
    }""")
    a, b, c, d = read_model_server_config(str(path))
    assert (a.policy, a.versions, a.labels) == ("specific", (42, 43), {"stable": 42})
    assert (b.policy, b.num_versions) == ("latest", 2)
    assert c.policy == "all"
    assert (d.policy, d.num_versions) == ("latest", 1)


@pytest.mark.parametrize("text,message", [
    ("model_config_list { config { name: 'a' base_path: 'rel' model_platform: 'tensorflow' } }",
     "Expected model a to have an absolute path or URI; got base_path()=rel"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'tensorflow' } "
     "config { name: 'a' base_path: '/y' model_platform: 'tensorflow' } }",
     "Illegal to list model a multiple times in config list"),
    ("model_config_list { config { name: 'a' base_path: '/x' } }", "Illegal setting neither"),
])
def test_model_config_validation(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ServingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_model_server_config(str(path))


def test_bad_config_file_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.config"
    path.write_text("improperly formatted file\n")
    with pytest.raises(ConfigFileError):
        read_model_server_config(str(path))


def test_version_discovery(tmp_path: Path) -> None:
    for name in ("1", "00000123", "abc", "5"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert list_versions(str(tmp_path), "m") == {1: "1", 123: "00000123", 5: "5"}
    assert list_versions(str(tmp_path / "missing"), "m") is None
    on_disk = [1, 5, 123]
    assert aspired_versions(ModelConfig("m", "/x"), on_disk) == {123}
    assert aspired_versions(ModelConfig("m", "/x", num_versions=2), on_disk) == {123, 5}
    assert aspired_versions(ModelConfig("m", "/x", policy="all"), on_disk) == {1, 5, 123}
    assert aspired_versions(ModelConfig("m", "/x", policy="specific", versions=(5, 42)), on_disk) == {5}
