"""`appliance bootstrap`: cloud-init user data -> /etc/appliance/appliance.yaml, credentials generated 0600."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.bootstrap import appliance_keys, bootstrap
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError

CLOUD_CONFIG = """#cloud-config
package_update: false
appliance:
  node.role: repo
  model:
    name: saved_model_half_plus_two_mkl
  http.port: 8081
"""


def _user_data(paths: NodePaths, text: str) -> Path:
    path = paths.root / "var/lib/cloud/instance/user-data.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cloud_config_becomes_the_config_with_generated_credentials_0600(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, CLOUD_CONFIG)
    result = bootstrap(paths)
    assert result.changed and result.generated == ["s3.access.key", "s3.secret.key"]
    assert paths.config_file.stat().st_mode & 0o777 == 0o600
    config = load_config(paths.config_file)
    assert config.node.role == "repo" and config.http_port == 8081
    assert config.model.names == ("saved_model_half_plus_two_mkl",)
    assert len(config.s3.access_key) == 20 and len(config.s3.secret_key) == 40
    # The report names the generated keys, never their values.
    text = result.text()
    assert config.s3.access_key not in text and config.s3.secret_key not in text


def test_a_second_boot_changes_nothing_and_keeps_admin_edits(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, CLOUD_CONFIG)
    bootstrap(paths)
    edited = paths.config_file.read_text().replace("http.port: 8081", "http.port: 8082")
    paths.config_file.write_text(edited)
    result = bootstrap(paths)
    assert not result.changed and "already applied" in result.reason
    assert paths.config_file.read_text() == edited


def test_new_user_data_is_merged_over_the_existing_config(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, CLOUD_CONFIG)
    bootstrap(paths)
    keys = load_config(paths.config_file).s3
    _user_data(paths, CLOUD_CONFIG.replace("8081", "8085"))
    assert bootstrap(paths).changed
    config = load_config(paths.config_file)
    assert config.http_port == 8085
    assert (config.s3.access_key, config.s3.secret_key) == (keys.access_key, keys.secret_key)


def test_a_serving_node_gets_no_invented_credentials_and_no_secret_mode(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    src = tmp_path / "node.yaml"
    src.write_text("model.name: resnet\n")
    result = bootstrap(paths, from_files=[src])
    assert result.changed and result.generated == []
    assert paths.config_file.stat().st_mode & 0o777 == 0o640
    assert load_config(paths.config_file).s3.access_key == ""


def test_no_user_data_and_no_config_writes_nothing(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    result = bootstrap(paths)
    assert not result.changed and not paths.config_file.exists()


def test_invalid_user_data_is_refused_with_key_paths(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, "#cloud-config\nappliance:\n  http.port: 8500\n  modle.name: x\n")
    with pytest.raises(ConfigError) as caught:
        bootstrap(paths)
    assert {key for key, _ in caught.value.problems} == {"http.port", "modle.name"}
    assert not paths.config_file.exists()


@pytest.mark.parametrize("text, expected", [
    ("#!/bin/sh\necho hi\n", None),
    ("#cloud-config\npackages: [curl]\n", None),
    ("", None),
    ("Content-Type: multipart/mixed; boundary=x\n", None),
    ("http.port: 8081\nmodel: {name: resnet}\n", {"http.port": 8081, "model.name": "resnet"}),
    ("appliance:\n  grpc.port: 9001\n", {"grpc.port": 9001}),
])
def test_user_data_formats(text: str, expected: dict | None) -> None:
    assert appliance_keys(text, "user-data") == expected


def test_written_config_is_plain_dotted_yaml(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, CLOUD_CONFIG)
    bootstrap(paths)
    text = paths.config_file.read_text()
    assert text.startswith("# Written by `appliance bootstrap` from ")
    assert list(yaml.safe_load(text))[:2] == ["node.role", "model.name"]
