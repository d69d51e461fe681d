"""The sync agent against a real SeaweedFS S3 server on loopback, without a model server.

Pushes go through `appliance models push` and `s3cmd sync`; syncs through `appliance sync --once`
into a serving node's store under a temp root. What a model server would see is the store's
`<name>/<version>` dirs: they must only ever appear whole.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from appliance.agent.transfer import Downloader, VerificationError
from appliance.config import load_config, NodePaths
from appliance.sources import open_source
from appliance.sources.base import ModelSource
from tests.conftest import Processes, wait_until
from tests.integration.objectstore_harness import CLI, ObjectStore, objectstore_for_module
from tests.tfmodels import saved_model_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    yield from objectstore_for_module(tmp_path_factory)


def make_model(path: Path, seed: int, big: int = 0) -> Path:
    """A version dir: a few small files, and optionally one big file under assets.extra/."""
    rng = __import__("random").Random(seed)
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(saved_model_bytes(4000, seed))
    (path / "variables/variables.index").write_bytes(rng.randbytes(300))
    (path / "variables/variables.data-00000-of-00001").write_bytes(rng.randbytes(12 << 20))
    if big:
        (path / "assets.extra").mkdir()
        with (path / "assets.extra/blob.bin").open("wb") as handle:
            for _ in range(big >> 20):
                handle.write(os.urandom(1 << 20))
    return path


def digest_tree(path: Path) -> dict[str, str]:
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h = hashlib.md5()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                h.update(chunk)
        out[file.relative_to(path).as_posix()] = h.hexdigest()
    return out


class Node:
    """A serving node's root, driven through the CLI with aws-style env credentials."""

    def __init__(self, root: Path, store: ObjectStore, names: str) -> None:
        self.root, self.s3 = root, store
        self.overrides = store.client_overrides() + ["--set", f"model.name={names}",
                                                     "--set", "sync.interval.seconds=1"]

    @property
    def models(self) -> Path:
        return self.root / "data/models"

    def cmd(self, *args: str) -> list[str]:
        return CLI + ["--root", str(self.root), *args, *self.overrides]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.s3.env())


def test_push_with_the_cli_then_sync_installs_an_identical_version(store: ObjectStore,
                                                                   tmp_path: Path) -> None:
    model = make_model(tmp_path / "src/7", seed=1)
    node = Node(tmp_path / "node", store, "cli_model")
    pushed = node.cli("models", "push", str(model), "--name", "cli_model")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed cli_model v7" in pushed.stdout and "100%" in pushed.stderr
    synced = node.cli("sync", "--once")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "installed 7" in synced.stdout
    assert digest_tree(node.models / "cli_model/7") == digest_tree(model)
    assert not list((node.models / ".staging").glob("*"))
    again = node.cli("sync", "--once")
    assert again.returncode == 0 and "installed" not in again.stdout.split("sync ok")[-1]
    listing = node.cli("models", "ls")
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:2] == ["cli_model", "7"] and "yes" in line
               for line in listing.stdout.splitlines()), listing.stdout
    # The secret key never reaches output or logs.
    assert store.secret_key not in pushed.stdout + pushed.stderr + synced.stdout + synced.stderr


def test_push_with_s3cmd_sync_like_the_user_guide(store: ObjectStore, tmp_path: Path) -> None:
    make_model(tmp_path / "resnet_s3cmd/1", seed=2)
    result = store.s3cmd("sync", str(tmp_path / "resnet_s3cmd"), f"s3://{store.bucket}/")
    assert result.returncode == 0, result.stderr
    node = Node(tmp_path / "node", store, "resnet_s3cmd")
    synced = node.cli("sync", "--once")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert digest_tree(node.models / "resnet_s3cmd/1") == digest_tree(tmp_path / "resnet_s3cmd/1")


def test_a_garbage_saved_model_pushed_with_s3cmd_is_refused_and_never_installed(
        store: ObjectStore, tmp_path: Path) -> None:
    make_model(tmp_path / "garbage/1", seed=9)
    (tmp_path / "garbage/1/saved_model.pb").write_bytes(b"this is not a SavedModel\n" * 40)
    result = store.s3cmd("sync", str(tmp_path / "garbage"), f"s3://{store.bucket}/")
    assert result.returncode == 0, result.stderr
    node = Node(tmp_path / "node", store, "garbage")
    synced = node.cli("sync", "--once")
    out = synced.stdout + synced.stderr
    assert synced.returncode == 1, out
    refused = [line for line in out.splitlines() if "REFUSED garbage v1" in line]
    assert refused, out
    assert ("it is not a model: saved_model.pb is not a tensorflow.SavedModel protobuf (DecodeError: "
            "Error parsing message with type 'tensorflow.SavedModel'") in refused[0]
    assert "sync refused a version" in out and "installed" not in out.split("sync refused")[-1]
    assert not (node.models / "garbage/1").exists()
    assert not list((node.models / ".staging").glob("*")), "the download is not left behind"
    # `models push` says so before uploading anything.
    pushed = node.cli("models", "push", str(tmp_path / "garbage/1"), "--name", "garbage_push")
    assert pushed.returncode != 0
    assert "garbage/1 is not a model version: saved_model.pb is not a tensorflow.SavedModel" in pushed.stderr
    assert not store.boto3().list_objects_v2(Bucket=store.bucket, Prefix="garbage_push/").get("Contents")


def test_sigkill_mid_download_leaves_no_partial_version_and_the_next_run_completes(
        store: ObjectStore, tmp_path: Path, processes: Processes) -> None:
    model = make_model(tmp_path / "src/3", seed=3, big=200 << 20)
    node = Node(tmp_path / "node", store, "big_model")
    assert node.cli("models", "push", str(model), "--name", "big_model").returncode == 0
    node.overrides += ["--set", "sync.concurrency=2"]
    log = tmp_path / "sync1.log"
    seen_partial: list[str] = []
    version_dir = node.models / "big_model/3"

    def watch() -> None:   # what a model server polling the store would see
        while not stop.is_set():
            if version_dir.exists() and not (version_dir / "assets.extra/blob.bin").exists():
                seen_partial.append("version dir without its big file")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = processes.start(node.cmd("sync", "--once"), log=log, env=store.env())

    def downloading() -> bool:
        parts = list((node.models / ".staging").rglob("blob.bin.part"))
        return bool(parts) and parts[0].stat().st_blocks * 512 > (20 << 20)
    wait_until(downloading, timeout=120, interval=0.01, what="the big file to be half-downloaded")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not version_dir.exists(), "a killed download must not leave a version dir"
    assert list((node.models / ".staging").rglob("*.part")), "the kill hit mid-download"

    second = node.cli("sync", "--once")
    stop.set()
    watcher.join(5)
    assert second.returncode == 0, second.stdout + second.stderr
    assert digest_tree(version_dir) == digest_tree(model)
    assert not seen_partial
    assert not list((node.models / ".staging").glob("*")), "staging is cleaned after install"


def test_a_corrupted_and_a_deleted_object_refuse_the_version_and_v1_keeps_serving(
        store: ObjectStore, tmp_path: Path) -> None:
    node = Node(tmp_path / "node", store, "guarded")
    v1 = make_model(tmp_path / "src/1", seed=4)
    v2 = make_model(tmp_path / "src/2", seed=5)
    assert node.cli("models", "push", str(v1), "--name", "guarded").returncode == 0
    assert node.cli("sync", "--once").returncode == 0
    assert node.cli("models", "push", str(v2), "--name", "guarded").returncode == 0
    s3 = store.boto3()
    # Corrupt one object (different bytes and size) and delete another, after the push.
    s3.put_object(Bucket=store.bucket, Key="guarded/2/variables/variables.index",
                  Body=b"garbage" * 10)
    s3.delete_object(Bucket=store.bucket, Key="guarded/2/saved_model.pb")
    synced = node.cli("sync", "--once")
    out = synced.stdout + synced.stderr
    assert synced.returncode == 1, out
    refused = [line for line in out.splitlines() if "REFUSED guarded v2" in line]
    assert refused, out
    assert "saved_model.pb: missing from the repository" in refused[0]
    assert "variables/variables.index: size 70 in the repository, 300 when pushed" in refused[0]
    assert "Local versions 1 keep serving" in refused[0]
    assert not (node.models / "guarded/2").exists()
    assert digest_tree(node.models / "guarded/1") == digest_tree(v1)


def _pushed(store: ObjectStore, tmp_path: Path, name: str, seed: int) -> tuple[Path, Node, ModelSource]:
    """Version 1 of ``name`` pushed with the CLI; its directory, the node, the node's source."""
    node = Node(tmp_path / "node", store, name)
    v1 = make_model(tmp_path / "src/1", seed=seed)
    assert node.cli("models", "push", str(v1), "--name", name).returncode == 0
    pairs = [a for a in node.overrides if a != "--set"]
    config = load_config(None, [*pairs, f"s3.access.key={store.access_key}",
                                f"s3.secret.key={store.secret_key}"])
    return v1, node, open_source(config, NodePaths(node.root))


def test_an_object_that_changes_while_downloading_fails_its_checksum_or_etag_check(
        store: ObjectStore, tmp_path: Path) -> None:
    """Verification against what was listed/pushed: same size, different bytes.

    A CLI push has a manifest with block checksums, which the download checks; a version
    without one (s3cmd) falls back to the MD5 ETag, single-part and multipart alike.
    """
    v1, _, source = _pushed(store, tmp_path, "racy", seed=6)
    listed = source.versions("racy")[1]
    assert listed.manifest and all(o.blocks for o in listed.manifest)
    s3 = store.boto3()
    # A small object replaced behind the listing's back (same size, other bytes) ...
    s3.put_object(Bucket=store.bucket, Key="racy/1/variables/variables.index",
                  Body=os.urandom(300))
    with pytest.raises(VerificationError, match="checksum mismatch"):
        Downloader(source, 2).fetch(listed, tmp_path / "staging")
    with pytest.raises(VerificationError, match="ETag mismatch"):
        Downloader(source, 2).fetch(replace(listed, manifest=None), tmp_path / "staging1")
    # ... and a multipart one (12 MB in 8 MB parts), re-uploaded with other bytes.
    listed = source.versions("racy")[1]
    assert listed.manifest_problems(), "the next cycle refuses it before downloading"
    listed = replace(listed, objects=tuple(o for o in listed.objects
                                           if o.path == "variables/variables.data-00000-of-00001"))
    reversed_file = tmp_path / "reversed"
    reversed_file.write_bytes((v1 / "variables/variables.data-00000-of-00001").read_bytes()[::-1])
    s3.upload_file(str(reversed_file), store.bucket, "racy/1/variables/variables.data-00000-of-00001")
    with pytest.raises(VerificationError, match="checksum mismatch"):
        Downloader(source, 2).fetch(listed, tmp_path / "staging2")
    assert not list((tmp_path / "staging2").rglob("variables.data-00000-of-00001"))
    with pytest.raises(VerificationError, match="ETag mismatch"):
        Downloader(source, 2).fetch(replace(listed, manifest=None), tmp_path / "staging3")
    assert not list((tmp_path / "staging3").rglob("variables.data-00000-of-00001"))


def test_an_unchanged_push_manifest_is_read_once_and_a_new_one_again(store: ObjectStore,
                                                                      tmp_path: Path) -> None:
    """An idle agent polls the repository every interval: the listing says whether a version's
    manifest changed (its ETag), so an unchanged one is not fetched and parsed again."""
    v1, node, source = _pushed(store, tmp_path, "polled", seed=8)
    reads: list[str] = []
    read_small = source._read_small

    def counted(key: str) -> bytes:     # the real S3 GET, counted
        reads.append(key)
        return read_small(key)

    source._read_small = counted
    first = source.versions("polled")[1]
    assert [source.versions("polled")[1] for _ in range(3)] == [first] * 3
    assert len(reads) == 1 and first.manifest
    # The version pushed again with other bytes: a new manifest, a new ETag, read again.
    (v1 / "variables/variables.index").write_bytes(os.urandom(300))
    assert node.cli("models", "push", str(v1), "--name", "polled").returncode == 0
    second = source.versions("polled")[1]
    assert len(reads) == 2 and second.manifest != first.manifest
    assert not second.manifest_problems()
    # Its manifest deleted: the version is listed without one, and nothing stale is kept.
    store.boto3().delete_object(Bucket=store.bucket, Key=reads[0])
    assert source.versions("polled")[1].manifest is None
    assert not any(key.startswith("polled/") for key in source._manifests())


def test_a_version_that_left_the_repository_stays_until_its_replacement_is_available(
        store: ObjectStore, tmp_path: Path) -> None:
    """Without a model server answering, nothing is retired: serving never loses its version."""
    node = Node(tmp_path / "node", store, "retiring")
    assert node.cli("models", "push", str(make_model(tmp_path / "src/1", seed=7)),
                    "--name", "retiring").returncode == 0
    assert node.cli("sync", "--once").returncode == 0
    assert node.cli("models", "push", str(make_model(tmp_path / "src/2", seed=8)),
                    "--name", "retiring").returncode == 0
    deleted = store.s3cmd("del", "--recursive", f"s3://{store.bucket}/retiring/1/")
    assert deleted.returncode == 0, deleted.stderr
    synced = node.cli("sync", "--once")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert (node.models / "retiring/2").is_dir() and (node.models / "retiring/1").is_dir()
    assert "keeping retiring v1 until v2 is AVAILABLE" in synced.stdout
