"""The quarantine record (modelserver/quarantine.py): keyed by files and by the settings of the load."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modelserver.quarantine import FORMAT, Quarantine, current, fingerprint, read, record_path


def test_an_entry_lasts_until_the_files_or_the_settings_change(tmp_path: Path) -> None:
    model, qdir = tmp_path / "m", tmp_path / "quarantine"
    (model / "3/variables").mkdir(parents=True)
    (model / "3/saved_model.pb").write_bytes(b"bad")
    (model / "3/variables/variables.index").write_bytes(b"x")
    files = fingerprint(model / "3")
    assert files and fingerprint(model / "3") == files and fingerprint(model / "4") == ""
    record = Quarantine(str(qdir), "a/model", "platform=tensorflow tags=serve")
    record.add(3, "3", files, "DATA_LOSS", "Wire format was corrupt")
    path = record_path(qdir, "a/model")
    assert path.name == "a%2Fmodel.json"
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["versions"]["3"]["context"] == "platform=tensorflow tags=serve"
    assert list(current(qdir, "a/model", model)) == [3]

    # A restart with the same settings keeps it; the files unchanged keep it quarantined.
    again = Quarantine(str(qdir), "a/model", "platform=tensorflow tags=serve")
    assert again.refresh(str(model), {3: "3"}) == {3}
    # Other settings (a fixed flag): the entry goes, the version gets another try.
    other = Quarantine(str(qdir), "a/model", "platform=tensorflow tags=serve,gpu")
    assert other.entries == {} and not path.exists()

    # Changed files: gone for every reader, and for the model server's next poll.
    record = Quarantine(str(qdir), "a/model")
    record.add(3, "3", files, "DATA_LOSS", "Wire format was corrupt")
    os.utime(model / "3/variables/variables.index", (1, 1))
    assert current(qdir, "a/model", model) == {}
    assert record.refresh(str(model), {3: "3"}) == set() and not path.exists()
    # A version that left the disk leaves the record too.
    record.add(3, "3", fingerprint(model / "3"), "UNKNOWN", "x")
    assert record.refresh(str(model), {}) == set() and read(qdir, "a/model") == {}


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("not json")
    assert read(tmp_path, "m") == {}
    (tmp_path / "m.json").write_text(json.dumps({"format": "other"}))
    assert read(tmp_path, "m") == {}
    assert read(None, "m") == {} and Quarantine(None, "m").entries == {}
