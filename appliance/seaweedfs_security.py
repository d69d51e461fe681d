"""SeaweedFS's own security configuration for the repo node's ``weed server``.

Why: by default every port of ``weed server`` takes anyone. Its S3 gRPC port answers
``PutIdentity``/``RemoveIdentity`` from whoever connects (an unauthenticated call minted a working
S3 admin key), and its master, volume and filer APIs read and write every object. Loopback alone
does not close them: any local user of the repo node reaches 127.0.0.1. So on first start this
module writes a ``security.toml`` (SeaweedFS's scaffold, ``weed scaffold -config=security``) with:

- mutual TLS on every gRPC port (master, volume, filer, S3, and weed's own clients): a CA made
  here and one certificate for all components (weed does not check host names). The CA key is
  deleted once the certificate is signed, so no other certificate can ever be issued for it;
- JWT signing keys for the volume server's HTTP writes and reads (``jwt.signing``,
  ``jwt.signing.read``) and the filer's (``jwt.filer_signing``, ``...read``; the first also gates
  the filer's IAM gRPC service); the master and filer HTTP APIs are off (``-disableHttp``).

weed reads it through ``-config_dir`` (searched before ``.``, ``$HOME/.seaweedfs`` and
``/etc/seaweedfs``, so nothing global is used or touched). Everything lives in
``<root>/etc/appliance/seaweedfs`` (0700; keys and the toml 0600); keys never reach a log line.
A certificate weed cannot load makes it fall back to plain gRPC with only a warning, hence a
failure here is fatal and tests/integration/test_repo_node.py asserts the refusals.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from . import subp
from modelserver.atomic import write_atomic
from .config import NodePaths
from .errors import ApplianceError, ProcessError

log = logging.getLogger(__name__)

SECURITY_DIR = "etc/appliance/seaweedfs"
# The gRPC servers of `weed server -filer -s3`, and `client`: what weed dials them with.
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client")
_DAYS = 3650
_CERT_EXTENSIONS = ("basicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n")


def security_dir(paths: NodePaths) -> Path:
    return paths.root / SECURITY_DIR


def ensure_security(paths: NodePaths) -> Path:
    """The directory holding a complete ``security.toml`` and its certificates (made once)."""
    directory = security_dir(paths)
    toml = directory / "security.toml"
    if toml.exists() and all((directory / name).exists() for name in ("ca.crt", "node.crt", "node.key")):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _make_certificates(directory)
    write_atomic(toml, _security_toml(directory), mode=0o600)
    log.info("generated SeaweedFS's security configuration (mutual TLS on every gRPC port, JWT "
             "keys for its HTTP APIs) in %s (mode 0700)", directory)
    return directory


def _make_certificates(directory: Path) -> None:
    """A CA and one certificate it signs (EC P-256, 10 years); the CA key is removed after."""
    ca_key, csr, ext = directory / "ca.key", directory / "node.csr", directory / "node.ext"
    ext.write_text(_CERT_EXTENSIONS, encoding="utf-8")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    try:
        # The directory is 0700 before any key is written, and openssl writes keys 0600.
        _openssl(["req", "-x509", *new_key, "-keyout", str(ca_key), "-out", str(directory / "ca.crt"),
                  "-days", str(_DAYS), "-subj", "/CN=appliance repo node object store CA"])
        _openssl(["req", *new_key, "-keyout", str(directory / "node.key"), "-out", str(csr),
                  "-subj", "/CN=appliance-objectstore"])
        _openssl(["x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.crt"),
                  "-CAkey", str(ca_key), "-set_serial", str(secrets.randbits(63)),
                  "-days", str(_DAYS), "-extfile", str(ext), "-out", str(directory / "node.crt")])
    finally:
        for done in (ca_key, csr, ext):
            done.unlink(missing_ok=True)
    (directory / "node.key").chmod(0o600)


def _openssl(args: list[str]) -> None:
    try:
        subp.run(["openssl", *args], timeout=60)
    except ProcessError as exc:
        # openssl's output names files and errors, never key material.
        raise ApplianceError(f"could not make the object store's TLS certificates with openssl "
                             f"(install openssl): {exc}") from exc


def _security_toml(directory: Path) -> str:
    def key() -> str:
        return secrets.token_urlsafe(32)

    lines = ["# SeaweedFS security configuration of this repo node, generated on first start by",
             "# `appliance objectstore` (appliance/seaweedfs_security.py). Secret: keep it 0600.",
             "# Remove this directory to generate new keys and certificates at the next start.",
             "", "[jwt.signing]", f'key = "{key()}"', "expires_after_seconds = 10",
             "", "[jwt.signing.read]", f'key = "{key()}"', "expires_after_seconds = 60",
             "", "[jwt.filer_signing]", f'key = "{key()}"', "expires_after_seconds = 10",
             "", "[jwt.filer_signing.read]", f'key = "{key()}"', "expires_after_seconds = 60",
             "", "[access]", "ui = false",
             "", "[filer.expose_directory_metadata]", "enabled = false",
             "", "[grpc]", f'ca = "{directory / "ca.crt"}"']
    for component in GRPC_COMPONENTS:
        lines += ["", f"[grpc.{component}]", f'cert = "{directory / "node.crt"}"',
                  f'key = "{directory / "node.key"}"']
    return "\n".join(lines) + "\n"
