"""`appliance doctor`'s checks, each against a deliberately broken node: the problem and its fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from appliance import doctor, portowners
from appliance.config import NodePaths, load_config
from tests.conftest import free_port


def _node(tmp_path: Path, text: str = "") -> NodePaths:
    paths = NodePaths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(text)
    return paths


def _problems(findings: list[doctor.Finding]) -> list[doctor.Finding]:
    return [f for f in findings if not f.ok]


def test_bad_config_reports_every_key_with_its_fix(tmp_path: Path) -> None:
    paths = _node(tmp_path, "http.port: 8501\nenable.access.log: maybe\nmodel.nmae: x\n")
    config, findings = doctor.check_config(paths, None, [])
    assert config is None
    messages = {f.message.split(":")[0]: f for f in _problems(findings)}
    assert set(messages) == {"http.port", "enable.access.log", "model.nmae"}
    assert "reserved for the model server" in messages["http.port"].message
    assert "did you mean model.name" in messages["model.nmae"].message
    for finding in messages.values():
        assert str(paths.config_file) in finding.fix
        assert "appliance validate-config" in finding.fix


def test_a_config_with_credentials_must_be_private(tmp_path: Path) -> None:
    paths = _node(tmp_path, "s3.access.key: abc\n")
    os.chmod(paths.config_file, 0o644)
    config, findings = doctor.check_config(paths, None, [])
    assert config is not None
    (problem,) = _problems(findings)
    assert "holds credentials but is mode 644" in problem.message
    assert problem.fix == f"chmod 600 {paths.config_file}"
    assert "abc" not in problem.message + problem.fix
    os.chmod(paths.config_file, 0o600)
    assert not _problems(doctor.check_config(paths, None, [])[1])


def test_a_port_taken_by_another_process_names_it_and_the_key_to_change(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        paths = _node(tmp_path, f"node.address: 127.0.0.1\nhttp.port: {port}\n")
        config = load_config(paths.config_file)
        assert [lst.pid for lst in portowners.listeners(port)] == [os.getpid()]
        problems = _problems(doctor.check_ports(config, paths))
    taken = [p for p in problems if p.message.startswith(f"http.port {port}")]
    assert len(taken) == 1, problems
    assert f"pid {os.getpid()}" in taken[0].message and "not by this node" in taken[0].message
    assert f"http.port: <port>` in {paths.config_file}" in taken[0].fix
    assert "--set http.port=<port>" in taken[0].fix


def test_free_ports_are_ok(tmp_path: Path) -> None:
    ports = {key: free_port() for key in ("http.port", "grpc.port", "envoy.admin.port",
                                          "serving.rest.port", "serving.grpc.port")}
    text = "node.address: 127.0.0.1\nlogviewer.enabled: false\n" if "logviewer.enabled" in \
        _schema_names() else "node.address: 127.0.0.1\n"
    paths = _node(tmp_path, text + "".join(f"{k}: {v}\n" for k, v in ports.items()))
    findings = doctor.check_ports(load_config(paths.config_file), paths)
    assert not _problems(findings)
    assert {f.message.split()[0] for f in findings} == set(ports)


def _schema_names() -> set[str]:
    from appliance.config import KEYS
    return set(KEYS)


def test_a_missing_local_repository_says_how_to_create_it(tmp_path: Path) -> None:
    paths = _node(tmp_path, "model.base.path: /srv/nowhere\nmodel.name: half\n")
    (problem,) = _problems(doctor.check_repository(paths, load_config(paths.config_file)))
    assert f"the model repository {tmp_path}/srv/nowhere" in problem.message
    assert "does not exist" in problem.message
    assert f"mkdir -p {tmp_path}/srv/nowhere" in problem.fix


def test_a_model_without_a_version_is_reported(tmp_path: Path) -> None:
    paths = _node(tmp_path, "model.name: half,other\n")
    (paths.models / "half" / "1").mkdir(parents=True)
    (paths.models / "other").mkdir(parents=True)
    findings = doctor.check_repository(paths, load_config(paths.config_file))
    (problem,) = _problems(findings)
    assert problem.message == f"model other has no version in {paths.models / 'other'}"
    assert "appliance builtin-models" in problem.fix
    assert any(f.ok and "model half: version(s) 1" in f.message for f in findings)


def test_an_unreachable_s3_endpoint_is_reported_with_the_address() -> None:
    port = free_port()   # nothing listens there
    finding = doctor.endpoint_reachable(f"http://127.0.0.1:{port}", timeout=5)
    assert not finding.ok
    assert f"127.0.0.1:{port}" in finding.message and "unreachable" in finding.message
    assert f"port {port} is open" in finding.fix


def test_a_reachable_endpoint_must_speak_http() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        # The kernel completes the handshake; the server never answers: not an HTTP endpoint.
        finding = doctor.endpoint_reachable(url, timeout=1)
    assert not finding.ok and "does not answer HTTP" in finding.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through mode bits; see test_doctor_cli")
def test_a_read_only_model_store_is_reported(tmp_path: Path) -> None:
    paths = _node(tmp_path, "")
    paths.models.mkdir(parents=True)
    paths.models.chmod(0o555)
    try:
        (problem,) = doctor.check_model_store(paths, load_config(paths.config_file))
    finally:
        paths.models.chmod(0o755)
    assert not problem.ok and "is not writable" in problem.message


def test_a_store_the_service_user_cannot_write_is_reported_to_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs the doctor on behalf of the service user")
    paths = _node(tmp_path, "")
    paths.models.mkdir(parents=True)
    os.chown(paths.config_file.parent, 65534, 65534)   # nobody: the "service user"
    user = doctor.service_user(paths)
    assert user
    (problem,) = doctor.check_model_store(paths, load_config(paths.config_file))
    assert problem.message.endswith(f"is not writable by the service user {user}")
    assert problem.fix == f"chown -R {user}: {paths.models}"


def test_low_disk_space_is_reported(tmp_path: Path) -> None:
    paths = _node(tmp_path, "")
    findings = doctor.check_disk(paths, load_config(paths.config_file), min_free=1 << 62)
    problems = _problems(findings)
    assert {p.message.split()[0] for p in problems} == {"logs", "run", "model"}
    assert all("free space" in p.fix for p in problems)


def test_an_endpoint_answering_http_is_reachable() -> None:
    """Any HTTP status counts (an S3 server answers 403 without credentials)."""
    import http.server
    import threading

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        finding = doctor.endpoint_reachable(f"http://127.0.0.1:{server.server_port}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert finding.ok and "answers" in finding.message
