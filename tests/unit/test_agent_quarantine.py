"""The agent and the model server's quarantine record: no stall over a version that fails to load.

The record is written here by :class:`modelserver.quarantine.Quarantine`, the class the model
server writes it with; the model server's answers are data (this tests the agent's rules).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.agent.cycle import Syncer
from appliance.agent.store import LocalStore
from appliance.agent.transfer import Downloader
from modelserver.quarantine import Quarantine, fingerprint
from appliance.sources.local import LocalSource
from tests.tfmodels import saved_model_bytes


class Server:
    answer: dict[int, str] | None = None

    def states(self, name: str) -> dict[int, str] | None:
        return self.answer


def _push(repo: LocalSource, tmp_path: Path, number: int, data: bytes | None = None) -> None:
    src = tmp_path / f"src/{number}-{len(list(tmp_path.glob('src/*')))}"
    src.mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(data if data is not None else saved_model_bytes(200, number))
    repo.push(src, "m", str(number))


def test_a_quarantined_version_never_holds_back_retirement(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    repo = LocalSource(tmp_path / "repo")
    store = LocalStore(tmp_path / "store")
    server = Server()
    qdir = tmp_path / "quarantine"
    syncer = Syncer(("m",), repo, store, Downloader(repo, 2), server,  # type: ignore[arg-type]
                    settle_seconds=0.01, quarantine_dir=qdir)
    for number in (3, 7):
        _push(repo, tmp_path, number)
    syncer.run_once()
    record = Quarantine(str(qdir), "m")       # the model server failed to load v7
    record.add(7, "7", fingerprint(store.root / "m/7"), "DATA_LOSS", "Wire format was corrupt")
    assert list(syncer.quarantined("m")) == [7]

    # The user deletes v7 and pushes v6: v7 serves nothing, so it goes at once (before, the agent
    # waited for v7's replacement while the model server kept aiming at v7).
    repo.delete_version("m", "7")
    _push(repo, tmp_path, 6)
    report = syncer.run_once().models[0]
    assert report.installed == ["6"] and report.retired == ["7"] and not (store.root / "m/7").exists()
    assert "it serves nothing (quarantined since " in caplog.text

    # Only a failed version left in the repository: the old good one is kept.
    _push(repo, tmp_path, 9)
    syncer.run_once()
    Quarantine(str(qdir), "m").add(9, "9", fingerprint(store.root / "m/9"), "UNKNOWN", "no graph")
    for number in (3, 6):
        repo.delete_version("m", str(number))
    server.answer = {3: "END", 6: "AVAILABLE", 9: "END"}
    report = syncer.run_once().models[0]
    assert report.retired == [] and report.waiting == ["retire 3,6"]
    assert "keeping m v3,6: no version in the repository loads (v9 quarantined since " in caplog.text

    # v9 re-pushed with changed files: no longer quarantined for the agent, it replaces v3 and v6
    # once the model server reports it AVAILABLE.
    _push(repo, tmp_path, 9, saved_model_bytes(300, 9))
    report = syncer.run_once().models[0]
    assert report.installed == ["9"] and syncer.quarantined("m") == {}
    server.answer = {9: "AVAILABLE"}
    assert syncer.run_once().models[0].retired == ["3", "6"]


def test_a_version_that_is_not_a_model_is_refused_and_never_installed(tmp_path: Path) -> None:
    repo = LocalSource(tmp_path / "repo")
    store = LocalStore(tmp_path / "store")
    syncer = Syncer(("m",), repo, store, Downloader(repo, 2), None, settle_seconds=0.01)
    _push(repo, tmp_path, 1)
    _push(repo, tmp_path, 2, b"garbage, not a SavedModel")
    report = syncer.run_once().models[0]
    assert report.installed == ["1"] and report.refused == ["2"]
    assert report.reasons["2"].startswith("it is not a model: saved_model.pb is not a tensorflow.SavedModel "
                                          "protobuf (DecodeError:")
    assert sorted(store.versions("m")) == [1] and not list(store.staging_root.iterdir())
    # Remembered by content: not downloaded again; a fixed re-push is installed.
    assert syncer.run_once().models[0].refused == ["2"]
    _push(repo, tmp_path, 2)
    assert syncer.run_once().models[0].installed == ["2"]
