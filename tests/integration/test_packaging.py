"""setup.py packages the logviewer's data directories without setuptools' warning banners (about
90 lines of "Package would be ignored" on every first install before)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_build_has_no_package_would_be_ignored_banner(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, "setup.py", "egg_info", "--egg-base", str(tmp_path),
                            "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    assert "would be ignored" not in build.stdout + build.stderr
    built = tmp_path / "lib/logviewer"
    for data in ("static", "templates"):
        shipped = sorted(p.name for p in (REPO / "logviewer" / data).iterdir() if p.is_file())
        assert sorted(p.name for p in (built / data).iterdir() if p.name in shipped) == shipped
