"""`appliance bootstrap`: cloud-init user data -> /etc/appliance/appliance.yaml, credentials generated 0600."""

from __future__ import annotations

import gzip
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
import yaml

from appliance.bootstrap import BootstrapError, appliance_keys, bootstrap
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError
from tests.pem import FAKE_CA

CLOUD_CONFIG = """#cloud-config
package_update: false
appliance:
  node.role: repo
  model:
    name: saved_model_half_plus_two_mkl
  http.port: 8081
"""


def _user_data(paths: NodePaths, text: str | bytes) -> Path:
    path = paths.root / "var/lib/cloud/instance/user-data.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
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


def test_the_cluster_ca_arrives_in_user_data_as_pem_blocks_and_stays_0600(tmp_path: Path) -> None:
    """The CA is handed out like the store's keys: YAML block scalars under appliance:."""
    paths = NodePaths(tmp_path)
    block = "\n".join(f"  {key}: |\n" + "".join(f"    {line}\n" for line in value.splitlines())
                      for key, value in FAKE_CA.items())
    _user_data(paths, "#cloud-config\nappliance:\n  cluster.members: 10.0.0.11,10.0.0.12\n" + block)
    result = bootstrap(paths)
    assert result.changed and result.generated == []
    assert paths.config_file.stat().st_mode & 0o777 == 0o600
    config = load_config(paths.config_file)
    assert config.cluster.ca_cert == FAKE_CA["cluster.ca.cert"]
    assert config.cluster.ca_key == FAKE_CA["cluster.ca.key"]
    assert "fake" not in result.text() and "fake" not in repr(config)


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


# ----------------------------------------------------------------------------- what clouds send


def _applied(tmp_path: Path, raw: bytes):
    paths = NodePaths(tmp_path)
    _user_data(paths, raw)
    assert bootstrap(paths).changed
    return load_config(paths.config_file)


def _terraform_mime(*parts: tuple[str, str]) -> bytes:
    """What Terraform's cloudinit_config renders: multipart/mixed, 7bit text parts."""
    message = MIMEMultipart("mixed", boundary="MIMEBOUNDARY")
    for content_type, body in parts:
        part = MIMEText(body, content_type.split("/")[1], "utf-8")
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(body)
        message.attach(part)
    return message.as_bytes()


def test_plain_cloud_config_is_applied(tmp_path: Path) -> None:
    config = _applied(tmp_path, CLOUD_CONFIG.encode())
    assert config.node.role == "repo" and config.http_port == 8081


def test_gzip_user_data_is_applied(tmp_path: Path) -> None:
    """EC2 and Terraform's `gzip = true` hand over gzip bytes; cloud-init keeps them raw."""
    config = _applied(tmp_path, gzip.compress(CLOUD_CONFIG.encode()))
    assert config.node.role == "repo" and config.http_port == 8081


def test_terraform_mime_multipart_merges_its_cloud_config_parts(tmp_path: Path) -> None:
    raw = _terraform_mime(("text/x-shellscript", "#!/bin/sh\necho appliance: ignored\n"),
                          ("text/cloud-config", CLOUD_CONFIG),
                          ("text/cloud-config", "appliance:\n  http.port: 8093\n"))
    config = _applied(tmp_path, raw)
    assert config.node.role == "repo" and config.http_port == 8093     # the later part wins
    assert config.model.names == ("saved_model_half_plus_two_mkl",)


def test_gzip_mime_multipart_is_applied(tmp_path: Path) -> None:
    raw = gzip.compress(_terraform_mime(("text/cloud-config", CLOUD_CONFIG)))
    assert _applied(tmp_path, raw).http_port == 8081


def test_mime_multipart_without_cloud_config_boots_on_the_existing_config(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, _terraform_mime(("text/x-shellscript", "#!/bin/sh\ntrue\n")))
    assert not bootstrap(paths).changed


SECRET = "wS3cr3tV4lu3-9f8e7d6c5b4a"


@pytest.mark.parametrize("document", [
    # a key indented one space too far: "mapping values are not allowed here" on the secret's line
    f"#cloud-config\nappliance:\n  node.role: repo\n   s3.secret.key: {SECRET}\n",
    # an unknown escape in a quoted secret: PyYAML quotes the character it found
    f'#cloud-config\nappliance:\n  s3.secret.key: "{SECRET}\\q"\n',
    # an alias and a tag spelled from the secret: PyYAML quotes them whole
    f"#cloud-config\nappliance:\n  s3.secret.key: *{SECRET}\n",
    f"#cloud-config\nappliance:\n  s3.secret.key: !{SECRET} x\n",
])
@pytest.mark.parametrize("encode", [lambda t: t.encode(), lambda t: gzip.compress(t.encode()),
                                    lambda t: _terraform_mime(("text/cloud-config", t))],
                         ids=["plain", "gzip", "mime"])
def test_a_yaml_error_names_line_and_column_but_no_byte_of_the_secret(
        tmp_path: Path, document: str, encode, caplog: pytest.LogCaptureFixture) -> None:
    paths = NodePaths(tmp_path)
    _user_data(paths, encode(document))
    with pytest.raises(BootstrapError) as caught:
        bootstrap(paths)
    message = str(caught.value)
    assert "not valid YAML: line " in message and ", column " in message
    said = message + caplog.text
    # No piece of the secret's line: not the value, nor any 4 characters of it.
    assert not [SECRET[i:i + 4] for i in range(len(SECRET) - 3) if SECRET[i:i + 4] in said], said
    assert not paths.config_file.exists()


def test_a_yaml_error_in_the_config_file_quotes_nothing_either(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(f"s3.access.key: AKIA\n s3.secret.key: {SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        bootstrap(paths)
    assert "line 2, column" in str(caught.value) and SECRET[:8] not in str(caught.value)


def test_unreadable_store_credentials_are_reported_without_their_lines(tmp_path: Path) -> None:
    from appliance.config import build
    from appliance.errors import ApplianceError
    from appliance.objectstore import credentials_path, ensure_credentials

    paths = NodePaths(tmp_path)
    path = credentials_path(paths)
    path.parent.mkdir(parents=True)
    path.write_text(f"s3.access.key: AKIA\n s3.secret.key: {SECRET}\n")
    with pytest.raises(ApplianceError) as caught:
        ensure_credentials(build({"node.role": "repo"}), paths)
    assert "line 2, column" in str(caught.value) and SECRET[:8] not in str(caught.value)


def test_cluster_members_in_a_broken_config_file_quote_no_line(tmp_path: Path) -> None:
    from appliance.cluster import _set_members_in_file

    path = tmp_path / "appliance.yaml"
    path.write_text(f"s3.access.key: AKIA\n s3.secret.key: {SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        _set_members_in_file(path, ["127.0.0.2"])
    assert "line 2, column" in str(caught.value) and SECRET[:8] not in str(caught.value)


def test_cluster_members_are_set_in_the_files_own_spelling_keeping_its_comments(tmp_path: Path) -> None:
    from appliance.cluster import _set_members_in_file

    path = tmp_path / "appliance.yaml"
    path.write_text("# the fleet's node\ncluster:\n  members: 127.0.0.2  # first two\nhttp.port: 8081\n")
    path.chmod(0o640)
    _set_members_in_file(path, ["127.0.0.2", "127.0.0.3"])
    lines = path.read_text().splitlines()   # ruamel may move an end-of-line comment's column
    assert lines[:2] == ["# the fleet's node", "cluster:"] and lines[3] == "http.port: 8081"
    assert lines[2].split() == ["members:", "127.0.0.2,127.0.0.3", "#", "first", "two"]
    assert path.stat().st_mode & 0o777 == 0o640
