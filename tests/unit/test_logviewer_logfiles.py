"""Byte-offset reading, tail, search and the access-log reader against naive reference versions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from logviewer import logfiles, safepath


def write_lines(path: Path, count: int, seed: int = 0) -> bytes:
    rnd = random.Random(seed)
    lines = [f"{i:06d} " + "x" * rnd.randint(0, 300) + ("NEEDLE" if i % 97 == 5 else "") + "\n"
             for i in range(count)]
    data = "".join(lines).encode()
    path.write_bytes(data)
    return data


def test_pages_forward_cover_the_file_exactly_once(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "a.log", 3000)
    with open(tmp_path / "a.log", "rb") as handle:
        pos, pieces = 0, []
        while pos < len(data):
            chunk = logfiles.read_forward(handle, len(data), pos, 4096)
            assert chunk.start == pos and chunk.end > pos
            pieces.append(chunk.text)
            pos = chunk.end
    assert "".join(pieces).encode() == data


def test_pages_backward_cover_the_file_exactly_once(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "a.log", 3000, seed=1)
    with open(tmp_path / "a.log", "rb") as handle:
        before, pieces = len(data), []
        while before > 0:
            chunk = logfiles.read_backward(handle, len(data), before, 4096)
            assert chunk.end == before and chunk.start < before
            pieces.append(chunk.text)
            before = chunk.start
    assert "".join(reversed(pieces)).encode() == data


def test_forward_from_mid_line_starts_at_the_next_line(tmp_path: Path) -> None:
    (tmp_path / "b.log").write_bytes(b"first line\nsecond line\nthird")
    with open(tmp_path / "b.log", "rb") as handle:
        chunk = logfiles.read_forward(handle, 28, 3, 100)
    assert chunk.text == "second line\nthird" and chunk.start == 11


def test_search_matches_a_naive_search_across_block_boundaries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logfiles, "SEARCH_BLOCK", 1000)
    data = write_lines(tmp_path / "c.log", 5000, seed=2)
    expected, offset = [], 0
    for line in data.split(b"\n")[:-1]:
        if b"needle" in line.lower():
            expected.append((offset, line.decode()))
        offset += len(line) + 1
    with open(tmp_path / "c.log", "rb") as handle:
        result = logfiles.search(handle, len(data), "needle", max_matches=10_000)
        assert [(m.offset, m.line) for m in result.matches] == expected
        assert result.complete and result.scanned_to == len(data)
        assert logfiles.search(handle, len(data), "needle", case_sensitive=True).matches == []
        first = logfiles.search(handle, len(data), "NEEDLE", max_matches=10)
        rest = logfiles.search(handle, len(data), "NEEDLE", start=first.scanned_to, max_matches=10_000)
    assert not first.complete
    assert [m.offset for m in first.matches + rest.matches] == [o for o, _ in expected]


@pytest.mark.parametrize("rel", ["", ".", "..", "a/../b", "/abs", "a//b", "a\\b", "a%2fb",
                                 "a\x00b", "a\nb", ".hidden", "a/.hidden", "~root"])
def test_check_relative_refuses(rel: str) -> None:
    with pytest.raises(safepath.BadPath):
        safepath.check_relative(rel)


def test_open_inside_refuses_symlinks_out_and_fifos(tmp_path: Path) -> None:
    import os

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    (root / "ok.log").write_text("ok")
    (root / "out.log").symlink_to(tmp_path / "secret")
    (root / "in.log").symlink_to("ok.log")
    os.mkfifo(root / "pipe")
    handle, st, real = safepath.open_inside(root, "in.log")
    with handle:
        assert handle.read() == b"ok" and real.name == "ok.log"
    for rel in ("out.log", "pipe", "missing"):
        with pytest.raises(safepath.NotInside):
            safepath.open_inside(root, rel)
