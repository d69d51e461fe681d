"""What the CLI says to a newcomer: booleans as the config file spells them, `sync --once` on a
local store is not a mistake, a forgotten --root points at the node that is running, and the
doctor names processes in full."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from appliance import portowners
from appliance.cli import COMMANDS, _parser, main
from appliance.config import NodePaths
from appliance.errors import ApplianceError
from appliance.node import Node


def test_every_command_has_one_handler() -> None:
    """The parser and the command table name the same commands: none parses but cannot run."""
    (subcommands,) = [a for a in _parser()._actions if a.dest == "command"]
    assert set(subcommands.choices) == set(COMMANDS)


def test_validate_config_prints_booleans_as_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--root", str(tmp_path), "validate-config", "--set", "enable.access.log=true"]) == 0
    out = capsys.readouterr().out
    assert "enable.access.log = true" in out and "logviewer.secure.cookies = false" in out
    assert " = True" not in out and " = False" not in out


def test_sync_once_on_a_local_store_says_there_is_nothing_to_sync(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--root", str(tmp_path), "sync", "--once"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("nothing to sync: s3.type is none, so models are served from local disk "
                          f"({tmp_path}/data/models) as they are")
    assert "error" not in err


def test_a_forgotten_root_points_at_the_running_node(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    running = NodePaths(tmp_path / ".node")
    running.run.mkdir(parents=True)
    (running.run / "supervisord.pid").write_text(f"{os.getpid()}\n")  # a live process
    with pytest.raises(ApplianceError) as caught:
        Node.from_run_dir(NodePaths(tmp_path / "elsewhere"))
    assert (f"a node is running under {tmp_path}/.node: pass `--root {tmp_path}/.node` or "
            f"`export APPLIANCE_ROOT={tmp_path}/.node`") in str(caught.value)


@pytest.mark.parametrize("argv,name", [
    (["/opt/appliance/venv/bin/python", "/opt/appliance/venv/bin/appliance-model-server", "--port=8500"],
     "appliance-model-server"),
    (["/usr/bin/python3", "-u", "-m", "logviewer", "--root", "/"], "python3 -m logviewer"),
    (["/opt/appliance/venv/bin/envoy", "-c", "envoy.yaml"], "envoy"),
    (["python3.11"], "python3.11"),
])
def test_doctor_names_programs_in_full(argv: list[str], name: str) -> None:
    assert portowners.program_name(argv) == name


def test_a_process_is_named_from_its_command_line_not_its_15_character_comm() -> None:
    assert portowners._command(Path(f"/proc/{os.getpid()}")) == portowners.program_name(sys.orig_argv)
