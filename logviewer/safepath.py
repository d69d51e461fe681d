"""Resolve a user-supplied relative path inside one root, or refuse it.

Every file the logviewer serves goes through :func:`open_inside`. The rules are strict on
purpose (the names of logs and model files never need anything they forbid):

* the path is relative, at most 1024 characters, made of ``/``-separated parts;
* no empty, ``.`` or ``..`` part, no part starting with ``.`` (no hidden files);
* no NUL or other control character, no backslash, and no ``%`` at all: Werkzeug has already
  percent-decoded the URL once, so a ``%`` left over is a double-encoding attempt;
* after resolving every symlink (``os.path.realpath``) the file must still be inside the
  root: a symlink out of the root is refused exactly like ``..``;
* the final open uses ``O_NOFOLLOW`` (the last part cannot be swapped for a symlink between
  the check and the open) and ``O_NONBLOCK`` (a FIFO cannot hang a worker), and the opened
  descriptor must be a regular file.

:class:`BadPath` (malformed: 400) and :class:`NotInside` (missing, outside, not a regular
file: 404, so a probe learns nothing about what exists outside the roots) are both refusals.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

MAX_PATH = 1024


class Refused(Exception):
    status = 404


class BadPath(Refused):
    status = 400


class NotInside(Refused):
    status = 404


def check_relative(rel: str) -> list[str]:
    """The parts of a well-formed relative path, or :class:`BadPath`."""
    if not isinstance(rel, str) or not rel or len(rel) > MAX_PATH:
        raise BadPath("empty or too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        raise BadPath("control character")
    if "\\" in rel or "%" in rel:
        raise BadPath("backslash or encoded character")
    if rel.startswith(("/", "~")):
        raise BadPath("absolute path")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise BadPath("empty, dot or hidden path component")
    return parts


def real_root(root: Path) -> str:
    return os.path.realpath(root)


def is_inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def resolve(root: Path, rel: str) -> Path:
    """The real path of ``root/rel`` if it is inside ``root``; else :class:`Refused`."""
    parts = check_relative(rel)
    root_real = real_root(root)
    real = os.path.realpath(os.path.join(root_real, *parts))
    if not is_inside(real, root_real) or real == root_real:
        raise NotInside("outside the root")
    return Path(real)


def resolve_dir(root: Path, rel: str) -> Path:
    """Like :func:`resolve` for a directory (``rel`` may be empty for the root itself)."""
    if rel == "":
        return Path(real_root(root))
    path = resolve(root, rel)
    if not path.is_dir():
        raise NotInside("not a directory")
    return path


def open_inside(root: Path, rel: str) -> tuple[BinaryIO, os.stat_result, Path]:
    """Open ``root/rel`` read-only after :func:`resolve`; (file object, its stat, real path)."""
    path = resolve(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise NotInside("cannot open") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotInside("not a regular file")
        # Non-blocking mode only mattered for opening: reads of a regular file ignore it.
        return os.fdopen(fd, "rb", buffering=0), st, path
    except BaseException:
        os.close(fd)
        raise


def walk_files(root: Path, max_depth: int = 4, limit: int = 5000) -> list[tuple[str, os.stat_result]]:
    """Regular files under ``root`` as (relative path, stat), symlinks out of the root skipped."""
    root_real = real_root(root)
    found: list[tuple[str, os.stat_result]] = []

    def visit(directory: str, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= limit:
                return
            if entry.name.startswith(".") or "%" in entry.name or "\\" in entry.name:
                continue
            rel = f"{prefix}{entry.name}"
            try:
                if entry.is_symlink() and not is_inside(os.path.realpath(entry.path), root_real):
                    continue
                st = os.stat(entry.path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth < max_depth:
                    visit(entry.path, rel + "/", depth + 1)
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, st))

    visit(root_real, "", 1)
    return found
