"""scripts/install-node.sh for real: install a node into a temp root prefix, run the install a
second time (nothing changes), check no secret is in the tree, then boot it the way the systemd
unit does (`appliance bootstrap`, `appliance up --foreground` from the installed venv) and get
the user guide's answer through Envoy; logrotate's config rotates Envoy's access log for real.

The venv is a fresh, full `pip install` of a snapshot of this checkout (not editable, the way
an image gets it): pip resolves every dependency from the configured index. That is the honest
install and takes about a minute here; reusing the dev venv would test something else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from appliance.releases import Releases, release_env
from tests.conftest import REPO, Processes, free_ports, wait_until
from tests.integration.node_harness import wait_gone

SCRIPT = REPO / "scripts" / "install-node.sh"
MODEL = "saved_model_half_plus_two_mkl"
PUBLISHED_SECRETS = ["AKIAIOSXODNN7EXAMPLE", "wJalrXUtqFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "p12cHANgepwD"]
OUR_SECRET_PATTERNS = [re.compile(p) for p in (
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(password|passwd|secret[._-]?key|access[._-]?key)\s*[:=]\s*[\"'][^\"'\s]{4,}[\"']",
)]


# ----------------------------------------------------------------------------- fixtures


def _snapshot_source(dest: Path) -> Path:
    """The checkout's installable files, copied once: other edits during the test change nothing."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir()
    shutil.copy2(REPO / "setup.py", dest / "setup.py")
    shutil.copy2(REPO / "constraints.txt", dest / "constraints.txt")
    for name in ("appliance", "modelserver", "envoy", "supervisor", "logviewer", "scripts", "clients"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def _install(source: Path, root: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(source / "scripts/install-node.sh"), "--prefix", str(root),
                           "--source", str(source), *options], capture_output=True, text=True, timeout=1200)


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: type, mode, size, mtime and content hash (or link target)."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                digest = hashlib.sha256()
                with path.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                state[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, digest.hexdigest())
    return state


# Debian's interpreter, the one an image has: the service user can run it (pyenv's may sit in a
# home it cannot reach), and the user installs below read their dependencies from this install.
SYSTEM_PYTHON = "/usr/bin/python3.11"


def _deps_of(installed: tuple[Path, Path]) -> Path:
    """The full install's release: the service user's installs read their dependencies from it."""
    return installed[1] / "opt/appliance/current"


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Path, Path]]:
    """The one full install of the module (every dependency from the index, about a minute).

    Under /tmp in a 0755 dir (pytest's own temp dirs are 0700): the service user's installs
    read their dependencies from its release.
    """
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="appliance-install-", dir="/tmp"))
    base.chmod(0o755)
    try:
        source = _snapshot_source(base / "src")
        root = base / "root"
        python = ["--python", SYSTEM_PYTHON] if Path(SYSTEM_PYTHON).exists() else []
        first = _install(source, root, *python)
        assert first.returncode == 0, first.stdout + first.stderr[-5000:]
        yield source, root
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- the install


@pytest.mark.slow
def test_a_second_install_changes_nothing(installed: tuple[Path, Path]) -> None:
    source, root = installed
    before = tree_state(root)
    second = _install(source, root)
    assert second.returncode == 0, second.stderr[-5000:]
    assert "is up to date" in second.stderr
    after = tree_state(root)
    assert sorted(set(before) ^ set(after)) == []
    assert [p for p in before if before[p] != after[p]] == []


@pytest.mark.slow
def test_the_layout_of_design_md_and_the_system_files(installed: tuple[Path, Path]) -> None:
    _, root = installed
    for rel in ("etc/appliance", "data/models", "var/lib/appliance/run", "var/log/appliance",
                "opt/appliance/current/bin/appliance", "opt/appliance/current/bin/envoy",
                "opt/appliance/current/bin/supervisord", "opt/appliance/current/share/appliance/envoy"):
        assert (root / rel).exists(), rel
    assert os.readlink(root / "usr/local/bin/appliance") == str(root / "opt/appliance/current/bin/appliance")
    # Not editable: the package lives in the venv, not in the source snapshot.
    where = subprocess.run([str(root / "opt/appliance/current/bin/python"), "-c",
                            "import appliance; print(appliance.__file__)"],
                           capture_output=True, text=True, check=True, cwd=root, env=release_env()).stdout
    assert where.startswith(str(root / "opt/appliance/current/lib/"))
    unit = (root / "etc/systemd/system/appliance.service").read_text()
    assert f"ExecStart={root}/opt/appliance/current/bin/appliance --root {root} up --foreground" in unit
    assert f"ExecStartPre=+{root}/opt/appliance/current/bin/appliance --root {root} bootstrap" in unit
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(root / "etc/systemd/system/appliance.service")],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
    assert f"{root}/var/log/appliance/access.log {{" in (root / "etc/logrotate.d/appliance").read_text()
    # The clients where the user guide runs them: cd /opt/app/test; source tfserving_venv/bin/activate
    for client in ("resnet_client.py", "resnet_client_grpc.py", "model_client.py"):
        assert (root / "opt/app/test" / client).read_bytes() == (REPO / "clients" / client).read_bytes()
    assert os.readlink(root / "opt/app/test/tfserving_venv") == str(root / "opt/appliance/current")
    usage = subprocess.run([str(root / "opt/app/test/tfserving_venv/bin/python"),
                            str(root / "opt/app/test/resnet_client_grpc.py"), "--help"],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "--server" in usage.stdout, usage.stderr


@pytest.mark.slow
def test_no_secret_is_baked_into_the_install(installed: tuple[Path, Path]) -> None:
    source, root = installed
    assert list((root / "etc/appliance").iterdir()) == []    # no config, no credential
    # The user guide's published keys and password: nowhere in the tree, venv included.
    found = subprocess.run(["grep", "-rlF", *sum((["-e", s] for s in PUBLISHED_SECRETS), []), str(root)],
                           capture_output=True, text=True)
    assert found.stdout == "", found.stdout
    # Generic patterns: in our own files (third-party packages in the venv are not ours).
    site = next((root / "opt/appliance/current/lib").glob("python3*/site-packages"))
    ours = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and (root / "opt/appliance/current") not in p.parents
            and (root / "opt/appliance/releases") not in p.parents]
    ours += [p for p in (site / "appliance").rglob("*.py")]
    ours += [p for p in (root / "opt/appliance/current/share/appliance").rglob("*") if p.is_file()]
    ours += [SCRIPT, *(REPO / "supervisor").glob("*.in")]
    for path in ours:
        text = path.read_text(errors="replace")
        for pattern in OUR_SECRET_PATTERNS:
            assert not pattern.search(text), f"{path}: matches {pattern.pattern}"
    assert not re.search(r"(?i)password\s*=", SCRIPT.read_text())


# ----------------------------------------------------------------------------- boot it


def _installed_keys(venv: Path) -> set[str]:
    out = subprocess.run([str(venv / "bin/python"), "-c",
                          "from appliance.config import KEYS; print('\\n'.join(KEYS))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.slow
def test_the_installed_node_answers_the_user_guide_through_envoy(
        installed: tuple[Path, Path], processes: Processes, tmp_path: Path) -> None:
    _, root = installed
    venv = root / "opt/appliance/current"
    appliance = str(venv / "bin/appliance")
    build = subprocess.run([appliance, "--root", str(root), "builtin-models", "--only", MODEL],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]

    # Boot-time config the way the unit makes it: bootstrap from a file of appliance keys.
    values: dict[str, object] = {"node.address": "127.0.0.1", "model.name": MODEL,
                                 "enable.access.log": True, "envoy.concurrency": 1}
    port_keys = [key for key in _installed_keys(venv) if key.endswith(".port")]
    values.update(zip(port_keys, free_ports(*["127.0.0.1"] * len(port_keys))))
    given = tmp_path / "node.yaml"
    given.write_text(yaml.safe_dump(values))
    boot = subprocess.run([appliance, "--root", str(root), "bootstrap", "--from", str(given)],
                          capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0, boot.stderr
    assert (root / "etc/appliance/appliance.yaml").stat().st_mode & 0o077 in (0, 0o040)

    # ExecStart of the unit, under the processes fixture (stopped by PID whatever happens).
    node = processes.start([appliance, "--root", str(root), "up", "--foreground", "--timeout", "600"],
                           log=tmp_path / "up.log")
    url = f"http://127.0.0.1:{values['http.port']}/v1/models/{MODEL}:predict"

    def predict() -> requests.Response | None:
        assert node.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        resp = requests.post(url, data='{"instances": [1.0, 2.0, 5.0]}', timeout=10)
        return resp if resp.status_code == 200 else None

    resp = wait_until(predict, timeout=600, interval=0.5, what="the user guide's request through Envoy")
    pids = _node_pids(appliance, root)
    try:
        assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
        # stdout is the journal under the unit: the logviewer password is in a 0600 file only.
        initial = root / "etc/appliance/logviewer.initial-password"
        said = (tmp_path / "up.log").read_text()
        assert f"it is in {initial}" in said, said[-3000:]
        assert stat.S_IMODE(initial.stat().st_mode) == 0o600
        assert initial.read_text().strip() not in said, "up printed the logviewer password"

        doctor = subprocess.run([appliance, "--root", str(root), "doctor"], capture_output=True,
                                text=True, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "held by this node's envoy" in doctor.stdout
        current = Releases(root).current()
        assert f"current release {current}, every process runs it" in doctor.stdout, doctor.stdout
        assert "the model server follows the node's models.config" in doctor.stdout, doctor.stdout

        _rotate_access_log(root, url)
    finally:
        processes.stop(node, timeout=90)
        for pid in wait_gone(pids, 30):
            os.kill(pid, 9)
    assert wait_gone(pids, 5) == []


def _node_pids(appliance: str, root: Path) -> list[int]:
    import json

    status = subprocess.run([appliance, "--root", str(root), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    pidfile = root / "var/lib/appliance/run/supervisord.pid"
    pids = [int(pidfile.read_text())] if pidfile.exists() else []
    return pids + [p["pid"] for p in json.loads(status.stdout)["processes"] if p["pid"]]


def _rotate_access_log(root: Path, url: str) -> None:
    """The installed logrotate config moves access.log aside and Envoy writes a fresh one."""
    logrotate = shutil.which("logrotate") or ("/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None)
    if logrotate is None:
        return
    access = root / "var/log/appliance/access.log"
    wait_until(lambda: access.exists() and access.stat().st_size > 0, timeout=30, what="an access log line")
    lines_before = access.read_text().count("\n")
    rotated = subprocess.run([logrotate, "-f", "-s", str(root / "logrotate.state"),
                              str(root / "etc/logrotate.d/appliance")],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert (root / "var/log/appliance/access.log.1").read_text().count("\n") >= lines_before
    resp = requests.post(url, data='{"instances": [1.0]}', timeout=10)
    assert resp.json() == {"predictions": [2.5]}
    wait_until(lambda: access.exists() and access.stat().st_size > 0, timeout=30,
               what="Envoy writing the reopened access log")


# ----------------------------------------------------------------------------- pinned downloads


def _bash(snippet: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {snippet}', "test", *args],
                          capture_output=True, text=True, timeout=60)


def test_checksum_verification_accepts_only_the_pinned_file(tmp_path: Path) -> None:
    blob = tmp_path / "minio"
    blob.write_bytes(b"not really minio\n")
    good = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert _bash('verify_sha256 "$1" "$2"', str(blob), good).returncode == 0
    assert _bash('verify_sha256 "$1" "$2"', str(blob), good.upper()).returncode == 0
    bad = _bash('verify_sha256 "$1" "$2"', str(blob), "0" * 64)
    assert bad.returncode != 0 and f"expected {'0' * 64}, got {good}" in bad.stderr
    assert _bash('verify_sha256 "$1" ""', str(blob)).returncode != 0          # nothing pinned
    assert _bash('verify_sha256 "$1" "$2"', str(tmp_path / "absent"), good).returncode != 0


def test_fetch_verified_installs_only_a_matching_download(tmp_path: Path) -> None:
    """The download path of --with-minio, on a file:// URL (curl, no network)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    blob = tmp_path / "upstream"
    blob.write_bytes(os.urandom(4096))
    good = hashlib.sha256(blob.read_bytes()).hexdigest()
    dest = tmp_path / "bin" / "minio"
    refused = _bash('fetch_verified "$1" "$2" "$3"', blob.as_uri(), "f" * 64, str(dest))
    assert refused.returncode != 0 and "checksum mismatch" in refused.stderr
    assert not dest.exists() and list(dest.parent.iterdir()) == []   # no partial file left
    assert _bash('fetch_verified "$1" "$2" "$3"', blob.as_uri(), good, str(dest)).returncode == 0
    assert dest.read_bytes() == blob.read_bytes()
    mtime = dest.stat().st_mtime_ns
    assert _bash('fetch_verified "$1" "$2" "$3"', blob.as_uri(), good, str(dest)).returncode == 0
    assert dest.stat().st_mtime_ns == mtime          # already there: not downloaded again


def test_the_pinned_minio_checksum_is_well_formed() -> None:
    text = SCRIPT.read_text()
    assert re.search(r"^MINIO_SHA256=[0-9a-f]{64}$", text, re.M)
    assert re.search(r"^MINIO_URL=\"https://", text, re.M)


# ----------------------------------------------------------------------------- as the service user

SERVICE_USER = "appliance-test"
REPO_ADDRESS, SERVING_ADDRESS = "127.0.0.73", "127.0.0.74"


def _service_user() -> tuple[int, int]:
    """A system user like the one install-node.sh makes on an image (created once, kept)."""
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True, timeout=60)
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _as_user(uid: int, gid: int, cmd: list[str]) -> list[str]:
    """``cmd`` run as the service user, the way the unit's User= runs it (setpriv execs, no fork)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--reset-env", *cmd]


@dataclass
class UserNode:
    root: Path
    address: str
    ports: dict[str, int]

    @property
    def appliance(self) -> str:
        return str(self.root / "opt/appliance/current/bin/appliance")

    def bootstrap(self, values: dict[str, object], tmp: Path) -> None:
        """As root, like the unit's `ExecStartPre=+... bootstrap`: the file goes to the dir's owner."""
        given = tmp / f"{self.root.name}.yaml"
        given.write_text(yaml.safe_dump({"node.address": self.address, "envoy.concurrency": 1,
                                         **self.ports, **values}))
        boot = subprocess.run([self.appliance, "--root", str(self.root), "bootstrap", "--from", str(given)],
                              capture_output=True, text=True, timeout=120)
        assert boot.returncode == 0, boot.stderr


def _user_node(root: Path, address: str, keys: set[str]) -> UserNode:
    from tests.integration.objectstore_harness import free_port_block

    port_keys = sorted(key for key in keys if key.endswith(".port"))
    *drawn, admin = free_ports(*[address] * len(port_keys), "127.0.0.1")
    ports = dict(zip(port_keys, drawn))
    ports["envoy.admin.port"] = admin
    ports["repo.internal.port.base"] = free_port_block(8)
    return UserNode(root, address, ports)


@pytest.fixture(scope="module")
def user_installs(installed: tuple[Path, Path]) -> Iterator[tuple[Path, UserNode, UserNode, tuple[int, int]]]:
    """A repo node and a serving node installed with `install-node.sh --prefix --user`.

    Under /tmp in a 0755 dir (pytest's own temp dirs are 0700: the user could not reach its venv),
    with Debian's python3.11 (the interpreter of an image, reachable by any user). Their
    dependencies come from the module's full install (``--deps-from``: what is under test here
    is the service user, not pip, which ``installed`` covers).
    """
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None or not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"needs root, setpriv and {SYSTEM_PYTHON}")
    deps = _deps_of(installed)
    uid_gid = _service_user()
    base = Path(tempfile.mkdtemp(prefix="appliance-user-", dir="/tmp"))
    base.chmod(0o755)
    try:
        source = _snapshot_source(base / "src")
        nodes = []
        for name, address in (("repo", REPO_ADDRESS), ("serving", SERVING_ADDRESS)):
            root = base / name
            done = _install(source, root, "--user", SERVICE_USER, "--python", SYSTEM_PYTHON,
                            "--deps-from", str(deps))
            assert done.returncode == 0, done.stdout + done.stderr[-5000:]
            nodes.append(_user_node(root, address, _installed_keys(root / "opt/appliance/current")))
        yield base, nodes[0], nodes[1], uid_gid
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_the_install_gives_the_node_data_to_the_service_user(user_installs) -> None:
    _, repo, _, (uid, gid) = user_installs
    for rel in ("data", "data/models", "data/objectstore", "etc/appliance", "var/lib/appliance",
                "var/lib/appliance/run", "var/log/appliance"):
        st = (repo.root / rel).stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), rel
    st = (repo.root / "opt/appliance/current/bin/appliance").stat()
    assert st.st_uid == 0 and not st.st_mode & 0o022          # the code stays root's


@pytest.mark.slow
def test_an_object_store_that_cannot_write_its_data_dir_fails_at_once_naming_the_fix(
        installed, user_installs, tmp_path: Path) -> None:
    """The state of an older install (a root-owned data dir): one clear error, no traceback;
    the fix it names (re-run the install, with the options it was run with) makes the dir the
    service user's again."""
    base, repo, _, (uid, gid) = user_installs
    data = repo.root / "data/objectstore"
    os.chown(data, 0, 0)
    data.chmod(0o755)
    repo.bootstrap({"node.role": "repo"}, tmp_path)
    run = subprocess.run(_as_user(uid, gid, [repo.appliance, "--root", str(repo.root), "objectstore"]),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"the object store cannot use {data}: not writable (it runs as {SERVICE_USER}" in run.stderr
    assert "Traceback" not in run.stderr and "scripts/install-node.sh" in run.stderr
    again = _install(base / "src", repo.root, "--user", SERVICE_USER, "--python", SYSTEM_PYTHON,
                     "--deps-from", str(_deps_of(installed)))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)


def _up_as_user(node: UserNode, uid_gid: tuple[int, int], processes: Processes, log: Path):
    cmd = _as_user(*uid_gid, [node.appliance, "--root", str(node.root), "up", "--foreground",
                              "--timeout", "600"])
    return processes.start(cmd, log=log)


def _wait_answering(node: UserNode, proc, log: Path, url: str, status: int,
                    body: str | None = None) -> requests.Response:
    """Until ``url`` answers ``status`` (`up`'s own output is buffered while it runs)."""
    seen: list[str] = []

    def answers() -> tuple[requests.Response] | None:     # a 4xx Response is falsy
        assert proc.poll() is None, log.read_text()[-5000:]
        try:
            resp = requests.request("POST" if body else "GET", url, data=body, timeout=10)
        except requests.RequestException as exc:
            seen.append(repr(exc))
            return None
        seen.append(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return (resp,) if resp.status_code == status else None
    try:
        return wait_until(answers, timeout=600, interval=0.5, what=url)[0]
    except TimeoutError as exc:
        logs = node.root / "var/log/appliance"
        tails = {p.name: p.read_text(errors="replace")[-2000:] for p in sorted(logs.glob("*.log"))}
        raise AssertionError(f"{exc}; last answer: {seen[-1:]}; logs: {tails}") from None


@pytest.mark.slow
def test_a_repo_node_and_a_serving_node_run_as_the_service_user_and_serve_a_pushed_model(
        user_installs, processes: Processes, tmp_path: Path) -> None:
    import numpy as np

    from tests.tfmodels import build_all, predict_log, write_warmup

    _, repo, serving, uid_gid = user_installs
    repo.bootstrap({"node.role": "repo"}, tmp_path)
    repo_up = _up_as_user(repo, uid_gid, processes, tmp_path / "repo-up.log")
    pids: list[int] = []
    try:
        endpoint = f"http://{REPO_ADDRESS}:{repo.ports['repo.port']}"
        # Anonymous S3 gets AccessDenied: the store answers through the repo node's Envoy.
        _wait_answering(repo, repo_up, tmp_path / "repo-up.log", endpoint + "/", 403)
        pids += _node_pids(repo.appliance, repo.root)
        keys = yaml.safe_load((repo.root / "etc/appliance/appliance.yaml").read_text())
        # Every process of the repo node is the service user's, and so is what the store wrote.
        assert {_uid_of(pid) for pid in pids} == {uid_gid[0]}
        written = [p for p in (repo.root / "data/objectstore").rglob("*")]
        assert written and {p.stat().st_uid for p in written} == {uid_gid[0]}

        # A model pushed to the repo node's S3 port (Envoy on its address), by a client elsewhere;
        # it ships a warmup set, so platform auto (the default) measures its runtimes.
        model = build_all(tmp_path / "models", only=("half_plus_two",))["half_plus_two"] / "1"
        write_warmup(model, [predict_log("half", {"x": np.array([1.0, 2.0, 5.0], np.float32)})])
        client = {"s3.type": "seaweedfs", "s3.endpoint": endpoint, "model.base.path": "s3://models"}
        sets = [a for k, v in client.items() for a in ("--set", f"{k}={v}")]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": keys["s3.access.key"],
               "AWS_SECRET_ACCESS_KEY": keys["s3.secret.key"]}
        pushed = subprocess.run([repo.appliance, "--root", str(tmp_path / "client"), "models", "push",
                                 str(model), "--name", "half", "--version", "1", *sets],
                                capture_output=True, text=True, timeout=300, env=env)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr

        serving.bootstrap({**client, "model.name": "half", "s3.access.key": keys["s3.access.key"],
                           "s3.secret.key": keys["s3.secret.key"], "sync.interval.seconds": 2}, tmp_path)
        serving_up = _up_as_user(serving, uid_gid, processes, tmp_path / "serving-up.log")
        url = f"http://{SERVING_ADDRESS}:{serving.ports['http.port']}/v1/models/half:predict"
        resp = _wait_answering(serving, serving_up, tmp_path / "serving-up.log", url, 200,
                               '{"instances": [1.0, 2.0, 5.0]}')
        assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
        pids += _node_pids(serving.appliance, serving.root)
        assert {_uid_of(pid) for pid in pids} == {uid_gid[0]}
        served = serving.root / "data/models/half/1"
        assert served.is_dir() and served.stat().st_uid == uid_gid[0]
        _see_it_as_the_service_user(serving, uid_gid, url)
        _choose_openvino_as_the_service_user(serving, uid_gid, url)

        # After a restart of the whole node, the same pages answer with the same token, and the
        # model is on OpenVINO again, from the runtime cache (not converted again).
        reads = _cache_reads(serving)
        before = _node_pids(serving.appliance, serving.root)
        processes.stop(serving_up, timeout=90)
        assert wait_gone(before, 30) == []
        serving_up = _up_as_user(serving, uid_gid, processes, tmp_path / "serving-up-2.log")
        _wait_answering(serving, serving_up, tmp_path / "serving-up-2.log", url, 200,
                        '{"instances": [1.0, 2.0, 5.0]}')
        pids += _node_pids(serving.appliance, serving.root)
        _see_it_as_the_service_user(serving, uid_gid, url)
        runtime = _runtime_of(serving, uid_gid, "half")
        assert (runtime["platform"], runtime["how"]) == ("openvino", "configured"), runtime
        assert _cache_reads(serving) > reads
        _shows_the_runtime(serving, uid_gid, "openvino f32 (configured)")
    finally:
        for proc in processes.procs:
            processes.stop(proc, timeout=90)
        for pid in wait_gone(pids, 30):
            os.kill(pid, 9)
    assert wait_gone(pids, 5) == []


def _see_it_as_the_service_user(node: UserNode, uid_gid: tuple[int, int], url: str) -> None:
    """Issue 17 on an installed node run by the service user: the metrics page (with the token
    the node made for itself), the dashboard behind the login, `capacity`, `status` and `doctor`."""
    from appliance import promtext

    for _ in range(5):
        assert requests.post(url, data='{"instances": [1.0]}', timeout=30).ok
    base = f"http://{node.address}:{node.ports['logviewer.port']}"
    token_file = node.root / "etc/appliance/metrics.token"
    assert token_file.stat().st_uid == uid_gid[0] and token_file.stat().st_mode & 0o777 == 0o600
    assert requests.get(base + "/metrics", timeout=30).status_code == 401
    token = token_file.read_text().strip()

    def counted() -> float:
        page = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert page.status_code == 200, page.text[:300]
        return sum(s.value for s in promtext.parse(page.text)
                   if s.name == ":tensorflow:serving:request_count" and s.labels.get("model_name") == "half")
    assert wait_until(lambda: counted() >= 5, timeout=60, what="the requests on the metrics page")

    session = requests.Session()
    password = (node.root / "etc/appliance/logviewer.initial-password").read_text().strip()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', session.get(base + "/login", timeout=30).text)
    assert session.post(base + "/login", data={"password": password, "csrf_token": csrf.group(1)},
                        timeout=30).ok
    def charted() -> bool:
        data = session.get(base + "/api/dashboard", params={"minutes": 15}, timeout=30).json()
        return any(s["name"] == "half" and any(s["values"]) for c in data["charts"] if c["id"] == "rps-model"
                   for s in c["series"])
    wait_until(charted, timeout=90, interval=2, what="the dashboard's request rate of half")
    page = session.get(base + "/dashboard", timeout=30)
    assert page.status_code == 200 and 'id="dashboard-data"' in page.text

    for cmd in (["capacity", "--no-hook"], ["status"], ["doctor"]):
        _user_cli(node, uid_gid, *cmd)


def _user_cli(node: UserNode, uid_gid: tuple[int, int], *args: str) -> str:
    """An `appliance` command run by the service user; its output (it must succeed, cleanly)."""
    run = subprocess.run(_as_user(*uid_gid, [node.appliance, "--root", str(node.root), *args]),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (args, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Permission denied" not in run.stdout + run.stderr, run
    return run.stdout


def _runtime_of(node: UserNode, uid_gid: tuple[int, int], model: str) -> dict:
    """What serves the model's newest version, as `status --json` says (run by the service user)."""
    versions = json.loads(_user_cli(node, uid_gid, "status", "--json"))["models"][model]
    runtime = versions[0].get("runtime")
    assert runtime, versions
    return runtime


def _cache_reads(node: UserNode) -> int:
    """How often the model server loaded a converted network from its runtime cache."""
    log = node.root / "var/log/appliance/model_server.log"
    return log.read_text(errors="replace").count("converted network read from the cache")


def _shows_the_runtime(node: UserNode, uid_gid: tuple[int, int], text: str) -> None:
    """`status`, `models ls` and `doctor` name the runtime serving half v1."""
    assert f"runtime: {text}" in _user_cli(node, uid_gid, "status")
    assert f"runtime: {text}" in _user_cli(node, uid_gid, "models", "ls")
    assert f"ok   [runtimes] model half version 1: {text}" in _user_cli(node, uid_gid, "doctor")


def _choose_openvino_as_the_service_user(node: UserNode, uid_gid: tuple[int, int], url: str) -> None:
    """Issue 19 on an installed node run by the service user: platform auto measured TensorFlow
    and OpenVINO on the version's warmup set and said so; `models set half platform=openvino`
    moves it onto OpenVINO, converted into the node's runtime cache, answering the same."""
    auto = _runtime_of(node, uid_gid, "half")
    verdicts = {c["runtime"]: c["verdict"] for c in auto["candidates"] if c["precision"] == "f32"}
    assert auto["how"] == "measured" and verdicts == {"tensorflow": "reference", "openvino": "agrees"}, auto
    _shows_the_runtime(node, uid_gid, f"{auto['platform']} f32 (measured)")
    _user_cli(node, uid_gid, "models", "set", "half", "platform=openvino")
    wait_until(lambda: _runtime_of(node, uid_gid, "half")["platform"] == "openvino", timeout=120,
               what="half served on OpenVINO")
    assert requests.post(url, data='{"instances": [1.0, 2.0, 5.0]}', timeout=30).json() == {
        "predictions": [2.5, 3.0, 4.5]}
    cache = node.root / "var/lib/appliance/runtime-cache"
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert entries and {p.stat().st_uid for p in [cache, *entries]} == {uid_gid[0]}
    _shows_the_runtime(node, uid_gid, "openvino f32 (configured)")


def _uid_of(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


# ----------------------------------------------------------------------------- releases, uninstall


def _install_release(source: Path, root: Path, *options: str) -> str:
    """A release reading its dependencies from the test venv (seconds); the release id."""
    done = _install(source, root, "--deps-from", sys.prefix, "--no-systemd", *options)
    assert done.returncode == 0, done.stderr[-5000:]
    return done.stdout.split()[-1]


def _upgrade(releases: Releases, root: Path, release: str) -> None:
    switched = subprocess.run([str(releases.appliance(release)), "--root", str(root), "upgrade", release],
                              capture_output=True, text=True, timeout=120, cwd="/", env=release_env())
    assert switched.returncode == 0, switched.stderr


@pytest.mark.slow
def test_releases_side_by_side_an_uninstall_that_keeps_the_data_and_a_purge(tmp_path: Path) -> None:
    """A config made before the data path moves onto it; a second release never touches the
    current one; old releases are pruned, never the current or previous one; --uninstall removes the code and keeps the node's state, which a new install
    finds again; --purge removes that too."""
    source = _snapshot_source(tmp_path / "src")
    root = tmp_path / "root"
    (root / "etc/appliance").mkdir(parents=True)
    (root / "etc/appliance/appliance.yaml").write_text("model.name: kept\n")
    first = _install_release(source, root)
    releases = Releases(root)
    assert releases.current() == first and releases.installed() == [first]
    assert os.readlink(root / "etc/appliance") == "../data/etc"
    assert (root / "data/etc/appliance.yaml").read_text() == "model.name: kept\n"
    assert stat.S_IMODE((root / "data/etc").stat().st_mode) == 0o700

    (source / "appliance/releases.py").write_text((source / "appliance/releases.py").read_text() + "\n")
    second = _install_release(source, root)
    assert second != first and releases.installed() == [first, second]
    assert releases.current() == first                  # installed next to it, not switched to
    _upgrade(releases, root, second)                  # a stopped node: only the link switches
    assert (releases.current(), releases.previous()) == (second, first)
    # Old releases go, never the current or the previous one.
    (source / "appliance/releases.py").write_text((source / "appliance/releases.py").read_text() + "\n")
    third = _install_release(source, root, "--keep-releases", "1")
    assert releases.installed() == [first, second, third]
    _upgrade(releases, root, third)
    assert _install_release(source, root, "--keep-releases", "1") == third
    assert releases.installed() == [second, third]

    (root / "data/models/m/1").mkdir(parents=True)
    gone = _install(source, root, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not (root / "opt/appliance").exists() and not (root / "usr/local/bin/appliance").is_symlink()
    assert (root / "data/etc/appliance.yaml").exists() and (root / "data/models/m/1").is_dir()
    assert "kept the node's data" in gone.stderr
    _install_release(source, root)
    assert (root / "etc/appliance/appliance.yaml").read_text() == "model.name: kept\n"
    purged = _install(source, root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not any((root / d).exists() or (root / d).is_symlink()
                   for d in ("data", "etc/appliance", "var/lib/appliance", "var/log/appliance", "opt/appliance"))
