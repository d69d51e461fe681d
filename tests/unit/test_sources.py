"""Model sources, presets, the s3 config keys, and the agent's store/download steps on local disk."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from appliance.agent.cycle import Syncer
from appliance.agent.store import LocalStore
from appliance.agent.transfer import Downloader, VerificationError
from appliance.config import NodePaths, load_config, local_store
from appliance.errors import ConfigError
from appliance.sources import PRESETS, RemoteObject, RemoteVersion, open_source, parse_version
from appliance.sources.base import MANIFEST_FORMAT, MANIFEST_SUFFIX, local_files
from appliance.sources.checksums import BlockHasher, block_count, file_blocks
from appliance.sources.local import LocalSource
from appliance.sources.presets import split_s3_path
from appliance.sources.s3 import S3Location, S3Source
from tests.tfmodels import saved_model_bytes


def make_version(path: Path, seed: int) -> Path:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(saved_model_bytes(3200, seed))
    (path / "variables/variables.data").write_bytes(bytes([seed]) * (3 << 20))
    return path


def test_unknown_s3_type_lists_every_valid_one() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["s3.type=ftp"])
    assert f"valid: none, {', '.join(PRESETS)}" in str(err.value)
    assert {"minio", "s3", "qingstor", "seaweedfs"} <= set(PRESETS)


def test_object_store_repositories_need_a_bucket_and_private_ones_an_endpoint() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["s3.type=minio", "model.base.path=/data/models"])
    problems = dict(err.value.problems)
    assert "s3://bucket" in problems["model.base.path"]
    assert "http://<repo node>:8333" in problems["s3.endpoint"]
    config = load_config(None, ["s3.type=qingstor", "model.base.path=s3://models/team",
                                "sync.interval.seconds=5"])
    assert config.sync.interval_seconds == 5 and config.repo.port == 8333
    assert local_store(config, NodePaths(Path("/r"))) == Path("/r/data/models")


def test_presets_only_differ_in_endpoint_region_and_addressing() -> None:
    qing = S3Location.from_settings("qingstor", "s3://models/a/b", "", "", "", "")
    assert (qing.bucket, qing.prefix) == ("models", "a/b/")
    assert qing.endpoint == "https://s3.pek3b.qingstor.com" and not qing.path_style
    weed = S3Location.from_settings("seaweedfs", "s3://models", "http://10.0.0.5:8333", "", "AK", "SK")
    assert weed.endpoint == "http://10.0.0.5:8333" and weed.path_style and weed.prefix == ""
    assert "SK" not in repr(weed) and "AK" not in repr(weed)
    source = S3Source(weed)
    assert "SK" not in source.describe() and "10.0.0.5" in source.describe()


def test_credentials_come_from_the_environment_when_the_config_has_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    config = load_config(None, ["s3.type=s3", "model.base.path=s3://models"])
    source = open_source(config, NodePaths(Path("/r")))
    creds = source.client._request_signer._credentials  # what boto3 will sign with
    assert creds.access_key == "ENVKEY" and creds.secret_key == "ENVSECRET"


def test_version_dirs_follow_tf_serving_numbering() -> None:
    assert parse_version("00000123") == 123
    assert parse_version("1a") is None and parse_version("") is None
    assert parse_version("-1") is None and parse_version(str(2**63)) is None


@pytest.mark.parametrize("base,parsed", [
    ("s3://models", ("models", "")), ("s3://models/", ("models", "")),
    ("s3://models/team/a/", ("models", "team/a")), ("s3://", None), ("s3:///x", None),
    ("/data/models", None), ("models", None),
])
def test_one_parser_of_s3_base_paths(base: str, parsed: tuple[str, str] | None) -> None:
    assert split_s3_path(base) == parsed


def test_manifest_problems_name_each_missing_changed_or_extra_object() -> None:
    pushed = (RemoteObject("a", 1, "x"), RemoteObject("b", 2, "y"), RemoteObject("c", 3, "z"))
    listed = (RemoteObject("b", 5, "y"), RemoteObject("c", 3, "w"), RemoteObject("d", 1, "v"))
    problems = RemoteVersion("m", 1, "1", listed, pushed).manifest_problems()
    assert problems == [
        "a: missing from the repository (pushed with 1 bytes)",
        "b: size 5 in the repository, 2 when pushed",
        "c: ETag w in the repository, z when pushed (changed after the push)",
        "d: not in the push manifest (added after the push; push the version again to "
        "refresh the manifest)",
    ]
    assert RemoteVersion("m", 1, "1", listed, None).manifest_problems() == []


def test_local_push_is_atomic_and_lists_versions(tmp_path: Path) -> None:
    repo = LocalSource(tmp_path / "repo")
    repo.push(make_version(tmp_path / "src", 1), "m", "00000007")
    versions = repo.versions("m")
    assert list(versions) == [7]
    assert {o.path for o in versions[7].objects} == {"saved_model.pb", "variables/variables.data"}
    assert repo.models() == ["m"]
    assert not list((tmp_path / "repo/.staging").glob("*"))


def test_a_sync_cycle_installs_whole_versions_and_retires_only_after_availability(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    repo = LocalSource(tmp_path / "repo")
    repo.push(make_version(tmp_path / "v1", 1), "m", "1")
    store = LocalStore(tmp_path / "store")

    class Server:
        """The model server's answers as data: this tests the agent's rule, not the server."""

        answer: dict[int, str] | None = None

        def states(self, name: str) -> dict[int, str] | None:
            return self.answer

    server = Server()
    syncer = Syncer(("m",), repo, store, Downloader(repo, 2), server, settle_seconds=0.01)  # type: ignore[arg-type]
    report = syncer.run_once()
    assert report.models[0].installed == ["1"]
    assert (tmp_path / "store/m/1/variables/variables.data").stat().st_size == 3 << 20
    repo.push(make_version(tmp_path / "v2", 2), "m", "2")
    repo.delete_version("m", "1")
    report = syncer.run_once()
    assert report.models[0].installed == ["2"] and report.models[0].waiting
    assert (tmp_path / "store/m/1").is_dir(), "v1 stays until v2 is AVAILABLE"
    server.answer = {1: "AVAILABLE", 2: "LOADING"}
    syncer.run_once()
    assert (tmp_path / "store/m/1").is_dir()
    server.answer = {1: "AVAILABLE", 2: "AVAILABLE"}
    report = syncer.run_once()
    assert report.models[0].retired == ["1"] and not (tmp_path / "store/m/1").exists()
    assert "retired m v1: it left the repository and v2 is AVAILABLE" in caplog.text
    state = json.loads((tmp_path / "store/.sync-state.json").read_text())
    assert list(state["installed"]["m"]) == ["2"]


def test_block_checksums_do_not_depend_on_how_the_bytes_are_chunked(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4099   # 1,049,344 bytes: not a multiple of the block size
    whole = BlockHasher(1 << 16)
    whole.update(data)
    pieces = BlockHasher(1 << 16)
    for start in range(0, len(data), 7777):      # chunks straddling block boundaries
        pieces.update(data[start:start + 7777])
    (tmp_path / "f").write_bytes(data)
    assert whole.finish() == pieces.finish() == file_blocks(tmp_path / "f", 1 << 16)
    assert len(whole.digests) == block_count(len(data), 1 << 16) == 17


def _manifest_for(repo: Path, name: str, dirname: str, block_size: int) -> None:
    """A push manifest like `models push` writes (local repositories carry no ETags)."""
    objects = [{"path": rel, "size": path.stat().st_size, "etag": "",
                "blocks": file_blocks(path, block_size)}
               for rel, path in local_files(repo / name / dirname)]
    doc = {"format": MANIFEST_FORMAT, "name": name, "version": dirname,
           "checksum": {"algorithm": "xxh3_128", "block_size": block_size}, "objects": objects}
    (repo / name / f"{dirname}{MANIFEST_SUFFIX}").write_text(json.dumps(doc))


def test_manifest_block_checksums_verify_downloads_and_catch_same_size_changes(
        tmp_path: Path) -> None:
    repo = LocalSource(tmp_path / "repo")
    repo.push(make_version(tmp_path / "src", 3), "m", "1")
    _manifest_for(tmp_path / "repo", "m", "1", 1 << 20)
    version = repo.versions("m")[1]
    data = version.pushed(RemoteObject("variables/variables.data", 3 << 20))
    assert data is not None and len(data.blocks) == 3 and data.block_size == 1 << 20
    assert Downloader(repo, 2).fetch(version, tmp_path / "ok") == version.size
    assert (tmp_path / "ok/variables/variables.data").read_bytes() == bytes([3]) * (3 << 20)
    # One byte of the last block changes after the push; the size stays the same.
    with (tmp_path / "repo/m/1/variables/variables.data").open("r+b") as handle:
        handle.seek((3 << 20) - 5)
        handle.write(b"\x00")
    with pytest.raises(VerificationError, match="bytes 2097152-3145727 have checksum .* "
                                                "\\(checksum mismatch"):
        Downloader(repo, 2).fetch(version, tmp_path / "bad")
    assert not (tmp_path / "bad/variables/variables.data").exists()
    # sync.verify: size skips content checks, as before.
    Downloader(repo, 2, verify="size").fetch(version, tmp_path / "sized")


def test_a_manifest_whose_checksums_do_not_fit_the_sizes_is_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = LocalSource(tmp_path / "repo")
    repo.push(make_version(tmp_path / "src", 4), "m", "1")
    _manifest_for(tmp_path / "repo", "m", "1", 1 << 20)
    path = tmp_path / "repo/m/1.manifest.json"
    doc = json.loads(path.read_text())
    doc["objects"][-1]["blocks"].pop()
    path.write_text(json.dumps(doc))
    assert repo.versions("m")[1].manifest is None
    assert "ignoring unreadable push manifest" in caplog.text
