"""Which processes listen on a TCP port, and who is whose parent, read from ``/proc`` (``ss -ltnp``, ``ps``).

The doctor needs it to tell "port taken by this node's Envoy" from "port taken by something
else"; ``/proc/net/tcp{,6}`` gives the listening socket's inode and ``/proc/<pid>/fd`` links
name the process holding it. Without root only the caller's own processes are visible, which
the doctor says in its message.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str


@dataclass(frozen=True)
class Socket:
    """A listening TCP socket and the process holding it."""

    address: str
    port: int
    pid: int
    command: str


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    mapped = ipaddress.IPv6Address(words).ipv4_mapped   # gRPC binds 127.0.0.1 as ::ffff:127.0.0.1
    return str(mapped) if mapped else socket.inet_ntop(socket.AF_INET6, words)


def _listening() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket of the host."""
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            address, port = fields[1].rsplit(":", 1)
            found[fields[9]] = (_address(address), int(port, 16))
    return found


def _listening_inodes(port: int) -> set[str]:
    return {inode for inode, (_, bound) in _listening().items() if bound == port}


def sockets_of(pids: set[int]) -> list[Socket]:
    """Every listening TCP socket held by one of ``pids`` (what ``ss -ltnp`` shows for them)."""
    listening = _listening()
    found = []
    for pid in sorted(pids):
        try:
            fds = os.listdir(PROC / str(pid) / "fd")
        except OSError:
            continue
        command = _command(PROC / str(pid))
        for fd in fds:
            try:
                link = os.readlink(PROC / str(pid) / "fd" / fd)
            except OSError:
                continue
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else ""
            if inode in listening:
                found.append(Socket(*listening[inode], pid, command))
    return found


def listeners(port: int) -> list[Listener]:
    """Every visible process holding a listening socket on ``port`` (any address)."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not targets:
        return []
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) in targets:
                    found.append(Listener(int(entry.name), _command(entry)))
                    break
            except OSError:
                continue
    return found


def parents() -> dict[int, int]:
    """pid -> parent pid of every visible process."""
    table: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
            table[int(entry.name)] = int(stat.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(pids: set[int]) -> set[int]:
    """Every visible process below ``pids`` (children, grandchildren, ...)."""
    table = parents()
    found: set[int] = set()
    frontier = set(pids)
    while frontier:
        frontier = {pid for pid, parent in table.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def _command(proc_dir: Path) -> str:
    """The program's name from its command line (``comm`` is cut at 15 characters:
    ``appliance-model``); a Python program by its script or ``-m`` module."""
    try:
        argv = (proc_dir / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        return program_name([a for a in argv if a]) or (proc_dir / "comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "?"


def program_name(argv: list[str]) -> str:
    """``python3 -m logviewer --root /`` -> ``python3 -m logviewer``; ``python /venv/bin/x`` -> ``x``."""
    if not argv:
        return ""
    name = os.path.basename(argv[0])
    if not name.startswith("python"):
        return name
    rest = argv[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-m":
        rest = rest[1:]  # interpreter options such as -u, -B
    if len(rest) >= 2 and rest[0] == "-m":
        return f"{name} -m {rest[1]}"
    return os.path.basename(rest[0]) if rest else name


def user_name(uid: int) -> str:
    """The user named ``uid`` (by number when it has no passwd entry)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
