"""Certificates (appliance/pki.py, with the real openssl): a node's inter-node certificate is
issued from the cluster CA and issued again when it would not do; `doctor` says what is wrong
with one (missing, due soon, another CA's, another address's); the edge pair is made once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from appliance import pki
from appliance.config import NodePaths, load_config
from appliance.doctor import check_certificates


def _config(ca: dict[str, str], *overrides: str):
    return load_config(None, ["node.address=127.0.11.21", *(f"{k}={v}" for k, v in ca.items()),
                              *overrides])


def test_a_node_issues_its_certificate_from_the_cluster_ca_once(tmp_path: Path, cluster_ca: dict[str, str],
                                                                monkeypatch) -> None:
    paths, config = NodePaths(tmp_path), _config(cluster_ca)
    files = pki.node_files(paths)
    edge = pki.edge_files(config, paths)
    assert set(pki.ensure(config, paths)) == {files.ca, files.cert, edge.cert}
    assert files.key.stat().st_mode & 0o777 == 0o600 and edge.key.stat().st_mode & 0o777 == 0o600
    assert pki.signed_by(files.cert, files.ca)
    assert "IP Address:127.0.11.21" in pki.read_cert(files.cert).sans
    assert pki.ensure(config, paths) == []                      # nothing to do the second time
    # ... and no openssl run for it: every config edit an agent applies goes through ensure().
    runs: list[str] = []
    real_run = pki.subp.run
    monkeypatch.setattr(pki.subp, "run", lambda argv, **kw: runs.append(" ".join(argv[:2])) or real_run(argv, **kw))
    assert pki.ensure(config, paths) == [] and runs == []
    openssl = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(edge.cert)],
                             capture_output=True, text=True, check=True).stdout
    assert openssl.strip().split("=", 1)[1] == pki.read_cert(edge.cert).fingerprint
    assert all(f.ok for f in check_certificates(config, paths))
    # Another address: a new certificate; the self-signed edge pair is kept (clients pinned it).
    fingerprint = pki.read_cert(edge.cert).fingerprint
    moved = load_config(None, ["node.address=127.0.11.22", *(f"{k}={v}" for k, v in cluster_ca.items())])
    assert pki.node_cert_problem(moved, paths).endswith("was made for another address (not 127.0.11.22)")
    assert pki.ensure(moved, paths) == [files.cert]
    assert pki.read_cert(edge.cert).fingerprint == fingerprint


def test_doctor_names_a_certificate_of_another_ca_and_one_due_soon(
        tmp_path: Path, cluster_ca: dict[str, str]) -> None:
    paths, config = NodePaths(tmp_path), _config(cluster_ca)
    pki.ensure(config, paths)
    files = pki.node_files(paths)
    other = tmp_path / "other"
    other.mkdir()
    cert, key = pki.generate_ca()
    (other / "ca.crt").write_text(cert)
    (other / "ca.key").write_text(key)
    pki.issue(files.cert, files.key, "/CN=x", "IP:127.0.11.21", 300, (other / "ca.crt", other / "ca.key"))
    (problem,) = [f for f in check_certificates(config, paths) if not f.ok]
    assert "not signed by the cluster CA" in problem.message and "appliance up" in problem.fix

    ca_key = tmp_path / "ca.key"
    ca_key.write_text(cluster_ca["cluster.ca.key"])
    pki.issue(files.cert, files.key, "/CN=x", "IP:127.0.11.21", 10, (files.ca, ca_key))
    (problem,) = [f for f in check_certificates(config, paths) if not f.ok]
    assert "expires in" in problem.message
    assert pki.ensure(config, paths) == [files.cert]            # `up` renews it
    assert pki.read_cert(files.cert).days_left() > 300

    files.cert.unlink()    # on a node that is not running: `up` makes it, nothing to fix
    assert any(f.ok and "made at the first `up`" in f.message for f in check_certificates(config, paths))
    assert "missing" in pki.node_cert_problem(config, paths)


def test_a_given_edge_certificate_is_served_and_its_renewal_noticed(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    cert, key = tmp_path / "etc/site.crt", tmp_path / "etc/site.key"
    pki.issue(cert, key, "/CN=site", "DNS:models.example.com", 90, None)
    config = load_config(None, ["tls.cert.file=/etc/site.crt", "tls.key.file=/etc/site.key"])
    assert pki.edge_files(config, paths) == pki.EdgeCerts(cert, key, False)
    assert pki.ensure(config, paths) == [cert]
    assert pki.ensure(config, paths) == []
    pki.issue(cert, key, "/CN=site", "DNS:models.example.com", 90, None)     # renewed in place
    assert pki.ensure(config, paths) == [cert]
