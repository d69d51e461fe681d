"""Logs cannot fill the disk: a node with log.max.total.mb=16 gets far more than 16 MiB of access
log written through its Envoy (long query strings, which the access log records), and its log directory stays under 16 MiB;
Envoy's access log is rotated by size and keeps being written after each rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import wait_until
from tests.integration.node_harness import NodeUnderTest, new_node, node_running

pytestmark = pytest.mark.slow
MODEL = "saved_model_half_plus_two_mkl"
BUDGET_MB = 16


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def node(builtin_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    node = new_node(tmp_path_factory.mktemp("lognode"), builtin_models, [MODEL])
    started = node.cli("up", "--timeout", "300", "--set", f"model.name={MODEL}",
                       "--set", "enable.access.log=true", "--set", f"log.max.total.mb={BUDGET_MB}",
                       "--set", "logviewer.enabled=false", *node.overrides)
    with node_running(node, started):
        yield node


def test_writing_past_the_log_budget_keeps_the_log_dir_under_it(node: NodeUnderTest) -> None:
    logs = node.root / "var/log/appliance"
    pad = "p" * 24000                        # ~24 KB an access log line
    written, peak = 0, 0
    with requests.Session() as session:
        for i in range(2500):                # ~60 MB of access log: ~4x the budget
            resp = session.get(f"{node.url}/v1/models/{MODEL}?pad={pad}", timeout=30)
            assert resp.status_code == 200
            written += len(pad)
            if i % 200 == 0:
                peak = max(peak, _dir_bytes(logs))
    peak = max(peak, _dir_bytes(logs))
    assert written > 3 * BUDGET_MB << 20
    assert peak < BUDGET_MB << 20, sorted((p.name, p.stat().st_size) for p in logs.iterdir())
    names = {p.name for p in logs.iterdir()}
    assert "access.log.1" in names and "access.log.4" not in names   # rotated; at most 3 kept
    # Envoy reopened the log after the rotations: new requests land in the current file. One
    # request's line may still go to access.log.1 (a rotation between Envoy's write and its
    # reopen), so a request per look; without a reopen no access.log would be written at all.
    def landed() -> bool:
        requests.get(f"{node.url}/v1/models/{MODEL}?pad=the-last-one", timeout=30)
        return "the-last-one" in (logs / "access.log").read_text()
    wait_until(landed, timeout=30, interval=1.0, what="a new request in access.log")
