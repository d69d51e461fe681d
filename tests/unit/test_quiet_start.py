"""A quiet start: TensorFlow's start-up false alarms dropped at the file descriptor (and only
them), and ``appliance-model-server --help`` answering with its usage."""

from __future__ import annotations

import os

import pytest

from modelserver import tfdevices
from modelserver.main import main as model_server_main

CUINIT = (b"E0000 00:00:1796145686.595867    4304 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
INFO = b"I0000 00:00:1796145684.374418    4304 cudart_stub.cc:31] Could not find cuda drivers\n"
ERROR = b"E0000 00:00:1796145684.374418    4304 loader.cc:1] a real error\n"
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"


def test_stderr_without_drops_only_the_selected_lines(capfd: pytest.CaptureFixture) -> None:
    with tfdevices.stderr_without(lambda line: b"drop" in line):
        os.write(2, b"keep 1\ndrop this\n")
        os.write(2, b"keep 2, no newline at the end")
    os.write(2, b"\nafter: drop is not filtered any more\n")
    assert capfd.readouterr().err == ("keep 1\nkeep 2, no newline at the end\n"
                                      "after: drop is not filtered any more\n")


@pytest.mark.parametrize("level,dropped", [
    ("0", [CUINIT]),
    ("1", [CUINIT, INFO, BANNER]),
    ("2", [CUINIT, INFO, BANNER]),
    ("3", [CUINIT, INFO, ERROR, BANNER]),
])
def test_start_up_noise_follows_tf_cpp_min_log_level_and_always_drops_cuinit(
        monkeypatch: pytest.MonkeyPatch, level: str, dropped: list[bytes]) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    lines = [CUINIT, INFO, ERROR, BANNER, b"Traceback (most recent call last):\n"]
    assert [line for line in lines if tfdevices._start_up_noise(line)] == dropped


def test_model_server_help_exits_0_with_its_usage(capsys: pytest.CaptureFixture) -> None:
    assert model_server_main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: appliance-model-server") and "--model_config_file" in out
    assert "unknown argument" not in out + err
