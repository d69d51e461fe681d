"""Releases side by side (issue 13): which release is current and previous, switching by
rename, and refusing a release that is not completely installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.releases import STAMP, Releases


def _install(releases: Releases, name: str, mtime: int) -> None:
    stamp = releases.dir / name / STAMP
    stamp.parent.mkdir(parents=True)
    stamp.write_text("hash\n")
    os.utime(stamp, (mtime, mtime))


def test_switch_keeps_the_release_it_leaves_as_previous(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    _install(releases, "0.1.0-aaa", 100)
    _install(releases, "0.1.0-bbb", 200)
    assert releases.current() is None and releases.previous() is None
    releases.switch("0.1.0-aaa")
    assert (releases.current(), releases.previous()) == ("0.1.0-aaa", None)
    releases.switch("0.1.0-bbb")
    assert (releases.current(), releases.previous()) == ("0.1.0-bbb", "0.1.0-aaa")
    # relative links: the tree can be moved or mounted elsewhere
    assert os.readlink(releases.home / "current") == "releases/0.1.0-bbb"
    assert releases.appliance() == releases.home / "current/bin/appliance"
    releases.switch("0.1.0-bbb")                        # already current: nothing changes
    assert releases.previous() == "0.1.0-aaa"
    assert releases.installed() == ["0.1.0-aaa", "0.1.0-bbb"]
    assert releases.text() == "0.1.0-aaa  previous\n0.1.0-bbb  current"
    assert sorted(p.name for p in releases.home.iterdir()) == ["current", "previous", "releases"]


def test_an_incomplete_or_unknown_release_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    _install(releases, "0.1.0-aaa", 100)
    (releases.dir / "0.1.0-half").mkdir()                # no stamp: the install did not finish
    for name in ("0.1.0-half", "0.2.0-nope"):
        with pytest.raises(ApplianceError, match=r"installed: 0\.1\.0-aaa\); scripts/install-node"):
            releases.switch(name)
    assert releases.current() is None
    assert Releases(tmp_path / "empty").text().startswith("no release installed in ")
