"""Certificates of the node: the cluster CA, each node's inter-node certificate, the edge pair.

Traffic between nodes goes from one node's Envoy to a peer's ``internode`` listener over mutual
TLS, and the only thing that makes a machine a member is a certificate signed by the cluster
CA (``cluster.ca.cert`` / ``cluster.ca.key``, generated once by ``appliance cluster-ca`` or
``dev-cluster up`` and handed to every node like the object store's keys). Each node issues its
own certificate from that CA when it starts, and again when it is missing, close to expiry,
signed by another CA or made for another address.

The edge (the public REST and gRPC ports, the logviewer) serves ``tls.cert.file`` /
``tls.key.file``, or a self-signed pair the node generates at its first start: a client pins it
by the SHA-256 fingerprint ``up`` and ``status`` print.

Keys are made and signed by the ``openssl`` command (the ``cryptography`` package is not a
dependency); a private key only ever goes to a 0600 file, never to a pipe, an argument or a log.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import secrets
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelserver.atomic import write_atomic
from . import subp
from .config import Config, NodePaths
from .errors import ApplianceError, ProcessError

CA_DAYS = 3650
NODE_DAYS = 397
#: A certificate closer than this to its end is renewed at the next start (and doctor says so).
RENEW_DAYS = 30
_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class CertificateError(ApplianceError):
    """A certificate or key could not be made or read."""


@dataclass(frozen=True)
class NodeCerts:
    """The files Envoy reads: the CA it trusts for peers, this node's certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class EdgeCerts:
    cert: Path
    key: Path
    self_signed: bool


def tls_dir(paths: NodePaths) -> Path:
    return paths.root / "var/lib/appliance/tls"


def node_files(paths: NodePaths) -> NodeCerts:
    d = tls_dir(paths)
    return NodeCerts(d / "cluster-ca.crt", d / "node.crt", d / "node.key")


def edge_files(config: Config, paths: NodePaths) -> EdgeCerts:
    if config.tls.cert_file:
        return EdgeCerts(paths.local(config.tls.cert_file), paths.local(config.tls.key_file), False)
    d = tls_dir(paths)
    return EdgeCerts(d / "edge.crt", d / "edge.key", True)


def _openssl(args: list[str], what: str) -> None:
    try:
        subp.run(["openssl", *args], timeout=60)
    except ProcessError as exc:
        # stderr names files and options, never key material (keys only go to files).
        raise CertificateError(f"{what}: {exc}") from None


def generate_ca() -> tuple[str, str]:
    """A new cluster CA: ``(cert PEM, key PEM)``, for ``cluster.ca.cert`` / ``cluster.ca.key``."""
    with tempfile.TemporaryDirectory(prefix="appliance-ca-") as tmp:
        cert, key = Path(tmp) / "ca.crt", Path(tmp) / "ca.key"
        _openssl(["req", "-x509", *_CURVE, "-keyout", str(key), "-out", str(cert),
                  "-days", str(CA_DAYS), "-subj", f"/CN=appliance cluster CA {secrets.token_hex(4)}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "generating the cluster CA")
        return cert.read_text(), key.read_text()


def issue(out: Path, key: Path, subject: str, sans: str, days: int,
          ca: tuple[Path, Path] | None) -> None:
    """A new key and a certificate for it, signed by ``ca`` (cert, key) or by itself."""
    signer = ["-CA", str(ca[0]), "-CAkey", str(ca[1])] if ca else []
    key.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".issue-", dir=key.parent) as tmp:
        new_cert, new_key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        _openssl(["req", "-x509", *_CURVE, *signer, "-keyout", str(new_key), "-out", str(new_cert),
                  "-days", str(days), "-subj", subject, "-addext", f"subjectAltName={sans}",
                  # A self-signed edge certificate is its own trust anchor (curl --cacert).
                  *(["-addext", "basicConstraints=critical,CA:FALSE"] if ca else []),
                  "-addext", "extendedKeyUsage=serverAuth,clientAuth"], f"issuing {out.name}")
        write_atomic(key, new_key.read_bytes(), 0o600)
        write_atomic(out, new_cert.read_bytes(), 0o644)


def _sans(address: str) -> str:
    """The node's names: its address (when it is one IP), its hostname, and loopback."""
    names = [f"DNS:{socket.gethostname()}", "DNS:localhost", "IP:127.0.0.1"]
    try:
        ipaddress.ip_address(address)
        if address not in ("0.0.0.0", "::", "127.0.0.1"):
            names.insert(0, f"IP:{address}")
    except ValueError:
        pass
    return ",".join(names)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CertInfo:
    """What a certificate file says (``problem`` set when it cannot be used)."""

    path: Path
    not_after: datetime.datetime | None = None
    subject: str = ""
    sans: str = ""
    fingerprint: str = ""
    problem: str = ""

    def days_left(self) -> float:
        if self.not_after is None:
            return 0.0
        now = datetime.datetime.now(datetime.timezone.utc)
        return (self.not_after - now).total_seconds() / 86400


def fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER, as ``AB:CD:...`` (what browsers and ``openssl x509
    -fingerprint -sha256`` show)."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


#: What openssl said is remembered: of a certificate by its file and content (:func:`_read_pem`),
#: of a chain by both contents and when (``_VERIFIED``). An agent applies every config edit
#: through :func:`ensure`, and two openssl runs per edit (0.1-0.3 s on a busy node) would delay a
#: membership change for nothing when no certificate changed. Small: a node has two or three.
CACHED = 16
_VERIFIED: dict[tuple[bytes, bytes], float] = {}
VERIFIED_SECONDS = 3600.0   # a verified chain is checked again after this (the CA may expire)


def read_cert(path: Path) -> CertInfo:
    try:
        pem = path.read_text()
    except OSError as exc:
        return CertInfo(path, problem=f"missing ({exc.strerror})")
    return _read_pem(path, pem)


@functools.lru_cache(maxsize=CACHED)
def _read_pem(path: Path, pem: str) -> CertInfo:
    try:
        out = subp.run(["openssl", "x509", "-noout", "-enddate", "-subject", "-ext",
                        "subjectAltName", "-in", str(path)], timeout=30).stdout
        fp = fingerprint(pem)
    except (ProcessError, ValueError):
        return CertInfo(path, problem="not a PEM certificate")
    fields = {}
    lines = out.splitlines()
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if sep and key in ("notAfter", "subject"):
            fields[key] = value.strip()
        if "Subject Alternative Name" in line and index + 1 < len(lines):
            fields["sans"] = lines[index + 1].strip()
    not_after = datetime.datetime.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=datetime.timezone.utc)
    return CertInfo(path, not_after, fields.get("subject", ""), fields.get("sans", ""), fp)


def signed_by(cert: Path, ca: Path) -> bool:
    """``cert`` chains to the CA certificate ``ca`` (and is valid now)."""
    try:
        key = (cert.read_bytes(), ca.read_bytes())
    except OSError:
        return False
    verified = _VERIFIED.get(key)
    if verified is not None and time.monotonic() - verified < VERIFIED_SECONDS:
        return True
    try:
        subp.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], timeout=30)
    except ProcessError:
        return False
    if len(_VERIFIED) >= CACHED:
        _VERIFIED.clear()
    _VERIFIED[key] = time.monotonic()
    return True


def node_cert_problem(config: Config, paths: NodePaths) -> str:
    """Why this node's inter-node certificate cannot be used as it is ('' when it can)."""
    files = node_files(paths)
    info = read_cert(files.cert)
    if info.problem:
        return f"{files.cert} {info.problem}"
    if not files.key.exists():
        return f"{files.key} is missing"
    if not signed_by(files.cert, files.ca):
        return f"{files.cert} is not signed by the cluster CA (cluster.ca.cert)"
    if info.days_left() < RENEW_DAYS:
        return f"{files.cert} expires in {info.days_left():.0f} days"
    address = config.node.address
    if address not in ("0.0.0.0", "::") and f"IP Address:{address}" not in info.sans:
        return f"{files.cert} was made for another address (not {address})"
    return ""


# ----------------------------------------------------------------------------- at start


def ensure(config: Config, paths: NodePaths) -> list[Path]:
    """Make the node's certificates what its config says; return the files that changed.

    Called before every render of a starting or changed node: the CA file follows
    ``cluster.ca.cert``; the node certificate is reissued when :func:`node_cert_problem` finds
    one; the self-signed edge pair is made once (a client may have pinned it).
    """
    done: list[Path] = []
    if config.cluster.ca_cert:
        files = node_files(paths)
        if write_atomic(files.ca, config.cluster.ca_cert.strip() + "\n", 0o644):
            done.append(files.ca)
        if node_cert_problem(config, paths):
            with tempfile.TemporaryDirectory(prefix=".ca-", dir=files.ca.parent) as tmp:
                ca_key = Path(tmp) / "ca.key"
                write_atomic(ca_key, config.cluster.ca_key.strip() + "\n", 0o600)
                issue(files.cert, files.key, f"/CN=appliance node {config.node.address}",
                       _sans(config.node.address), NODE_DAYS, (files.ca, ca_key))
            done.append(files.cert)
    edge = edge_files(config, paths)
    if edge.self_signed and not (edge.cert.exists() and edge.key.exists()):
        issue(edge.cert, edge.key, "/CN=appliance edge (self-signed)", _sans(config.node.address),
               CA_DAYS, None)
    # A certificate replaced in place (tls.cert.file renewed) is a change Envoy must be told of.
    try:
        served = hashlib.sha256(edge.cert.read_bytes() + edge.key.read_bytes()).hexdigest()
    except OSError as exc:
        raise CertificateError(f"tls.cert.file / tls.key.file: cannot read {exc.filename}: "
                               f"{exc.strerror}") from None
    if write_atomic(tls_dir(paths) / "edge.applied", served + "\n", 0o600):
        done.append(edge.cert)
    return done


# ----------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class CertReport:
    """One certificate as `status` and `doctor` tell it."""

    role: str          # "edge" or "inter-node"
    info: CertInfo
    problem: str       # '' when it is fine
    note: str          # self-signed, signed by the cluster CA, ...

    def as_dict(self) -> dict:
        return {"role": self.role, "file": str(self.info.path), "fingerprint_sha256": self.info.fingerprint,
                "not_after": self.info.not_after.isoformat() if self.info.not_after else None,
                "note": self.note, "problem": self.problem}

    def text(self) -> str:
        if self.info.problem:
            return f"{self.role} certificate {self.info.path}: {self.problem}"
        state = f"PROBLEM: {self.problem}" if self.problem else f"valid {self.info.days_left():.0f} more days"
        return (f"{self.role} certificate ({self.note}), {state}; SHA-256 fingerprint "
                f"{self.info.fingerprint}")


def reports(config: Config, paths: NodePaths) -> list[CertReport]:
    """The edge certificate and, with a cluster CA, this node's inter-node certificate."""
    edge = edge_files(config, paths)
    info = read_cert(edge.cert)
    problem = info.problem
    if not problem and info.days_left() < RENEW_DAYS:
        problem = f"expires in {info.days_left():.0f} days"
    out = [CertReport("edge", info, problem, "self-signed, made at the first start" if edge.self_signed
                      else "tls.cert.file")]
    if config.cluster.ca_cert:
        files = node_files(paths)
        out.append(CertReport("inter-node", read_cert(files.cert), node_cert_problem(config, paths),
                              "signed by the cluster CA"))
    return out
