"""`appliance bootstrap` on user data made by cloud-init's own producer (a real cloud-init run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_bootstrap import CLOUD_CONFIG, _applied


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")
def test_cloud_init_make_mime_output_is_applied(tmp_path: Path) -> None:
    """cloud-init's own producer: base64 parts with a text/cloud-config type."""
    (tmp_path / "cc.yaml").write_text(CLOUD_CONFIG)
    (tmp_path / "boot.sh").write_text("#!/bin/sh\ntrue\n")
    made = subprocess.run(["cloud-init", "devel", "make-mime", "-a", f"{tmp_path / 'boot.sh'}:x-shellscript",
                           "-a", f"{tmp_path / 'cc.yaml'}:cloud-config"],
                          capture_output=True, timeout=120, check=True)
    assert b"Content-Transfer-Encoding: base64" in made.stdout
    config = _applied(tmp_path / "node", made.stdout)
    assert config.node.role == "repo" and config.http_port == 8081
