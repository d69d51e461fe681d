"""The repo node for real: `appliance up --set node.role=repo` runs SeaweedFS's S3 API under supervisord
with credentials generated on first start (0600), data under the node root and the bucket created;
the user guide's `s3cmd sync`, boto3 and the aws-style environment variables all work against it.

Locked down (issue 12): on the node address only Envoy listens (REST, gRPC, and the S3 API it passes
to the store on loopback) and the logviewer; every port of the store's process tree is on 127.0.0.1,
and the store's gRPC and HTTP admin APIs refuse whoever lacks its certificate or JWT keys -- asserted
with SeaweedFS's own API, called as an attacker would.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import yaml

from appliance.config import load_config
from appliance.objectstore import INTERNAL_PORTS, seaweedfs_sockets
from tests.conftest import free_port
from tests.integration.node_harness import NodeUnderTest, new_node, wait_gone
from tests.integration.objectstore_harness import ObjectStore, free_port_block
from tests.tfmodels import saved_model_bytes

pytestmark = pytest.mark.slow
PUBLISHED_KEYS = ("AKIAIOSXODNN7EXAMPLE", "wJalrXUtqFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
# A loopback address that is not 127.0.0.1: "on the node address" and "on loopback only" differ.
NODE_ADDRESS = "127.0.0.61"


@pytest.fixture(scope="module")
def repo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeUnderTest, ObjectStore]]:
    node = new_node(tmp_path_factory.mktemp("reponode"), Path("/nonexistent"), [], NODE_ADDRESS)
    port, base = free_port(NODE_ADDRESS), free_port_block(INTERNAL_PORTS)
    started = _up(node, port, base)
    pids = node.pids()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        creds = yaml.safe_load((node.root / "etc/appliance/objectstore.credentials").read_text())
        yield node, ObjectStore(node.root, port, base, creds["s3.access.key"], creds["s3.secret.key"],
                                host=NODE_ADDRESS)
    finally:
        node.cli("down", timeout=120)
        node.kill_all(wait_gone(pids, 30))


def _up(node: NodeUnderTest, port: int, internal_base: int) -> subprocess.CompletedProcess:
    return node.cli("up", "--timeout", "180", *node.overrides, "--set", "node.role=repo",
                    "--set", f"repo.port={port}", "--set", f"repo.internal.port.base={internal_base}")


def test_credentials_are_generated_0600_and_never_the_published_ones(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    node, store = repo_node
    path = node.root / "etc/appliance/objectstore.credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((node.root / "var/lib/appliance/run/objectstore-s3.json").stat().st_mode) == 0o600
    assert store.access_key not in PUBLISHED_KEYS and store.secret_key not in PUBLISHED_KEYS
    assert len(store.secret_key) >= 30
    logs = "".join(p.read_text(errors="replace") for p in (node.root / "var/log").rglob("*.log"))
    assert store.secret_key not in logs
    assert {p["name"]: p["state"] for p in node.status()["processes"]}["objectstore"] == "RUNNING"
    assert stat.S_IMODE((node.root / "data/objectstore").stat().st_mode) == 0o700


def test_the_bucket_exists_and_anonymous_access_is_refused(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    import requests

    _, store = repo_node
    assert "models" in [b["Name"] for b in store.boto3().list_buckets()["Buckets"]]
    assert requests.get(f"{store.endpoint}/models/", timeout=10).status_code == 403
    wrong = store.s3cmd("ls", "s3://models/", "--secret_key=not-the-key")
    assert wrong.returncode != 0


def test_s3cmd_sync_of_the_user_guide_then_aws_env_vars_with_boto3(
        repo_node: tuple[NodeUnderTest, ObjectStore], tmp_path: Path) -> None:
    _, store = repo_node
    (tmp_path / "resnet/1/variables").mkdir(parents=True)
    (tmp_path / "resnet/1/saved_model.pb").write_bytes(saved_model_bytes(1000))
    (tmp_path / "resnet/1/variables/variables.data-00000-of-00001").write_bytes(os.urandom(20 << 20))
    synced = store.s3cmd("sync", str(tmp_path / "resnet"), "s3://models/")
    assert synced.returncode == 0, synced.stderr
    listed = store.s3cmd("ls", "--recursive", "s3://models/resnet/")
    assert "s3://models/resnet/1/saved_model.pb" in listed.stdout
    # A client configured only through the standard AWS environment variables.
    script = ("import boto3, sys\n"
              "c = boto3.client('s3', endpoint_url=sys.argv[1])\n"
              "print(sorted(o['Key'] for o in c.list_objects_v2(Bucket='models', "
              "Prefix='resnet/')['Contents']))\n")
    env = {**store.env(), "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", script, store.endpoint], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "resnet/1/variables/variables.data-00000-of-00001" in out.stdout


# ----------------------------------------------------------------------------- locked down


def _tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc/<pid>/stat's parent PIDs)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _proc_address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntoa(raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening(pids: list[int]) -> dict[tuple[str, int], int]:
    """Every listening TCP socket (address, port) of ``pids`` -> the PID holding it."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found: dict[tuple[str, int], int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:          # 0A: LISTEN
                address, port = fields[1].split(":")
                found[(_proc_address(address), int(port, 16))] = owner[fields[9]]
    return found


def _program_pid(node: NodeUnderTest, name: str) -> int:
    return next(p["pid"] for p in node.status()["processes"] if p["name"] == name)


def test_only_envoy_listens_on_the_node_address(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    node, store = repo_node
    supervisord = int((node.root / "var/lib/appliance/run/supervisord.pid").read_text())
    everything = listening(_tree(supervisord))
    program = {pid: p["name"] for p in node.status()["processes"] if p["pid"]
               for pid in _tree(p["pid"])}
    public = {port: program.get(pid) for (address, port), pid in everything.items()
              if address != "127.0.0.1"}
    assert all(address in ("127.0.0.1", NODE_ADDRESS) for address, _ in everything), everything
    # The log browser too: Envoy serves it (edge TLS) from the logviewer's unix socket.
    assert public == {node.http_port: "envoy", node.grpc_port: "envoy", store.port: "envoy",
                      node.logviewer_port: "envoy"}
    # The object store's whole process tree (appliance objectstore, weed) is on loopback only,
    # all 8 internal ports included: its S3 gRPC port too, which weed binds to its S3 address.
    ports = listening(_tree(_program_pid(node, "objectstore")))
    assert {address for address, _ in ports} == {"127.0.0.1"}, ports
    assert {port for _, port in ports} >= set(range(store.internal_base,
                                                    store.internal_base + INTERNAL_PORTS))


def _iam_messages():
    """SeaweedFS's iam.proto messages an attacker needs (PutIdentity, RemoveIdentity), built at
    run time from their field numbers (weed/pb/iam.proto): no generated stubs to ship."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="attacker_iam.proto", package="iam_pb",
                                               syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        added = proto.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            entry = added.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name

    text, nested = field.TYPE_STRING, field.TYPE_MESSAGE
    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    message("Credential", ("access_key", text, one, ""), ("secret_key", text, one, ""))
    message("Identity", ("name", text, one, ""), ("credentials", nested, many, ".iam_pb.Credential"),
            ("actions", text, many, ""))
    message("PutIdentityRequest", ("identity", nested, one, ".iam_pb.Identity"))
    message("RemoveIdentityRequest", ("username", text, one, ""))
    message("Empty")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"iam_pb.{name}"))
            for name in ("PutIdentityRequest", "RemoveIdentityRequest", "Empty")}


def _sockets(store: ObjectStore) -> list[Path]:
    """weed server's unix sockets in /tmp (as reachable to a local user as its ports)."""
    config = load_config(None, [f"repo.internal.port.base={store.internal_base}"])
    paths = [p for p in seaweedfs_sockets(config) if p.exists()]
    assert len(paths) == 6, paths
    return paths


def _call(channel: grpc.Channel, method: str, request, response_type):
    return channel.unary_unary(f"/messaging_pb.SeaweedS3IamCache/{method}",
                               request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)(request, timeout=10)


def test_unauthenticated_identity_calls_are_refused_on_every_store_grpc_port(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    import botocore.exceptions

    node, store = repo_node
    messages = _iam_messages()
    evil = messages["PutIdentityRequest"](identity={
        "name": "attacker", "actions": ["Admin", "Read", "List", "Write"],
        "credentials": [{"access_key": "AKATTACKER0000000001", "secret_key": "attacker-secret-1234"}]})
    remove = messages["RemoveIdentityRequest"](username="appliance")
    base = store.internal_base
    targets = [f"127.0.0.1:{base + offset}" for offset in (1, 3, 5, 6)]   # master volume filer s3
    targets += [f"unix://{path}" for path in _sockets(store) if "-grpc-" in path.name]
    assert len(targets) == 8
    security = node.root / "etc/appliance/seaweedfs"
    ca = (security / "ca.crt").read_bytes()
    attackers = {"plaintext": grpc.insecure_channel,
                 # TLS trusting the store's CA, but without a client certificate of it
                 "tls without a client certificate": lambda t: grpc.secure_channel(
                     t, grpc.ssl_channel_credentials(ca),
                     options=[("grpc.ssl_target_name_override", "localhost")])}
    for target in targets:
        for how, connect in attackers.items():
            with connect(target) as channel:
                for method, request in (("PutIdentity", evil), ("RemoveIdentity", remove)):
                    with pytest.raises(grpc.RpcError) as refused:
                        _call(channel, method, request, messages["Empty"])
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (target, how, method)
    # With the store's own certificate the same call gets through TLS to the service, which
    # then wants a token signed with the JWT key too: the refusals above are the mutual TLS,
    # not a wrong port or method.
    own = grpc.ssl_channel_credentials(ca, (security / "node.key").read_bytes(),
                                       (security / "node.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{base + 6}", own,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _call(channel, "PutIdentity", evil, messages["Empty"])
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The IAM API weed serves on the S3 port (through Envoy): an attacker's key is refused, and
    # even the appliance's admin key cannot write (read-only).
    for key, secret in (("AKATTACKER0000000001", "attacker-secret-1234"),
                        (store.access_key, store.secret_key)):
        iam = _iam_client(store, key, secret)
        for write in (lambda: iam.create_user(UserName="attacker"),
                      lambda: iam.create_access_key(UserName="appliance")):
            with pytest.raises(botocore.exceptions.ClientError):
                write()
    users = _iam_client(store, store.access_key, store.secret_key).list_users()["Users"]
    assert [u["UserName"] for u in users] == ["appliance"]
    # No attacker key exists; the appliance's key still works.
    attacker = ObjectStore(store.root, store.port, base, "AKATTACKER0000000001",
                           "attacker-secret-1234", host=store.host)
    with pytest.raises(botocore.exceptions.ClientError):
        attacker.boto3().list_objects_v2(Bucket="models")
    store.boto3().list_objects_v2(Bucket="models")


def _iam_client(store: ObjectStore, key: str, secret: str):
    import boto3

    return boto3.client("iam", endpoint_url=store.endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1")


def _raw_http(target: str | int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.0 request to a loopback TCP port or a unix socket path: (status, body)."""
    family, address = ((socket.AF_UNIX, target) if isinstance(target, str)
                       else (socket.AF_INET, ("127.0.0.1", target)))
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(address)
        conn.sendall(f"{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: "
                     f"{len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def test_unauthenticated_http_calls_on_the_store_ports_are_refused(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    _, store = repo_node
    store.boto3().put_object(Bucket="models", Key="lockdown/1/saved_model.pb", Body=b"model bytes")
    master, volume, filer = store.internal_base, store.internal_base + 2, store.internal_base + 4
    filer_socket = str(next(p for p in _sockets(store) if p.name.startswith("seaweedfs-filer-")
                            and "-grpc-" not in p.name))
    calls = [(master, "GET", "/dir/assign"), (master, "POST", "/vol/grow?count=1"),
             (master, "GET", "/col/delete?collection=models"), (master, "GET", "/vol/vacuum"),
             (master, "GET", "/dir/status"),
             (filer, "PUT", "/buckets/models/lockdown/1/evil.pb"),
             (filer, "GET", "/buckets/models/lockdown/1/saved_model.pb"),
             (filer, "DELETE", "/buckets/models/lockdown/1/saved_model.pb"),
             (filer, "GET", "/buckets/models/?pretty=y"),
             (volume, "POST", "/1,01637037d6"), (volume, "GET", "/1,01637037d6"),
             (volume, "DELETE", "/1,01637037d6")]
    calls += [(filer_socket, method, path) for port, method, path in calls if port == filer]
    for target, method, path in calls:
        status, body = _raw_http(target, method, path, b"evil" if method in ("PUT", "POST") else b"")
        assert status in (401, 403, 404), (target, method, path, status, body[:200])
        assert b"model bytes" not in body and b'"fid"' not in body, (target, method, path)
    listed = store.boto3().list_objects_v2(Bucket="models", Prefix="lockdown/")["Contents"]
    assert [o["Key"] for o in listed] == ["lockdown/1/saved_model.pb"]
    got = store.boto3().get_object(Bucket="models", Key="lockdown/1/saved_model.pb")["Body"].read()
    assert got == b"model bytes"


def test_the_store_keys_and_certificates_are_private(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    node, _ = repo_node
    security = node.root / "etc/appliance/seaweedfs"
    assert stat.S_IMODE(security.stat().st_mode) == 0o700
    for name in ("security.toml", "node.key"):
        assert stat.S_IMODE((security / name).stat().st_mode) == 0o600
    assert not (security / "ca.key").exists()    # no further certificate can be issued
    toml = (security / "security.toml").read_text()
    keys = [line.split('"')[1] for line in toml.splitlines() if line.startswith('key = "')
            and "/" not in line]
    assert len(keys) == 4 and len(set(keys)) == 4 and all(len(k) >= 40 for k in keys)
    logs = "".join(p.read_text(errors="replace") for p in (node.root / "var/log").rglob("*.log"))
    assert not any(k in logs for k in keys)
    assert (security / "node.key").read_text().strip().splitlines()[1] not in logs


def test_doctor_finds_nothing_wrong_on_a_healthy_repo_node(
        repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    node, store = repo_node
    result = node.cli("doctor", *node.overrides, "--set", "node.role=repo",
                      "--set", f"repo.port={store.port}",
                      "--set", f"repo.internal.port.base={store.internal_base}", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and result.stdout.rstrip().endswith("no problems found")
    assert "[repo data]" in result.stdout and "has no version" not in result.stdout


def test_seaweedfs_leaves_no_log_files_in_tmp(repo_node: tuple[NodeUnderTest, ObjectStore]) -> None:
    """glog names its files weed.<host>.<user>.log.<LEVEL>.<date>-<time>.<pid> in $TMPDIR: the
    running server's pid is in none of them (its lines go to objectstore.log, rotated by size)."""
    import tempfile

    from appliance.portowners import descendants

    node, _ = repo_node
    (store,) = [p["pid"] for p in node.status()["processes"] if p["name"] == "objectstore"]
    weeds = [pid for pid in descendants({store})
             if Path(f"/proc/{pid}/exe").resolve().name == "weed"]
    assert weeds, "no weed process under the object store"
    tmp = Path(tempfile.gettempdir())
    assert [p.name for w in weeds for p in tmp.glob(f"weed.*.{w}")] == []
    log = (node.root / "var/log/appliance/objectstore.log").read_text()
    assert any(line.startswith("I") and "Start Seaweed Master" in line for line in log.splitlines())


def _objects(store: ObjectStore) -> set[tuple[str, ...]]:
    """(size, md5, url) of every object of the bucket but the nodes' own reports (each agent
    rewrites ``.appliance/nodes/<address>.json``, the settings it applied, as it runs)."""
    listed = store.s3cmd("ls", "--recursive", "--list-md5", "s3://models/")
    assert listed.returncode == 0, listed.stderr
    objects = {tuple(line.split()[2:]) for line in listed.stdout.splitlines() if line.strip()}
    return {o for o in objects if not o[-1].startswith("s3://models/.appliance/nodes/")}


def test_the_store_backed_up_with_s3cmd_comes_back_after_its_data_is_lost(
        repo_node: tuple[NodeUnderTest, ObjectStore], tmp_path: Path) -> None:
    """README "Backup and restore": `s3cmd sync` the bucket to a directory; the node stopped and its
    data dir emptied (a lost disk), started again: the same command the other way restores every
    object, byte for byte (md5), under the node's same credentials."""
    import shutil

    node, store = repo_node
    model = tmp_path / "model/3"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(saved_model_bytes(300))
    (model / "variables/variables.data-00000-of-00001").write_bytes(os.urandom(3 << 20))
    assert store.s3cmd("sync", f"{tmp_path / 'model'}/", "s3://models/backed-up/").returncode == 0
    before = _objects(store)
    assert any(url.startswith("s3://models/backed-up/3/") for _, _, url in before)
    backup = tmp_path / "backup"
    saved = store.s3cmd("sync", "s3://models/", f"{backup}/")
    assert saved.returncode == 0, saved.stderr

    pids = node.pids()
    assert node.cli("down", timeout=120).returncode == 0
    node.kill_all(wait_gone(pids, 30))
    data = node.root / "data/objectstore"
    for entry in data.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    started = _up(node, store.port, store.internal_base)
    assert started.returncode == 0, started.stdout + started.stderr
    assert _objects(store) == set()

    restored = store.s3cmd("sync", f"{backup}/", "s3://models/")
    assert restored.returncode == 0, restored.stderr
    assert _objects(store) == before
