"""The CPUs a process may use, which size Envoy's workers and the model server's threads: its
affinity (taskset, cpusets) and its cgroup's CPU quota, read for real where this machine allows."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modelserver.cpus import cpu_quota, usable_cpus
from tests.conftest import Processes, wait_until

PRINT = [sys.executable, "-c", "from modelserver.cpus import usable_cpus; print(usable_cpus())"]
V1_CPU = Path("/sys/fs/cgroup/cpu")


def test_a_process_pinned_to_one_cpu_may_use_one() -> None:
    pinned = subprocess.run(["taskset", "-c", "0", *PRINT], capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"
    assert usable_cpus() == min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))


def test_another_process_is_read_by_its_pid(processes: Processes) -> None:
    proc = processes.start(["taskset", "-c", "0", "sleep", "30"])
    try:   # taskset pins itself, then becomes sleep
        wait_until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep", timeout=10,
                   what="taskset to exec sleep")
        assert usable_cpus(proc.pid) == 1
    finally:
        processes.stop(proc)


@pytest.fixture
def v1_group() -> Path:
    """A cgroup v1 CPU group of this test's own, removed after it."""
    if not (V1_CPU / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu controller at /sys/fs/cgroup/cpu on this machine (the v2 layout is "
                    "checked on files below)")
    group = V1_CPU / f"appliance-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here ({exc.strerror}): needs root and a writable cgroup fs")
    try:
        moved = subprocess.run(["sh", "-c", f'echo $$ > {group / "cgroup.procs"}'], capture_output=True, text=True)
        if moved.returncode != 0:
            pytest.skip(f"cannot move a process into a cgroup here: {moved.stderr.strip()}")
        yield group
    finally:
        group.rmdir()


@pytest.mark.parametrize("quota_us, expected", [(50_000, 1), (100_000, 1), (150_000, 2)])
def test_a_process_under_a_cpu_quota_may_use_the_quota_rounded_up(v1_group: Path, quota_us: int,
                                                                   expected: int) -> None:
    try:
        (v1_group / "cpu.cfs_period_us").write_text("100000")
        (v1_group / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError as exc:     # a parent group's tighter quota, a read-only controller
        pytest.skip(f"cannot set a CPU quota here ({exc.strerror})")
    # the child moves itself into the group before Python starts
    script = f'echo $$ > {v1_group / "cgroup.procs"} && exec "$@"'
    inside = subprocess.run(["sh", "-c", script, "sh", *PRINT], capture_output=True, text=True, check=True)
    assert inside.stdout.strip() == str(min(expected, os.cpu_count() or 1))


def test_cgroup_v2_quotas_are_read_up_the_tree(tmp_path: Path) -> None:
    # This machine's cgroup v2 hierarchy holds no cpu controller, so the v2 files are laid out here.
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    leaf = tmp_path / "system.slice" / "appliance.service"
    leaf.mkdir(parents=True)
    (tmp_path / "system.slice" / "cpu.max").write_text("300000 100000\n")
    (leaf / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/system.slice/appliance.service\n")
    assert cpu_quota(tmp_path, proc) == 3.0
    (leaf / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path, proc) == 1.5
    (leaf / "cpu.max").write_text("max 100000\n")
    (tmp_path / "system.slice" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, proc) is None
    assert cpu_quota(tmp_path, tmp_path / "no-such-file") is None
