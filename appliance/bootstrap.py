"""Boot-time configuration: cloud-init user data (or a file) -> ``/etc/appliance/appliance.yaml``.

The VM image holds no config and no secret. On boot, the systemd unit runs ``appliance
bootstrap`` before ``appliance up``: it reads the appliance keys from the instance's user data
(or from files given with ``--from``), fills in the credentials the node must generate for
itself, validates the result with the same schema as every other command, and writes the config
atomically, mode 0600 when it holds a secret, owned by the user that owns ``/etc/appliance``
(the service user on an image).

It applies a given user data once: the sha256 of what it applied is kept in
``/var/lib/appliance/bootstrap.applied``, so a reboot changes nothing and an admin's later edits
of ``appliance.yaml`` survive; new user data (a new instance, edited user data) is merged over
the existing file. Generated credentials are never printed or logged, only the names of the
keys that were generated.

User data formats accepted (cloud-init keeps the raw user data, as the instance was given it,
in ``/var/lib/cloud/instance/user-data.txt``), read the way cloud-init reads them:

- ``#cloud-config`` YAML with an ``appliance:`` mapping (cloud-init's own modules keep working);
- a plain YAML mapping of appliance keys (nested or dotted, like ``appliance.yaml``), or one
  with a top-level ``appliance:`` mapping;
- any of these gzip-compressed (EC2 and Terraform's ``gzip = true``);
- MIME multipart (Terraform's ``cloudinit_config``, ``cloud-init devel make-mime``): every
  ``text/cloud-config`` part (or ``text/plain`` part starting ``#cloud-config``), merged in
  order, later parts winning; parts may be base64 or gzip encoded; other parts are ignored;
- anything else (shell scripts, empty) carries no appliance keys and is ignored.

A YAML error is reported by line, column and problem only: the offending line may be a secret,
and the message goes to the journal on every boot.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import os
import secrets
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from modelserver.atomic import write_atomic
from .config import KEYS, SCHEMA, NodePaths, build, flatten, read_yaml, yaml_problem
from .errors import ApplianceError, ConfigError

log = logging.getLogger(__name__)

#: Where cloud-init keeps the raw user data of the current instance (under the node root).
CLOUD_INIT_USER_DATA = "/var/lib/cloud/instance/user-data.txt"
STATE_FILE = "var/lib/appliance/bootstrap.applied"
HEADER = ("# Written by `appliance bootstrap` from {sources}.\n"
          "# Edit freely: bootstrap rewrites this file only when the user data changes.\n")

#: Largest user data accepted once decompressed (EC2 caps it at 16 KiB compressed; a bound keeps
#: a gzip bomb from filling the memory of a booting node).
MAX_USER_DATA = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"

_ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits


def _access_key() -> str:
    """20 characters, the shape of an S3 access key id (MinIO accepts 3..20 characters)."""
    return "".join(secrets.choice(_ACCESS_KEY_ALPHABET) for _ in range(20))


def _secret_key() -> str:
    """40 URL-safe characters (240 bits), the length of an S3 secret key."""
    return secrets.token_urlsafe(30)[:40]


#: key -> generator, for credentials a node makes for itself when its config does not give them.
#: A repo node runs the object store, so it owns that store's credentials; serving nodes must be
#: given the repository's keys (generating them would only produce keys nobody accepts).
GENERATED: dict[str, Any] = {"s3.access.key": _access_key, "s3.secret.key": _secret_key}


class BootstrapError(ApplianceError):
    """The user data or a ``--from`` file cannot become a valid config."""


@dataclass
class BootstrapResult:
    config_file: Path
    changed: bool
    sources: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    reason: str = ""

    def text(self) -> str:
        if not self.changed:
            return f"{self.config_file}: unchanged ({self.reason})"
        lines = [f"wrote {self.config_file} from {', '.join(self.sources) or 'the previous file'}"
                 f" (mode {self.config_file.stat().st_mode & 0o777:o})"]
        if self.generated:
            lines.append(f"generated {', '.join(self.generated)} (stored only in that file)")
        return "\n".join(lines)


def _gunzip(data: bytes, source: str) -> bytes:
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, MAX_USER_DATA + 1)
    except zlib.error as exc:
        raise BootstrapError(f"{source} is gzip data that does not decompress: {exc}") from None
    if len(out) > MAX_USER_DATA:
        raise BootstrapError(f"{source} decompresses to more than {MAX_USER_DATA >> 20} MiB")
    return out


def _is_mime(data: bytes) -> bool:
    """cloud-init's test (``user_data.convert_string``): a MIME header near the start."""
    head = data[:4096].lower()
    return b"mime-version:" in head or data.lstrip().lower().startswith(b"content-type:")


def user_data_documents(data: bytes, source: str) -> list[tuple[str, str, bool]]:
    """The documents of raw user data that may hold appliance keys: ``(label, text, is_cloud_config)``.

    Undoes gzip, splits MIME multipart into its cloud-config parts (what cloud-init merges);
    a single document is returned as is.
    """
    if data.startswith(GZIP_MAGIC):
        data = _gunzip(data, source)
    if not _is_mime(data):
        return [(source, data.decode("utf-8", "replace"), False)]
    documents = []
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    for number, part in enumerate(message.walk(), 1):
        if part.is_multipart():
            continue
        label = f"{source} (MIME part {number}, {part.get_content_type()})"
        payload = part.get_payload(decode=True) or b""
        if payload.startswith(GZIP_MAGIC):
            payload = _gunzip(payload, label)
        kind = part.get_content_type()
        if kind == "text/cloud-config" or (kind == "text/plain" and payload.lstrip().startswith(b"#cloud-config")):
            documents.append((label, payload.decode("utf-8", "replace"), True))
    if not documents:
        log.warning("%s is MIME multipart user data without a text/cloud-config part: no "
                    "appliance keys in it", source)
    return documents


def appliance_keys(text: str, source: str, cloud_config: bool = False) -> dict[str, Any] | None:
    """The flat appliance keys in one user data document; None when it holds none.

    ``cloud_config``: the document is cloud-config whatever its first line (a MIME part typed
    ``text/cloud-config``), so only its ``appliance:`` mapping is ours.
    """
    stripped = text.lstrip()
    if not stripped or stripped.startswith("#!"):
        return None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BootstrapError(f"{source} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(tree, Mapping):
        return None
    if "appliance" in tree:
        inner = tree["appliance"]
        if not isinstance(inner, Mapping):
            raise BootstrapError(f"{source}: `appliance:` must be a mapping of appliance keys")
        return flatten(inner)
    if cloud_config or stripped.startswith("#cloud-config"):
        return None     # cloud-init's own keys only
    return flatten(tree)


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def bootstrap(paths: NodePaths, from_files: list[Path] | None = None,
              user_data: Path | None = None, force: bool = False) -> BootstrapResult:
    """Merge user data and ``from_files`` over the existing config; generate missing credentials."""
    config_file = paths.config_file
    user_data = user_data if user_data is not None else paths.local(CLOUD_INIT_USER_DATA)
    inputs: list[tuple[str, dict[str, Any]]] = []
    raw: list[bytes] = []
    for path in from_files or []:
        values, problems = read_yaml(path)
        if problems:
            raise ConfigError(problems, str(path))
        inputs.append((str(path), values))
        raw.append(path.read_bytes())
    if user_data.exists():
        try:
            text = user_data.read_bytes()
        except OSError as exc:
            raise BootstrapError(f"cannot read the user data {user_data}: {exc.strerror} "
                                 "(bootstrap must run as root on an image)") from None
        merged: dict[str, Any] | None = None
        for label, document, cloud_config in user_data_documents(text, str(user_data)):
            keys = appliance_keys(document, label, cloud_config)
            if keys is not None:
                merged = {**(merged or {}), **keys}
        if merged is not None:
            inputs.append((str(user_data), merged))
            raw.append(text)

    state = paths.root / STATE_FILE
    digest = _digest(raw)
    if inputs and not force and config_file.exists() and _read_state(state) == digest:
        inputs = []     # applied on an earlier boot: the admin's later edits win
        reason = "this user data was already applied"
    else:
        reason = "no user data with appliance keys"

    values: dict[str, Any] = {}
    if config_file.exists():
        existing, problems = read_yaml(config_file)
        if problems:
            raise ConfigError(problems, str(config_file))
        values.update(existing)
    for _, new in inputs:
        values.update(new)

    generated = _generate_credentials(values)
    if not inputs and not generated:
        return BootstrapResult(config_file, False, reason=reason)
    try:
        build(values)
    except ConfigError as exc:
        where = ", ".join(source for source, _ in inputs) or str(config_file)
        raise ConfigError(exc.problems, where) from None

    holds_secret = any(KEYS[name].secret and values.get(name) for name in values if name in KEYS)
    mode = 0o600 if holds_secret else 0o640
    sources = [source for source, _ in inputs]
    body = HEADER.format(sources=", ".join(sources) or "the previous file") + _dump(values)
    write_atomic(config_file, body, mode)
    _chown_like_parent(config_file)
    if inputs:
        write_atomic(state, digest + "\n", 0o600)
        _chown_like_parent(state)
    for name in generated:
        log.info("generated %s for %s", name, config_file)
    return BootstrapResult(config_file, True, sources, generated)


def _generate_credentials(values: dict[str, Any]) -> list[str]:
    """Fill in the credentials of a repo node that its config leaves empty; return their names."""
    role = str(values.get("node.role", KEYS["node.role"].default)).strip().lower()
    if role != "repo":
        return []
    generated = []
    for name, make in GENERATED.items():
        if not str(values.get(name) or "").strip():
            values[name] = make()
            generated.append(name)
    return generated


def _dump(values: Mapping[str, Any]) -> str:
    """Dotted keys in schema order (unknown keys last, so validation can name them)."""
    order = {key.name: i for i, key in enumerate(SCHEMA)}
    ordered = dict(sorted(values.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False)


def _read_state(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _chown_like_parent(path: Path) -> None:
    """As root, hand the file to whoever owns its directory (the service user on an image)."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if (path.stat().st_uid, path.stat().st_gid) != (parent.st_uid, parent.st_gid):
        os.chown(path, parent.st_uid, parent.st_gid)
