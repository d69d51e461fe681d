"""`appliance models add|remove|set|push` on a node that is not running (no process started):
what they write into the config file, and what they refuse with the file left byte-identical.
The running node's side is tests/integration/test_models_commands.py."""

from __future__ import annotations

import re
import stat
import threading
from pathlib import Path

import pytest
import yaml

from appliance import cli
from appliance import runconfig
from appliance.config import NodePaths, load_config
from tests import onnxmodels

CONFIG = """\
# my trial node
model:
    name: half, other   # served models
http.port: 8081    # not 8080: taken on this VM
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node root whose store holds a SavedModel-looking `half`, `other` and an ONNX `onx`."""
    store = tmp_path / "data/models"
    for name in ("half", "other"):
        (store / name / "1").mkdir(parents=True)
        (store / name / "1/saved_model.pb").write_bytes(b"")
    onnxmodels.build(store, {"onx": {1: onnxmodels.half_plus(2.0)}})
    config = tmp_path / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG)
    config.chmod(0o640)
    return tmp_path


def run(root: Path, *args: str) -> int:
    return cli.main(["--root", str(root), *args])


def config_text(root: Path) -> str:
    return (root / "etc/appliance/appliance.yaml").read_text()


def test_add_appends_the_model_keeping_the_file_and_says_when_it_applies(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(root, "models", "add", "onx") == 0
    assert config_text(root) == CONFIG.replace("half, other   #", "half, other, onx #")
    assert stat.S_IMODE((root / "etc/appliance/appliance.yaml").stat().st_mode) == 0o640
    out = capsys.readouterr().out
    assert "added onx to model.name" in out and "applies at the next `appliance up`" in out
    config = load_config(root / "etc/appliance/appliance.yaml")
    assert config.model.names == ("half", "other", "onx") and config.model.default == "half"


@pytest.mark.parametrize("args,message", [
    (("models", "add", "nothere"), "no version of model nothere in"),
    (("models", "add", "half"), "half is already in model.name"),
    (("models", "add", "bad:name"), "model.name: model name 'bad:name' may not contain"),
    (("models", "remove", "nothere"), "nothere is not in model.name (half, other)"),
    (("models", "set", "nothere", "platform=onnx"), "`appliance models add nothere` adds it"),
    (("models", "set", "half", "models.half.platform=onnx"), "KEY is relative to models.half"),
    (("models", "set", "half", "platform"), "expected KEY=VALUE"),
    (("models", "set", "half", "batching.max_batch_size=-1"), "models.half.batching.max_batch_size"),
    (("models", "set", "half", "batchin.enabled=true"), "models.half.batchin.enabled"),
    (("models", "set", "half", "platform=onnx"),
     "is a model of platform tensorflow, but models.half.platform is onnx"),
    (("models", "add", "onx", "platform=tensorflow"),
     "is a model of platform onnx, but models.onx.platform is tensorflow"),
])
def test_a_refused_edit_exits_1_with_the_key_and_leaves_the_file_byte_identical(
        root: Path, capsys: pytest.CaptureFixture, args: tuple[str, ...], message: str) -> None:
    path = root / "etc/appliance/appliance.yaml"
    before = path.read_bytes()
    assert run(root, *args) == 1
    assert message in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["appliance.yaml"]


def test_removing_the_last_model_is_refused(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(root, "models", "remove", "other") == 0
    before = config_text(root)
    assert run(root, "models", "remove", "half") == 1
    assert "the only model in model.name" in capsys.readouterr().err
    assert config_text(root) == before


def test_removing_the_default_model_says_which_is_default_now(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(root, "models", "remove", "half") == 0
    assert "the default model is now other" in capsys.readouterr().out
    assert load_config(root / "etc/appliance/appliance.yaml").model.names == ("other",)
    assert "# served models" in config_text(root)


def test_a_file_without_model_name_gets_the_default_list_plus_the_model(root: Path) -> None:
    path = root / "etc/appliance/appliance.yaml"
    path.write_text("http.port: 8081\n")
    for name in ("saved_model_half_plus_two_mkl", "resnet"):
        (root / "data/models" / name / "1").mkdir(parents=True)
        (root / "data/models" / name / "1/saved_model.pb").write_bytes(b"")
    assert run(root, "models", "add", "onx") == 0
    names = yaml.safe_load(path.read_text())["model"]["name"]
    assert names == "saved_model_half_plus_two_mkl,resnet,onx"


def test_an_override_of_up_that_wins_over_the_file_is_refused(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    paths = NodePaths(root)
    overrides = ["model.name=half", "http.port=8081"]
    runconfig.publish(paths, load_config(paths.config_file, overrides), paths.config_file, overrides)
    before = config_text(root)
    assert run(root, "models", "add", "onx") == 1
    assert "started with `--set model.name...`" in capsys.readouterr().err
    assert config_text(root) == before


# The per-model keys (CONTRACT §1) --------------------------------------------------------------


def test_add_with_settings_and_set_and_unset_them(root: Path) -> None:
    assert run(root, "models", "add", "onx", "platform=onnx", "batching.enabled=true",
               "versions=latest:2") == 0
    tree = yaml.safe_load(config_text(root))
    assert tree["models"] == {"onx": {"platform": "onnx", "batching": {"enabled": True},
                                      "versions": "latest:2"}}
    assert run(root, "models", "set", "onx", "batching.max_batch_size=16", "labels.stable=1") == 0
    assert run(root, "models", "set", "onx", "batching.enabled=", "batching.max_batch_size=",
               "versions=") == 0
    tree = yaml.safe_load(config_text(root))
    assert tree["models"] == {"onx": {"platform": "onnx", "labels": {"stable": 1}}}
    assert run(root, "models", "remove", "onx") == 0
    assert "models" not in yaml.safe_load(config_text(root))
    # As it was, but for the spaces before a comment (its column follows the longest value).
    assert re.sub(r" +#", " #", config_text(root)) == re.sub(r" +#", " #", CONFIG)


def test_push_refuses_a_directory_that_holds_no_model(root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "export/3"
    empty.mkdir(parents=True)
    (empty / "README").write_text("not a model")
    assert run(root, "models", "push", str(empty), "--name", "half") == 1
    assert "holds no model: expected saved_model.pb" in capsys.readouterr().err
    assert not (root / "data/models/half/3").exists()


def test_push_takes_an_onnx_version_under_the_default_platform(root: Path, tmp_path: Path) -> None:
    onnxmodels.build(tmp_path / "export", {"onx": {7: onnxmodels.half_plus(1.0)}})
    assert run(root, "models", "push", str(tmp_path / "export/onx/7"), "--name", "onx") == 0
    assert (root / "data/models/onx/7/model.onnx").is_file()


def test_push_refuses_a_version_of_another_platform_than_configured(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = root / "etc/appliance/appliance.yaml"
    path.write_text(CONFIG + "models.half.platform: tensorflow\n")
    onnxmodels.build(tmp_path / "export", {"half": {2: onnxmodels.half_plus(1.0)}})
    assert run(root, "models", "push", str(tmp_path / "export/half"), "--name", "half") == 1
    err = capsys.readouterr().err
    assert "is a model of platform onnx, but models.half.platform is tensorflow" in err
    assert not (root / "data/models/half/2").exists()


def test_two_edits_at_once_both_reach_the_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each edit reads, changes and writes the file under the node's one-change lock: the
    first reader waits (a while) for the other to read as well, which only the lock prevents."""
    from appliance import models_edit

    onnxmodels.build(root / "data/models", {"onx2": {1: onnxmodels.half_plus(3.0)}})
    both, read = threading.Barrier(2), models_edit.read_document

    def slow_read(path: Path):
        doc = read(path)
        try:
            both.wait(timeout=2)   # without the lock the other edit reads the same file meanwhile
        except threading.BrokenBarrierError:
            pass
        return doc

    monkeypatch.setattr(models_edit, "read_document", slow_read)
    edits = [threading.Thread(target=run, args=(root, "models", "add", name)) for name in ("onx", "onx2")]
    for edit in edits:
        edit.start()
    for edit in edits:
        edit.join()
    assert sorted(load_config(root / "etc/appliance/appliance.yaml").model.names) == [
        "half", "onx", "onx2", "other"]
