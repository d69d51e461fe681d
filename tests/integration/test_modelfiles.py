"""The agent's version check (appliance/modelfiles.py) in a fresh interpreter: what it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.tfmodels import saved_model_bytes


def test_the_check_does_not_import_tensorflow(tmp_path: Path) -> None:
    """Importing TF's saved_model_pb2 imports all of TensorFlow (seconds, ~670 MB): the agent must not."""
    (tmp_path / "saved_model.pb").write_bytes(saved_model_bytes(64))
    script = ("import sys\nfrom pathlib import Path\nfrom appliance.modelfiles import check_version\n"
              f"check_version(Path({str(tmp_path)!r}))\n"
              "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'onnx')], 'imported'\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)
