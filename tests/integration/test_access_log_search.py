"""500 MB of access log: one request finds one request id or a rare model, with counts, and the
logviewer process stays under 100 MB.

The logviewer runs as on a node (``python -m logviewer`` under waitress, its own process). 500
MB of Envoy-shaped JSON lines (the fields lds.yaml.j2 logs) are appended to a small log in 4 MiB
blocks, each block a later minute; the searches go through the ``/access`` page, each one
request. Peak resident memory is the kernel's high-water mark (``VmHWM``), read after every
search, so no spike between two samples can hide. The log is deleted afterwards.
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
from tests.integration.test_logviewer_memory import vm_hwm

pytestmark = pytest.mark.slow
SIZE = 500 * 1024 ** 2
LIMIT = 100 * 1024 * 1024
BLOCK = 4 * 1024 * 1024
NODES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def entry(i: int, minute: str = "10:00", model: str = "resnet", status: int = 200,
          request_id: str = "") -> str:
    """One line as Envoy writes it (``minute``: ``HH:MM``, the block's)."""
    return json.dumps({
        "time": f"2026-03-01T{minute}:{i % 60:02d}.{i % 1000:03d}Z", "listener": "rest",
        "method": "POST", "path": f"/v1/models/{model}:predict", "protocol": "HTTP/1.1",
        "status": status, "grpc_status": None, "flags": "URX" if status == 503 else "-",
        "duration_ms": i % 17, "upstream_ms": "1", "upstream_host": f"{NODES[i % 3]}:7443",
        "attempts": 1, "bytes_received": 30, "bytes_sent": 40, "client": "192.0.2.9",
        "request_id": request_id or f"{i:08x}-5c1e-4b7e-9d7a-{i:012x}", "model": None,
        "version": None, "key_name": None, "edge_node": "10.0.0.1"}, separators=(",", ":")) + "\n"


def append_big_log(path: Path) -> dict[str, int]:
    """~500 MB appended in 4 MiB blocks, one minute per block from 10:00 on, with a rare model
    and one request id near the start, and a 503 at the end; what was written, counted."""
    template = "".join(entry(i, minute="@@:@@", status=404 if i % 50 == 0 else 200)
                       for i in range(BLOCK // 420)).encode()
    template = template[:template.rfind(b"\n", 0, BLOCK) + 1]
    lines_per_block = template.count(b"\n")
    not_found_per_block = template.count(b'"status":404')
    counts = {"lines": 0, "404": 0, "blocks": 0}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        total = 0
        while total < SIZE:
            minute = 600 + counts["blocks"]       # 10:00, 10:01, ...
            block = template.replace(b"@@:@@", f"{minute // 60:02d}:{minute % 60:02d}".encode())
            total += os.write(fd, block)
            counts["lines"] += lines_per_block
            counts["404"] += not_found_per_block
            counts["blocks"] += 1
            if counts["blocks"] == 3:
                os.write(fd, (entry(1, "10:02", model="rare-model")
                              + entry(2, "10:02", request_id="ONE-REQUEST-7f3a")).encode())
                counts["lines"] += 2
        os.write(fd, entry(3, f"{(600 + counts['blocks']) // 60:02d}:{(600 + counts['blocks']) % 60:02d}",
                           status=503).encode())
        counts["lines"] += 1
    finally:
        os.close(fd)
    return counts


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bigaccess")
    if shutil.disk_usage(root).free < SIZE + 1024 ** 3:
        pytest.skip("needs 1.5 GiB free in the temp dir for a 500 MB log")
    paths = NodePaths(root)
    paths.logs.mkdir(parents=True)
    log = paths.logs / "access.log"
    log.write_text("".join(entry(i, "09:59") for i in range(100)))
    try:
        counts = append_big_log(log)
        counts["lines"] += 100
        yield paths, counts
    finally:
        log.unlink()


def matched(html: str) -> int:
    return int(re.search(r'id="matched">(\d+)<', html).group(1))


def rows(html: str) -> int:
    return len(re.findall(r'<tr class="s[0-9]xx">', html))


def test_one_request_finds_a_request_id_or_a_rare_model_in_500mb(node, processes: Processes,
                                                                   tmp_path: Path) -> None:
    paths, counts = node
    assert (paths.logs / "access.log").stat().st_size >= SIZE
    password = credentials.set_password(paths.etc)
    port = free_port()
    proc = processes.start([sys.executable, "-m", "logviewer", "--root", str(paths.root),
                            "--set", "node.address=127.0.0.1", "--set", f"logviewer.port={port}",
                            "--set", "enable.access.log=true"], log=tmp_path / "logviewer.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).ok, 60, what="the logviewer")
    s = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{base}/login").text).group(1)
    assert s.post(f"{base}/login", data={"password": password, "csrf_token": token}).ok
    peaks = {"logged in": vm_hwm(proc.pid)}
    took: dict[str, str] = {}

    def search(**params: str) -> str:
        resp = s.get(f"{base}/access", params=params, timeout=300)
        assert resp.ok, resp.text[:500]
        name = " ".join(f"{k}={v}" for k, v in params.items())
        peaks[name] = vm_hwm(proc.pid)
        took[name] = re.search(r"in ([\d.]+) s;", resp.text).group(1)
        return resp.text

    one = search(q="ONE-REQUEST-7f3a")
    assert matched(one) == 1 and one.count('<tr class="s2xx">') == 1 and "ONE-REQUEST-7f3a" in one

    rare = search(model="rare-model")
    assert matched(rare) == 1 and rows(rare) == 1
    assert re.search(r'>rare-model</a> <b>1</b>', rare)           # the counts by model
    assert re.search(r'>10\.0\.0\.2</a> <b>1</b>', rare)          # ... and by node

    # Every line counted, by status, in one request; the newest 200 shown.
    everything = search(all="1")
    assert matched(everything) == counts["lines"]
    assert re.search(rf'>404</a> <b>{counts["404"]}</b>', everything)
    assert rows(everything) == 200 and 'class="s5xx"' in everything

    # A time range is a byte range: two minutes of 500 MB, found by bisection.
    window = search(since="2026-03-01T10:05", until="2026-03-01T10:07", status="404")
    assert matched(window) == 2 * counts["404"] // counts["blocks"]

    # Envoy's response flags, explained on the page.
    failed = search(status="5xx")
    assert matched(failed) == 1 and "upstream retry limit exceeded" in failed

    report = ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in peaks.items())
    print(f"logviewer peak RSS (VmHWM) after each search of {counts['lines']} lines: {report}; "
          f"search seconds: {took}")
    assert proc.poll() is None
    assert max(peaks.values()) < LIMIT, report
