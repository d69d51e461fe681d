"""The repo node for real: `appliance up --set node.role=repo` runs SeaweedFS's S3 API under supervisord
with credentials generated on first start (0600), data under the node root and the bucket created;
the user guide's `s3cmd sync`, boto3 and the aws-style environment variables all work against it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import free_port
from tests.integration.node_harness import NodeUnderTest, new_node, wait_gone
from tests.integration.objectstore_harness import ObjectStore, free_port_block
from tests.tfmodels import saved_model_bytes

pytestmark = pytest.mark.slow
PUBLISHED_KEYS = ("AKIAIOSXODNN7EXAMPLE", "wJalrXUtqFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


@pytest.fixture(scope="module")
def repo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeUnderTest, ObjectStore]]:
    node = new_node(tmp_path_factory.mktemp("reponode"), Path("/nonexistent"), [])
    port, base = free_port(), free_port_block(7)
    started = node.cli("up", "--timeout", "180", *node.overrides, "--set", "node.role=repo",
                       "--set", f"repo.port={port}", "--set", f"repo.internal.port.base={base}")
    pids = node.pids()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        creds = yaml.safe_load((node.root / "etc/appliance/objectstore.credentials").read_text())
        yield node, ObjectStore(node.root, port, base, creds["s3.access.key"], creds["s3.secret.key"])
    finally:
        node.cli("down", timeout=120)
        node.kill_all(wait_gone(pids, 30))


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
    assert (node.root / "data/objectstore").is_dir()


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
