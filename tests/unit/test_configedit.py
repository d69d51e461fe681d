"""Editing the user's config file: comments, key order and spelling survive; the node's reader
reads back what was meant; a refused edit leaves the file byte-identical."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from appliance.config import flatten
from appliance.configedit import ConfigDocument, read_document, replace_checked, typed_value
from appliance.errors import ConfigError

DOTTED = """\
# my trial node
model.name: a,b   # served models
http.port: 8081
models.a.platform: onnx   # a is ONNX
models.a.batching.enabled: true

# logs
enable.access.log: true
"""

NESTED = """\
# my trial node
model:
    name: a, b   # served models
    base.path: /data/models
models:
    a:
        # batching for a
        batching:
            enabled: true  # on

    # b is the canary
    b:
        versions: latest:2
logviewer.enabled: false
cluster.members:
  - 127.0.0.2
  - 127.0.0.3
"""


def _flat(text: str) -> dict:
    """What the node reads (config.read_yaml's PyYAML + flatten)."""
    return flatten(yaml.safe_load(text) or {})


def _edited(text: str, *edits) -> str:
    doc = ConfigDocument(text)
    for edit in edits:
        edit(doc)
    return doc.text()


def test_an_edit_of_a_dotted_key_keeps_every_other_line() -> None:
    out = _edited(DOTTED, lambda d: d.set("model.name", "a,b,c"))
    assert out.splitlines()[1].startswith("model.name: a,b,c") and "# served models" in out
    assert [line for i, line in enumerate(out.splitlines()) if i != 1] == \
        [line for i, line in enumerate(DOTTED.splitlines()) if i != 1]


def test_an_edit_of_a_nested_key_keeps_comments_order_and_indentation() -> None:
    doc = ConfigDocument(NESTED)
    assert doc.get("model.name") == "a, b"
    doc.set("model.name", "a, b, c")
    out = doc.text()
    assert out == NESTED.replace("name: a, b   #", "name: a, b, c #")


def test_a_new_key_goes_beside_its_dotted_siblings() -> None:
    out = _edited(DOTTED, lambda d: d.set("models.a.batching.max_batch_size", 16),
                  lambda d: d.set("models.c.platform", "onnx"))
    lines = out.splitlines()
    assert lines[5:7] == ["models.c.platform: onnx", "models.a.batching.max_batch_size: 16"] or \
        lines[5] == "models.a.batching.max_batch_size: 16"
    assert "# logs" in out and out.index("# logs") > out.index("max_batch_size")
    assert out.index("# logs") > out.index("models.c.platform")
    assert "\n\n# logs\nenable.access.log: true\n" in out
    flat = _flat(out)
    assert flat["models.a.batching.max_batch_size"] == 16 and flat["models.c.platform"] == "onnx"
    assert flat["models.a.platform"] == "onnx" and flat["enable.access.log"] is True


def test_a_new_key_goes_nested_under_its_deepest_mapping() -> None:
    out = _edited(NESTED, lambda d: d.set("models.a.batching.max_batch_size", 16),
                  lambda d: d.set("models.b.labels.stable", 2))
    assert "            enabled: true  # on\n            max_batch_size: 16\n" in out
    assert "        versions: latest:2\n        labels:\n            stable: 2\n" in out
    assert "# b is the canary" in out and "# batching for a" in out
    flat = _flat(out)
    assert flat["models.a.batching.max_batch_size"] == 16 and flat["models.b.labels.stable"] == 2
    assert flat["cluster.members"] == ["127.0.0.2", "127.0.0.3"]


def test_a_file_without_the_section_gets_it_nested_at_the_end() -> None:
    out = _edited("# only comments\nhttp.port: 8081\n",
                  lambda d: d.set("models.m.batching.enabled", True))
    assert out == "# only comments\nhttp.port: 8081\nmodels:\n  m:\n    batching:\n      enabled: true\n"
    assert _edited("# nothing yet\n", lambda d: d.set("model.name", "m")) == \
        "# nothing yet\nmodel:\n  name: m\n"
    assert _edited("", lambda d: d.set("model.name", "m")) == "model:\n  name: m\n"


def test_deleting_a_model_section_in_any_spelling_keeps_the_comments_of_what_follows() -> None:
    out = _edited(DOTTED, lambda d: d.delete("models.a"))
    assert out == DOTTED.replace("models.a.platform: onnx   # a is ONNX\n", "").replace(
        "models.a.batching.enabled: true\n", "")
    nested = _edited(NESTED, lambda d: d.delete("models.a"))
    assert "batching" not in nested and "# b is the canary\n    b:\n" in nested
    assert _flat(nested)["models.b.versions"] == "latest:2"
    both = _edited(NESTED, lambda d: d.delete("models.a"), lambda d: d.delete("models.b"))
    assert "models:" not in both and "logviewer.enabled: false" in both
    assert both.startswith("# my trial node\nmodel:\n")


def test_unsetting_the_last_key_of_a_mapping_prunes_it() -> None:
    out = _edited(NESTED, lambda d: d.delete("models.a.batching.enabled"))
    assert "    a:" not in out and "batching" not in out
    assert "models.a" not in _flat(out) and not any(k.startswith("models.a") for k in _flat(out))
    assert ConfigDocument(NESTED).delete("models.zzz") is False


@pytest.mark.parametrize("text,value", [
    ("true", True), ("False", False), ("16", 16), ("-1", -1), ("onnx", "onnx"),
    ("latest:2", "latest:2"), ("4,8,16", "4,8,16"), ("on", "on"), ("1:30", "1:30"),
    ("yes", "yes"), ("0x10", "0x10"), ("1e3", "1e3"), ("null", "null"), ("", ""),
])
def test_values_read_back_as_written_by_the_nodes_reader(text: str, value) -> None:
    assert typed_value(text) == value
    out = _edited("http.port: 8081\n", lambda d: d.set("models.m.x", typed_value(text)))
    assert _flat(out)["models.m.x"] == value


def test_a_quoted_value_stays_quoted() -> None:
    assert _edited("model.name: 'a,b'\nx: \"y\"\n", lambda d: d.set("model.name", "a,b,c"),
                   lambda d: d.set("x", "z")) == "model.name: 'a,b,c'\nx: \"z\"\n"


def test_a_list_value_stays_a_list() -> None:
    doc = ConfigDocument("model:\n  name:\n    - a   # first\n    - b\n")
    names = doc.get("model.name")
    names.append("c")
    doc.set("model.name", names)
    assert doc.text() == "model:\n  name:\n    - a   # first\n    - b\n    - c\n"


def test_invalid_yaml_is_refused_without_quoting_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        ConfigDocument("s3.secret.key: 'hunter2\nmodel.name: [a\n", "/etc/x.yaml")
    assert "hunter2" not in str(err.value) and "not valid YAML" in str(err.value)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        ConfigDocument("- a\n- b\n")


def test_replace_checked_keeps_mode_and_leaves_a_refused_file_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "appliance.yaml"
    path.write_text(NESTED)
    os.chmod(path, 0o640)
    before = path.read_bytes()

    def refuse(candidate: Path) -> None:
        assert candidate.read_text() == "new: 1\n" and candidate != path
        assert stat.S_IMODE(candidate.stat().st_mode) == 0o640
        raise ConfigError([("models.a.batching.max_batch_size", "must be 1 or more")], str(path))

    with pytest.raises(ConfigError):
        replace_checked(path, "new: 1\n", refuse)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance.yaml"]   # no temp left
    assert replace_checked(path, "new: 1\n", lambda candidate: None) is True
    assert path.read_text() == "new: 1\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert replace_checked(path, "new: 1\n", lambda candidate: None) is False


def test_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "etc/appliance.yaml"
    assert read_document(path).text() == ""
    replace_checked(path, "model:\n  name: m\n", lambda candidate: None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
