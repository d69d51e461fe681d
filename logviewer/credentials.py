"""The logviewer's secrets on disk: the login password's hash and the session-signing key.

Both live in ``<root>/etc/appliance/`` with mode 0600 and are created with ``O_EXCL`` so two
starters never race. The password itself is not kept: it is generated, handed once to whoever
generated it, and only its werkzeug hash (scrypt) is kept. ``appliance logviewer-password``
prints it (a human runs that); ``appliance up`` on first start prints it only to a terminal,
and otherwise (under systemd its stdout is the journal) leaves it in
``logviewer.initial-password`` (0600) for the operator to read and delete.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

PASSWORD_FILE = "logviewer.passwd"
SECRET_FILE = "logviewer.secret"
INITIAL_PASSWORD_FILE = "logviewer.initial-password"
# A dummy hash to compare against when no password file exists: login then costs the same time.
_DUMMY = generate_password_hash("never-a-password", method="pbkdf2:sha256:1000")


def password_file(etc: Path) -> Path:
    return etc / PASSWORD_FILE


def secret_file(etc: Path) -> Path:
    return etc / SECRET_FILE


def initial_password_file(etc: Path) -> Path:
    return etc / INITIAL_PASSWORD_FILE


def write_initial_password(etc: Path, password: str) -> Path:
    """Leave the first password for the operator in a 0600 file (not in a log); return its path."""
    path = initial_password_file(etc)
    _write_private(path, password + "\n", exclusive=False)
    return path


def new_password() -> str:
    """20 URL-safe characters (120 bits): easy to paste, impossible to guess."""
    return secrets.token_urlsafe(15)


def _write_private(path: Path, data: str, exclusive: bool) -> bool:
    """Write ``data`` to ``path`` with mode 0600; False if ``exclusive`` and it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(data)
        return True
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def set_password(etc: Path, password: str | None = None) -> str:
    """Store the hash of ``password`` (a new random one if None), replacing any; return it.

    A left-over initial password file is deleted: it no longer opens anything."""
    password = password or new_password()
    _write_private(password_file(etc), generate_password_hash(password) + "\n", exclusive=False)
    initial_password_file(etc).unlink(missing_ok=True)
    return password


def ensure_password(etc: Path) -> str | None:
    """Create a password if none exists; return it (to print once), or None if one existed."""
    if password_file(etc).exists():   # hashing one costs ~0.3 s, and every apply asks
        return None
    password = new_password()
    if _write_private(password_file(etc), generate_password_hash(password) + "\n", exclusive=True):
        return password
    return None


def read_hash(etc: Path) -> str | None:
    try:
        text = password_file(etc).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def check_password(etc: Path, password: str) -> bool:
    stored = read_hash(etc)
    if stored is None:
        check_password_hash(_DUMMY, password)
        return False
    try:
        return check_password_hash(stored, password)
    except (ValueError, TypeError):
        return False


def password_generation(etc: Path) -> str:
    """A short fingerprint of the stored hash: sessions carry it, so a new password logs
    everyone out."""
    stored = read_hash(etc) or ""
    return hashlib.sha256(stored.encode()).hexdigest()[:16]


def ensure_secret_key(etc: Path) -> bytes:
    """The session-signing key: 32 random bytes generated once, kept 0600."""
    path = secret_file(etc)
    _write_private(path, secrets.token_hex(32) + "\n", exclusive=True)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError(f"{path} is too short to be a session key; delete it to regenerate")
    return key.encode()
