"""The unit tier's guard (tests/unit/conftest.py) refuses every way of starting a process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess

import pytest

from tests.unit.conftest import RULE, ProcessStartForbidden


def test_subprocess_run_fails_naming_the_rule() -> None:
    with pytest.raises(ProcessStartForbidden) as raised:
        subprocess.run(["true"])
    assert RULE in str(raised.value)
    assert "subprocess.Popen" in str(raised.value)


@pytest.mark.parametrize("start", [
    lambda: os.system("true"),
    lambda: os.fork(),
    lambda: os.forkpty(),
    lambda: os.posix_spawn("/bin/true", ["true"], {}),
    lambda: os.posix_spawnp("true", ["true"], {}),
    lambda: os.execv("/bin/true", ["true"]),
    lambda: os.popen("true"),
    lambda: subprocess.check_output(["true"]),
    lambda: multiprocessing.Process(target=print).start(),
    lambda: asyncio.run(asyncio.create_subprocess_exec("true")),
], ids=["os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp", "os.execv",
        "os.popen", "check_output", "multiprocessing", "asyncio"])
def test_every_way_of_starting_a_process_fails(start) -> None:
    with pytest.raises(ProcessStartForbidden, match="tests/unit must not start processes"):
        start()
