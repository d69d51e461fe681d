"""The logviewer wired into the node: config keys, the supervisord program, the password CLI,
the first-start password of `appliance up`, and `python -m logviewer` serving under waitress."""

from __future__ import annotations

import configparser
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from appliance import render
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError
from appliance.node import Node
from logviewer import credentials
from tests.conftest import Processes, free_port, wait_until

CLI = [sys.executable, "-m", "appliance.cli"]


def test_logviewer_keys_and_their_defaults() -> None:
    config = load_config(None)
    assert config.logviewer.port == 8090 and config.logviewer.enabled
    assert config.logviewer.secure_cookies is False
    assert load_config(None, ["logviewer.port=9090"]).logviewer.port == 9090


@pytest.mark.parametrize("overrides,key", [
    (["logviewer.port=8080"], "http.port"),
    (["logviewer.port=9000"], "grpc.port"),
    (["logviewer.port=8001"], "envoy.admin.port"),
    (["serving.rest.port=8090"], "logviewer.port"),
])
def test_the_logviewer_port_takes_part_in_the_clash_check(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert "already used by" in str(err.value) and key in str(err.value)


def test_the_model_servers_ports_are_refused() -> None:
    with pytest.raises(ConfigError, match="reserved for the model server"):
        load_config(None, ["logviewer.port=8501"])


def _programs(conf: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(conf)
    return {s.split(":", 1)[1]: dict(parser[s]) for s in parser.sections() if s.startswith("program:")}


def test_supervisord_runs_the_logviewer_unless_disabled(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    files = {f.path.name: f.content for f in render.render_all(load_config(None), paths)}
    program = _programs(files["supervisord.conf"])["logviewer"]
    # It listens on a unix socket only: Envoy serves it on logviewer.port, behind the edge TLS.
    socket = render.logviewer_socket(paths)
    assert program["command"] == f"{sys.executable} -m logviewer --root {tmp_path} --unix-socket {socket}"
    assert f"pipe: {{path: {socket}}}" in files["cds.yaml"]
    assert "name: logviewer\n    address: {socket_address: {address: 0.0.0.0, port_value: 8090}}" in files["lds.yaml"]
    assert program["stdout_logfile"] == f"{paths.logs}/logviewer.log"
    assert program["autorestart"] == "true" and program["stopasgroup"] == "true"
    disabled = render.render_all(load_config(None, ["logviewer.enabled=false"]), paths)
    conf = next(f.content for f in disabled if f.path.name == "supervisord.conf")
    assert "logviewer" not in _programs(conf)
    assert "envoy" in _programs(conf)


def test_the_password_cli_prints_a_password_once_and_stores_its_hash(tmp_path: Path) -> None:
    etc = tmp_path / "etc/appliance"
    first = subprocess.run(CLI + ["--root", str(tmp_path), "logviewer-password", "--if-absent"],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    password = re.search(r"shown once\): (\S+)", first.stdout).group(1)
    assert credentials.check_password(etc, password)
    stored = (etc / "logviewer.passwd").read_text()
    assert password not in stored
    assert stat.S_IMODE((etc / "logviewer.passwd").stat().st_mode) == 0o600
    again = subprocess.run(CLI + ["--root", str(tmp_path), "logviewer-password", "--if-absent"],
                           capture_output=True, text=True, timeout=60)
    assert "already set" in again.stdout and password not in again.stdout
    new = subprocess.run(CLI + ["--root", str(tmp_path), "logviewer-password"],
                         capture_output=True, text=True, timeout=60)
    new_password = re.search(r"shown once\): (\S+)", new.stdout).group(1)
    assert new_password != password
    assert credentials.check_password(etc, new_password)
    assert not credentials.check_password(etc, password)


def test_first_start_on_a_terminal_prints_the_password_once(tmp_path: Path) -> None:
    node = Node(load_config(None, ["logviewer.port=18090"]), NodePaths(tmp_path))
    said: list[str] = []
    node.ensure_logviewer_password(said.append, terminal=True)
    password = re.search(r"shown once, only its hash is kept\): (\S+)", said[0]).group(1)
    assert "http://127.0.0.1:18090/" in said[1]
    assert credentials.check_password(tmp_path / "etc/appliance", password)
    assert not (tmp_path / "etc/appliance/logviewer.initial-password").exists()
    said.clear()
    node.ensure_logviewer_password(said.append, terminal=True)
    assert said == []
    off = Node(load_config(None, ["logviewer.enabled=false"]), NodePaths(tmp_path / "off"))
    off.ensure_logviewer_password(said.append)
    assert said == [] and not (tmp_path / "off/etc/appliance/logviewer.passwd").exists()


def test_first_start_without_a_terminal_leaves_the_password_in_a_private_file(
        tmp_path: Path) -> None:
    """Under systemd `up`'s stdout is the journal: the password must not be in it."""
    etc = tmp_path / "etc/appliance"
    node = Node(load_config(None, ["logviewer.port=18090"]), NodePaths(tmp_path))
    said: list[str] = []
    node.ensure_logviewer_password(said.append, terminal=False)
    initial = etc / "logviewer.initial-password"
    password = initial.read_text().strip()
    assert stat.S_IMODE(initial.stat().st_mode) == 0o600
    assert credentials.check_password(etc, password)
    assert not any(password in line for line in said), "the password reached the output"
    assert f"it is in {initial}" in said[0] and "mode 0600" in said[0]
    assert f"`sudo cat {initial}`" in said[1] and f"`sudo rm {initial}`" in said[1]
    assert "http://127.0.0.1:18090/" in said[2]
    # A new password on demand makes the initial one useless: its file goes away.
    new = subprocess.run(CLI + ["--root", str(tmp_path), "logviewer-password"],
                         capture_output=True, text=True, timeout=60)
    assert new.returncode == 0 and not initial.exists()
    assert not credentials.check_password(etc, password)


TTY_PROBE = """
import sys
from appliance.config import NodePaths, load_config
from appliance.node import Node
Node(load_config(None), NodePaths(__import__("pathlib").Path(sys.argv[1]))).ensure_logviewer_password()
"""


def test_the_default_follows_whether_stdout_is_a_terminal(tmp_path: Path) -> None:
    import os
    import pty

    piped = subprocess.run([sys.executable, "-c", TTY_PROBE, str(tmp_path / "piped")],
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    initial = tmp_path / "piped/etc/appliance/logviewer.initial-password"
    assert initial.read_text().strip() not in piped.stdout and "sudo rm" in piped.stdout
    leader, follower = pty.openpty()
    try:
        try:
            on_tty = subprocess.run([sys.executable, "-c", TTY_PROBE, str(tmp_path / "tty")],
                                    stdout=follower, stderr=subprocess.PIPE, timeout=60)
        finally:
            os.close(follower)
        assert on_tty.returncode == 0, on_tty.stderr
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:       # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
    found = re.search(rb"shown once, only its hash is kept\): (\S+)", out)
    assert found and credentials.check_password(tmp_path / "tty/etc/appliance",
                                                found.group(1).decode())
    assert not (tmp_path / "tty/etc/appliance/logviewer.initial-password").exists()


def test_python_m_logviewer_serves_on_the_node_address(tmp_path: Path, processes: Processes) -> None:
    paths = NodePaths(tmp_path)
    paths.logs.mkdir(parents=True)
    (paths.logs / "envoy.log").write_text("hello from envoy\n")
    password = credentials.set_password(paths.etc)
    port = free_port()
    processes.start([sys.executable, "-m", "logviewer", "--root", str(tmp_path),
                     "--set", "node.address=127.0.0.1", "--set", f"logviewer.port={port}"],
                    log=tmp_path / "out.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).ok, 60, what="logviewer")
    s = requests.Session()
    login = s.get(f"{base}/login")
    assert login.headers["Server"] == "appliance-logviewer"     # waitress, with our ident
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    resp = s.post(f"{base}/login", data={"password": password, "csrf_token": token})
    assert resp.ok and "envoy.log" in resp.text
    assert "hello from envoy" in s.get(f"{base}/logs/view/envoy.log").text
    # waitress passes the raw path through: traversal is refused by the app, not by luck.
    raw = requests.get(f"{base}/logs/download/..%2f..%2f..%2fetc%2fappliance%2flogviewer.passwd",
                       cookies=s.cookies)
    assert raw.status_code == 400 and b"scrypt" not in raw.content
    secret = (paths.etc / "logviewer.secret").stat()
    assert stat.S_IMODE(secret.st_mode) == 0o600
