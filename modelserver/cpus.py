"""How many CPUs this process may use: what every default thread and worker count is sized by.

``os.cpu_count()`` is the machine's CPUs. A process pinned to fewer (``taskset``, a cpuset
cgroup, a container's ``--cpuset-cpus``) or held to a CPU quota (cgroup ``cpu.max`` or
``cpu.cfs_quota_us``: a container's ``--cpus``) that sizes its pools by the machine runs more
threads than it has CPUs, and they take turns on the CPUs it has: two Envoy workers on one core
answered 42-106 % (median 70 %) of one worker's requests/s (bench/README.md, issue 15). So the
count here is the smallest of the machine's CPUs, the CPUs this process may run on, and its CPU
quota rounded up, as Go's runtime (1.25) and the JVM size their defaults.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(pid: int = 0, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process (or process ``pid``) may use, at least 1; see the module docstring."""
    count = os.cpu_count() or 1
    try:
        count = min(count, len(os.sched_getaffinity(pid)))
    except (AttributeError, OSError):    # no affinity on this platform, or no such process
        pass
    quota = cpu_quota(cgroup_root, Path(f"/proc/{pid or 'self'}/cgroup"))
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup or any cgroup above it, the tightest one;
    None when there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":           # cgroup v2: one hierarchy, cpu.max = "QUOTA PERIOD" or "max PERIOD"
            unified = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"
            quotas += _walk(unified, path, _v2_quota)
        elif "cpu" in controllers.split(","):   # cgroup v1: the cpu controller's CFS quota
            mount = next((cgroup_root / name for name in (controllers, "cpu,cpuacct", "cpu")
                          if (cgroup_root / name).is_dir()), None)
            if mount is not None:
                quotas += _walk(mount, path, _v1_quota)
    return min(quotas) if quotas else None


def _walk(mount: Path, path: str, read) -> list[float]:
    """Every quota from the cgroup at ``path`` up to the hierarchy's root (a parent's limit
    holds for its children too)."""
    found: list[float] = []
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    for depth in range(len(parts), -1, -1):
        quota = read(mount.joinpath(*parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(group: Path) -> float | None:
    try:
        quota, period = (group / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(group: Path) -> float | None:
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
