"""The VM image template: `packer validate` passes (offline, packer 1.6's built-in qemu and
amazon-ebs builders), `packer fmt -check` is clean, packer/ holds no secret, and the template's
provisioning really runs: its provisioner blocks, taken from the real template, are built with
packer's `null` builder against a real sshd on loopback, for every combination of the install
options, and the install and every sealing step are checked on a root prefix (a failing step
fails the build).

The provisioning runs against a temp root prefix (the template's `install_root` variable) and
the uploaded source's scripts/install-node.sh is a stand-in that records its arguments and has
the real script parse them: installing the appliance itself is tests/integration/test_install_node.py's
job (minutes, and --with-minio downloads), here what matters is what the template hands it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO, Processes, free_port, wait_until

PACKER = REPO / "packer"
TEMPLATE = PACKER / "appliance.pkr.hcl"

pytestmark = pytest.mark.skipif(shutil.which("packer") is None,
                                reason="packer is not installed (scripts/test.sh installs it)")


def _packer(*args: str, cwd: Path = PACKER) -> subprocess.CompletedProcess:
    # CHECKPOINT_DISABLE: no version check over the network.
    return subprocess.run(["packer", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(cwd)})


def test_packer_fmt_is_clean() -> None:
    result = _packer("fmt", "-check", "-diff", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_packer_validate_passes_with_the_build_inputs(tmp_path: Path) -> None:
    prepared = subprocess.run([str(PACKER / "build.sh"), "--prepare", str(tmp_path / "inputs")],
                              capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    var_flags = prepared.stdout.split()
    # The defaults validate offline: the base image's checksum is pinned in the template.
    result = _packer("validate", *var_flags, str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr
    # Both builders are in the template, and provisioning is the bare-metal install script.
    inspect = _packer("inspect", *var_flags, str(TEMPLATE))
    assert "qemu.appliance" in inspect.stdout and "amazon-ebs.appliance" in inspect.stdout
    assert 'script = "${path.root}/provision.sh"' in TEMPLATE.read_text()
    assert '"$src/scripts/install-node.sh" "${install_args[@]}"' in (PACKER / "provision.sh").read_text()


def test_validate_refuses_a_broken_template(tmp_path: Path) -> None:
    """The validate test above can fail: a template missing a required variable is refused."""
    broken = tmp_path / "broken.pkr.hcl"
    broken.write_text(TEMPLATE.read_text())
    result = _packer("validate", str(broken), cwd=tmp_path)
    assert result.returncode != 0
    assert "source_tarball" in result.stdout + result.stderr


def test_the_template_needs_no_plugin_download() -> None:
    assert not re.search(r"^\s*required_plugins\s*\{", TEMPLATE.read_text(), re.M)


SECRET_PATTERNS = [re.compile(p) for p in (
    r"AKIAIOSXODNN7EXAMPLE", r"wJalrXUtqFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", r"p12cHANgepwD",
    r"(?i)password\s*=", r"(?i)ssh_password", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(aws_)?secret_(access_)?key\s*=", r"(?i)access_key\s*=",
)]


def test_packer_dir_holds_no_secret() -> None:
    for path in sorted(PACKER.rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(text), f"{path}: matches {pattern.pattern}"


# ----------------------------------------------------------------------------- the provisioning, run

SSHD = Path("/usr/sbin/sshd")
TFS_SHA = "ab" * 32


def _top_level_blocks(text: str) -> list[str]:
    """The template's top-level blocks (variable, locals, source, build), each as its text."""
    blocks, depth, start = [], 0, None
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = text.rfind("\n", 0, i) + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start:i + 1])
    assert depth == 0, "unbalanced braces in the template"
    return blocks


def null_template(ssh_host: str, ssh_port: int, key: Path) -> str:
    """The real template with its qemu/amazon-ebs sources swapped for packer's `null` builder.

    Everything else (variables, locals, the build block's provisioners) is the template's own
    text, so the provisioning tested here is the one an image build runs.
    """
    blocks = [b for b in _top_level_blocks(TEMPLATE.read_text()) if not b.startswith("source ")]
    build = [b for b in blocks if b.startswith("build ")]
    assert len(build) == 1 and 'provisioner "shell"' in build[0]
    sources = re.compile(r"^  sources\s*=\s*\[[^\]]*\]", re.M)
    assert sources.search(build[0])
    blocks[blocks.index(build[0])] = sources.sub('  sources = ["source.null.appliance"]', build[0])
    blocks.append(f'''source "null" "appliance" {{
  communicator         = "ssh"
  ssh_host             = "{ssh_host}"
  ssh_port             = {ssh_port}
  ssh_username         = "root"
  ssh_private_key_file = "{key}"
  ssh_timeout          = "60s"
}}''')
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """A real OpenSSH server on a loopback address with its own host key and authorized_keys."""
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed (scripts/install.sh --with-test-tools)")
    if os.geteuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("the provisioning test logs in as root and runs the template's sudo")
    work = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    shutil.copy(work / "client_key.pub", work / "authorized_keys")
    host, port = "127.0.0.1", free_port()
    (work / "sshd_config").write_text(f"""ListenAddress {host}:{port}
HostKey {work}/host_key
AuthorizedKeysFile {work}/authorized_keys
PidFile {work}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)    # sshd's privilege separation dir
    procs = Processes()
    try:
        proc = procs.start([str(SSHD), "-D", "-e", "-f", str(work / "sshd_config")], log=work / "sshd.log")

        def listening() -> bool:
            assert proc.poll() is None, (work / "sshd.log").read_text()
            import socket
            with socket.create_connection((host, port), timeout=2):
                return True
        wait_until(listening, timeout=30, what="sshd listening")
        yield host, port, work / "client_key"
    finally:
        procs.stop_all()


STAND_IN = """#!/usr/bin/env bash
# Test stand-in for install-node.sh: records its arguments, has the real script parse them (it
# stops at --help after every option before it parsed), and leaves the venv's entry point.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=""
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --prefix ] && { j=$((i + 1)); prefix=${!j}; }; done
printf '%s\\n' "$@" > "$prefix/install-node.args"
bash "$here/install-node.real.sh" "$@" --help >/dev/null
FAIL_HERE
mkdir -p "$prefix/opt/appliance/current/bin"
printf '#!/bin/sh\\nexit 0\\n' > "$prefix/opt/appliance/current/bin/appliance"
chmod +x "$prefix/opt/appliance/current/bin/appliance"
"""


def _source_tarball(dest: Path, fail: bool = False) -> Path:
    scripts = dest.parent / f"{dest.name}.d" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "install-node.sh").write_text(STAND_IN.replace("FAIL_HERE", "exit 3" if fail else ""))
    (scripts / "install-node.sh").chmod(0o755)
    shutil.copy(REPO / "scripts/install-node.sh", scripts / "install-node.real.sh")
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(scripts, arcname="scripts")
    return dest


def _build_machine(root: Path) -> Path:
    """A root prefix holding what a build VM has and the seal must remove or reset."""
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "host private key\n",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host\n",
        "etc/ssh/ssh_host_rsa_key": "host private key\n",
        "etc/ssh/sshd_config": "# kept\n",
        "home/debian/.ssh/authorized_keys": "ssh-ed25519 AAAA appliance-packer-build\n",
        "root/.ssh/authorized_keys": "ssh-ed25519 AAAA appliance-packer-build\n",
        "var/lib/cloud/instance/user-data.txt": "#cloud-config\n",
        "var/lib/cloud/instances/build/sem/config_ssh": "",
        "var/lib/cloud/seed/nocloud/meta-data": "instance-id: x\n",
        "var/log/cloud-init.log": "log\n",
        "var/log/cloud-init-output.log": "log\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "tmp").mkdir()
    return root


def _packer_build(sshd: tuple[str, int, Path], work: Path, tarball: Path, root: Path,
                  options: dict[str, str]) -> subprocess.CompletedProcess:
    host, port, key = sshd
    work.mkdir(parents=True, exist_ok=True)
    (work / "null.pkr.hcl").write_text(null_template(host, port, key))
    shutil.copy(PACKER / "provision.sh", work / "provision.sh")      # ${path.root}/provision.sh
    flags = ["-var", f"source_tarball={tarball}", "-var", f"ssh_private_key_file={key}",
             "-var", f"seed_dir={work}", "-var", f"install_root={root}"]
    for name, value in options.items():
        flags += ["-var", f"{name}={value}"]
    return subprocess.run(["packer", "build", "-color=false", *flags, "null.pkr.hcl"], cwd=work,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "CHECKPOINT_DISABLE": "1",
                               "HOME": str(work)})


COMBINATIONS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("builtin, minio, tfs", COMBINATIONS,
                         ids=[f"builtin={b}-minio={m}-tfs={t}" for b, m, t in COMBINATIONS])
def test_the_provisioning_installs_and_seals_for_every_option_combination(
        sshd: tuple[str, int, Path], tmp_path: Path, builtin: bool, minio: bool, tfs: bool) -> None:
    # A space in the prefix: a value the provisioner's quoting must keep one word (it split the
    # install options once, and the build shipped a bare Debian).
    root = _build_machine(tmp_path / "build machine")
    tarball = _source_tarball(tmp_path / "appliance-src.tar.gz")
    options = {"with_builtin_models": str(builtin).lower(), "with_minio": str(minio).lower(),
               "with_tensorflow_model_server": str(tfs).lower(), "tensorflow_model_server_sha256": TFS_SHA}
    result = _packer_build(sshd, tmp_path / "packer", tarball, root, options)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]

    # The install ran with exactly the options asked for, each one a word of its own.
    expected = ["--prefix", str(root)]
    expected += ["--with-builtin-models"] if builtin else []
    expected += ["--with-minio"] if minio else []
    expected += ["--with-tensorflow-model-server", "--tensorflow-model-server-sha256", TFS_SHA] if tfs else []
    assert (root / "install-node.args").read_text().splitlines() == expected, output[-5000:]
    assert "[provision] install: done" in output

    # Every sealing step ran.
    for step in ("source and package cache", "cloud-init state and logs", "machine-id",
                 "authorized_keys", "SSH host keys"):
        assert f"[provision] seal: {step}" in output, output[-5000:]
    assert "[provision] sealed" in output
    assert (root / "etc/machine-id").read_bytes() == b""
    assert not (root / "home/debian/.ssh/authorized_keys").exists()
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert sorted(p.name for p in (root / "var/lib/cloud").iterdir()) == ["seed"]
    assert not list((root / "var/log").glob("cloud-init*"))
    assert list((root / "tmp").iterdir()) == []            # the uploaded source is gone


def test_a_failing_install_fails_the_build_and_seals_nothing(
        sshd: tuple[str, int, Path], tmp_path: Path) -> None:
    root = _build_machine(tmp_path / "root")
    tarball = _source_tarball(tmp_path / "appliance-src.tar.gz", fail=True)
    result = _packer_build(sshd, tmp_path / "packer", tarball, root, {"with_minio": "true"})
    assert result.returncode != 0, result.stdout[-3000:]
    assert "[provision] install: done" not in result.stdout
    assert (root / "install-node.args").exists()               # it did run, and failed
    assert (root / "root/.ssh/authorized_keys").exists()


def test_a_failing_sealing_step_fails_the_build(sshd: tuple[str, int, Path], tmp_path: Path) -> None:
    root = _build_machine(tmp_path / "root")
    (root / "etc/machine-id").unlink()
    (root / "etc/machine-id").mkdir()                           # truncate cannot empty a directory
    tarball = _source_tarball(tmp_path / "appliance-src.tar.gz")
    result = _packer_build(sshd, tmp_path / "packer", tarball, root, {})
    assert result.returncode != 0, result.stdout[-3000:]
    assert "[provision] seal: machine-id" in result.stdout
    assert "[provision] sealed" not in result.stdout
    assert (root / "root/.ssh/authorized_keys").exists()       # the steps after it did not run


def test_an_invalid_option_value_fails_the_build(sshd: tuple[str, int, Path], tmp_path: Path) -> None:
    root = _build_machine(tmp_path / "root")
    tarball = _source_tarball(tmp_path / "appliance-src.tar.gz")
    result = _packer_build(sshd, tmp_path / "packer", tarball, root, {"with_minio": "yes"})
    assert result.returncode != 0
    assert not (root / "install-node.args").exists()


def test_the_qemu_build_vm_gets_a_cpu_with_avx_and_a_pinned_base() -> None:
    text = TEMPLATE.read_text()
    assert re.search(r'qemuargs\s*=\s*\[\["-cpu", var\.qemu_cpu\]\]', text)
    assert re.search(r'variable "qemu_cpu" \{[^}]*default\s*=\s*"host"', text)
    url = re.search(r'variable "base_image_url" \{[^}]*default\s*=\s*"([^"]+)"', text)[1]
    assert "/latest/" not in url and re.search(r"/\d{8}-\d{4}/", url)
    assert re.search(r'variable "base_image_checksum" \{[^}]*default\s*=\s*"sha512:[0-9a-f]{128}"', text)
    ami = re.search(r'variable "aws_source_ami_name" \{[^}]*default\s*=\s*"([^"]+)"', text)[1]
    assert "*" not in ami and re.search(r"\d{8}-\d{4}$", ami)
