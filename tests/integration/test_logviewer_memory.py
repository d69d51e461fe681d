"""Tail, search, page, table and download of a 2 GB log keep the logviewer under 100 MB.

The logviewer runs as it does on a node: ``python -m logviewer`` under waitress, in its own
process. Its peak resident set (``VmHWM`` in /proc/<pid>/status, the kernel's high-water mark
of RSS over the whole life of the process, so no spike between two samples can hide) is read
after every operation on a 2 GiB access log of real JSON lines. Page cache does not count
toward RSS, and the app never mmaps a log, so the number is what the app itself holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import requests

from appliance.config import NodePaths
from logviewer import credentials
from tests.conftest import Processes, free_port, wait_until

pytestmark = pytest.mark.slow
SIZE = 2 * 1024 ** 3
LIMIT = 100 * 1024 * 1024


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


def entry(i: int, status: int = 200, request_id: str = "r") -> str:
    return json.dumps({"time": "2025-03-01T10:00:00.000Z", "listener": "rest", "method": "POST",
                       "path": "/v1/models/half_plus_two:predict", "status": status,
                       "duration_ms": i % 9, "upstream_host": "10.0.0.1:8501",
                       "request_id": request_id}) + "\n"


def make_big_log(path: Path) -> tuple[int, int]:
    """2 GiB of access-log lines, written 4 MiB at a time (a few seconds), with markers."""
    block = "".join(entry(i) for i in range(20000)).encode()
    block = block[:block.rfind(b"\n", 0, 4 * 1024 * 1024) + 1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total = 0
    try:
        total += os.write(fd, entry(0, request_id="FIRST-MARKER").encode())
        while total < SIZE // 2:
            total += os.write(fd, block)
        middle = total
        total += os.write(fd, entry(0, 503, request_id="MIDDLE-MARKER").encode())
        while total < SIZE:
            total += os.write(fd, block)
        total += os.write(fd, entry(0, request_id="LAST-MARKER").encode())
    finally:
        os.close(fd)
    return total, middle


@pytest.fixture(scope="module")
def big_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodePaths, int, int]:
    root = tmp_path_factory.mktemp("bignode")
    if shutil.disk_usage(root).free < SIZE + 2 * 1024 ** 3:
        pytest.skip("needs 4 GiB free in the temp dir for a 2 GiB log")
    paths = NodePaths(root)
    paths.logs.mkdir(parents=True)
    size, middle = make_big_log(paths.logs / "access.log")
    yield paths, size, middle
    (paths.logs / "access.log").unlink()


def test_a_2gb_log_keeps_the_logviewer_under_100mb(big_node, processes: Processes, tmp_path: Path) -> None:
    paths, size, middle = big_node
    password = credentials.set_password(paths.etc)
    port = free_port()
    proc = processes.start([sys.executable, "-m", "logviewer", "--root", str(paths.root),
                            "--set", "node.address=127.0.0.1", "--set", f"logviewer.port={port}",
                            "--set", "enable.access.log=true"],
                           log=tmp_path / "logviewer.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).ok, 60, what="the logviewer")
    peaks = {"started": vm_hwm(proc.pid)}
    s = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{base}/login").text).group(1)
    assert s.post(f"{base}/login", data={"password": password, "csrf_token": token}).ok
    peaks["login (scrypt takes 32 MiB by design)"] = vm_hwm(proc.pid)

    assert "access.log" in s.get(f"{base}/logs").text
    peaks["list"] = vm_hwm(proc.pid)

    page = s.get(f"{base}/logs/view/access.log", timeout=60)
    assert page.ok and "LAST-MARKER" in page.text
    peaks["view end"] = vm_hwm(proc.pid)

    mid = s.get(f"{base}/api/logs/chunk/access.log", params={"offset": middle - 100,
                                                             "length": 1024 * 1024}).json()
    assert "MIDDLE-MARKER" in mid["text"] and len(mid["text"]) <= 1024 * 1024
    peaks["page by offset"] = vm_hwm(proc.pid)

    tail = s.get(f"{base}/api/logs/tail/access.log").json()
    with open(paths.logs / "access.log", "a") as handle:
        handle.write(entry(1, request_id="TAILED-LINE"))
    new = s.get(f"{base}/api/logs/tail/access.log", params={"after": tail["end"]}).json()
    assert "TAILED-LINE" in new["text"]
    peaks["tail"] = vm_hwm(proc.pid)

    # Search the whole file (continuing while the app's time budget cuts it into parts).
    found, start = [], 0
    for _ in range(50):
        html = s.get(f"{base}/logs/search/access.log", params={"q": "marker", "from": start},
                     timeout=120).text
        found += re.findall(r"(FIRST|MIDDLE|LAST)-<mark>MARKER</mark>", html, re.I)
        more = re.search(r'id="more" href="[^"]*from=(\d+)', html)
        if not more:
            break
        start = int(more.group(1))
    assert [f.upper() for f in found] == ["FIRST", "MIDDLE", "LAST"]
    peaks["search 2 GB"] = vm_hwm(proc.pid)

    table = s.get(f"{base}/access", params={"status": "5xx"}, timeout=300)
    assert table.ok and 'id="matched">1<' in table.text and "MIDDLE-MARKER" in table.text
    peaks["access table, rare filter"] = vm_hwm(proc.pid)

    part = s.get(f"{base}/logs/download/access.log", headers={"Range": f"bytes={size - 100}-"})
    assert part.status_code == 206 and b"TAILED-LINE" in part.content
    received = 0
    with s.get(f"{base}/logs/download/access.log", stream=True, timeout=300) as whole:
        for piece in whole.iter_content(1024 * 1024):
            received += len(piece)
    assert received == (paths.logs / "access.log").stat().st_size
    peaks["download 2 GB"] = vm_hwm(proc.pid)

    report = ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in peaks.items())
    print(f"logviewer peak RSS (VmHWM) after each step: {report}")
    assert proc.poll() is None
    assert max(peaks.values()) < LIMIT, report
