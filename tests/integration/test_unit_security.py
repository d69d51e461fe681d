"""The systemd unit as install-node.sh renders it: sandboxed (exposure <= 3.0), valid, bounded.

``systemd-analyze security --offline=true`` rates a unit file without loading it into a running
systemd (systemd 252+, Debian 12), so this runs in a container too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/install-node.sh"
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian package systemd)")


def render_unit(tmp_path: Path, memory_max: str = "90%") -> Path:
    """The unit through install-node.sh's own render_template, for a root install."""
    script = (f'source "{SCRIPT}"; SERVICE_USER=appliance VENV=/opt/appliance/current ROOT=/ '
              f'ROOT_NOSLASH= MEMORY_MAX={memory_max} '
              f'render_template "{REPO}/supervisor/appliance.service.in"')
    text = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    unit = tmp_path / "appliance.service"
    unit.write_text(text)
    return unit


@needs_analyze
def test_the_unit_is_sandboxed_to_an_exposure_of_at_most_3(tmp_path: Path) -> None:
    unit = render_unit(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline (systemd < 252): {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_has_a_memory_limit_and_no_placeholder_left(tmp_path: Path) -> None:
    text = render_unit(tmp_path, memory_max="6G").read_text()
    assert "MemoryMax=6G" in text.splitlines()
    assert re.findall(r"@[A-Z_]+@", text) == []
    assert "minfds=16384" in text          # what supervisord.conf.j2 really sets
    assert "minfds=16384" in (REPO / "supervisor/supervisord.conf.j2").read_text()
    # Its start command takes the start timeout from the config (startup.timeout.seconds).
    assert "up --foreground\n" in text


def test_install_node_refuses_a_bad_memory_max(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--prefix", str(tmp_path), "--memory-max", "lots"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--memory-max lots" in result.stderr
