"""The access log search: time range by bisection, filters as byte patterns, counts."""

from __future__ import annotations

import json
from pathlib import Path

from logviewer import accesslog
from logviewer.accesslog import AccessFilter

LOCAL = "10.0.0.1"


def line(i: int, model: str = "resnet", status: int = 200, host: str = "10.0.0.2:7443",
         rid: str = "", compact: bool = True, **extra: object) -> str:
    entry = {"time": f"2026-01-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z", "listener": "rest",
             "method": "POST", "path": f"/v1/models/{model}:predict", "status": status,
             "flags": "-", "duration_ms": 3, "upstream_host": host, "request_id": rid or f"id-{i}",
             **extra}
    return json.dumps(entry, separators=(",", ":") if compact else (", ", ": ")) + "\n"


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "access.log"
    path.write_text("".join(lines))
    return path


def run(path: Path, flt: AccessFilter, **kw):
    with open(path, "rb") as handle:
        return accesslog.search(handle, path.stat().st_size, flt, LOCAL, **kw)


def test_filters_find_a_rare_model_and_one_request_id(tmp_path: Path) -> None:
    lines = [line(i, compact=i % 2 == 0) for i in range(3000)]
    lines[1234] = line(1234, model="rare")
    lines[2000] = line(2000, rid="needle-request", status=503, host="127.0.0.1:8501")
    path = write(tmp_path, lines)
    rare = run(path, AccessFilter(model="rare"))
    assert rare.matched == 1 and [e.model for e in rare.entries] == ["rare"]
    assert rare.entries[0].offset == sum(len(x) for x in lines[:1234])
    assert rare.by_model == {"rare": 1} and rare.complete
    one = run(path, AccessFilter(text="NEEDLE-request"))
    assert [e.request_id for e in one.entries] == ["needle-request"]
    # The loopback upstream is this node.
    assert one.entries[0].node == LOCAL and one.by_node == {LOCAL: 1}
    assert run(path, AccessFilter(node=LOCAL, status="5xx")).matched == 1
    assert run(path, AccessFilter(node=LOCAL, status="4xx")).matched == 0
    assert run(path, AccessFilter(status="error")).matched == 1
    assert run(path, AccessFilter(status="503", model="resnet")).matched == 1
    assert run(path, AccessFilter(model="resne")).matched == 0


def test_without_filters_everything_is_counted_and_the_newest_shown(tmp_path: Path) -> None:
    lines = [line(i, status=404 if i % 10 == 0 else 200, compact=i % 3 == 0) for i in range(2500)]
    path = write(tmp_path, lines)
    result = run(path, AccessFilter(), limit=50)
    assert result.matched == 2500 and result.by_status == {"200": 2250, "404": 250}
    assert result.by_model == {"resnet": 2500} and result.by_node == {"10.0.0.2": 2500}
    assert [e.request_id for e in result.entries] == [f"id-{i}" for i in range(2499, 2449, -1)]
    assert result.entries[0].offset == sum(len(x) for x in lines[:2499])


def test_small_blocks_give_the_same_answer(tmp_path: Path, monkeypatch) -> None:
    lines = [line(i, model="m" + str(i % 7)) for i in range(2000)]
    path = write(tmp_path, lines)
    whole = run(path, AccessFilter(model="m3"))
    monkeypatch.setattr(accesslog, "BLOCK", 1000)
    parts = run(path, AccessFilter(model="m3"))
    assert parts.matched == whole.matched == len([i for i in range(2000) if i % 7 == 3])
    assert [e.offset for e in parts.entries] == [e.offset for e in whole.entries]


def test_a_time_range_is_a_byte_range(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accesslog, "PROBE", 512)
    lines = [line(i) for i in range(3600)]
    path = write(tmp_path, lines)
    result = run(path, AccessFilter(since="2026-01-01T10:10:00", until="2026-01-01T10:20"))
    assert result.matched == 600
    assert result.entries[0].time.startswith("2026-01-01T10:19:59")
    assert result.entries[-1].time.startswith("2026-01-01T10:16:40")   # the newest 200
    assert result.start == sum(len(x) for x in lines[:600])
    assert run(path, AccessFilter(since="2027")).matched == 0
    assert run(path, AccessFilter(until="2025")).matched == 0
    assert run(path, AccessFilter(since="2025")).matched == 3600


def test_grpc_lines_take_model_and_version_from_the_model_servers_answer(tmp_path: Path) -> None:
    grpc = json.dumps({"time": "2026-01-01T10:00:00Z", "path": "/tensorflow.serving.PredictionService/Predict",
                       "status": 200, "model": "bert", "version": "3", "upstream_host": "10.0.0.3:7443"})
    rest = line(1, model="bert").replace(":predict", "/versions/2:predict")
    path = write(tmp_path, [grpc + "\n", rest])
    result = run(path, AccessFilter(model="bert"))
    assert [(e.model, e.version) for e in result.entries] == [("bert", "2"), ("bert", "3")]
    assert result.by_model == {"bert": 2}


def test_response_flags_are_explained() -> None:
    entry = accesslog.parse_line(line(1, flags="UH,URX").encode(), 0)
    assert entry.flag_list() == ["UH", "URX"]
    assert all(flag in accesslog.RESPONSE_FLAGS for flag in entry.flag_list())


def test_a_line_longer_than_a_block_is_read_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accesslog, "BLOCK", 256)
    lines = [line(1), line(2, model="x" * 700), line(3)]
    path = write(tmp_path, lines)
    result = run(path, AccessFilter(model="x" * 700))
    assert result.matched == 1 and result.entries[0].request_id == "id-2"
    assert run(path, AccessFilter()).matched == 3
