"""The README's own-model walkthrough, run as written: the shell block marked
``<!-- walkthrough: own-model -->`` is read from README.md and run against a running trial node
(only its address is changed), so the README cannot drift from what works. It must end with the
new model's answers, through Envoy, as the README shows them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.node_harness import new_node, node_running

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"<!-- walkthrough: own-model[^>]*-->\n```sh\n(.*?)```\n<!-- /walkthrough -->", re.S)


def readme_walkthrough() -> str:
    found = BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md must hold exactly one own-model walkthrough block"
    return found[0]


def test_the_readme_walkthrough_serves_your_own_model(builtin_models: Path, tmp_path: Path) -> None:
    script = readme_walkthrough()
    expected = [line[2:] for line in script.splitlines() if line.startswith("# {")]
    assert expected, "the walkthrough shows the answers it expects as '# {...}' lines"

    # A checkout-like directory: .venv, clients/ and a trial node in .node (as scripts/run.sh
    # leaves it), its ports in the config file so that the walkthrough's `up` keeps them.
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to((REPO / ".venv").resolve(), target_is_directory=True)
    (work / "clients").symlink_to(REPO / "clients", target_is_directory=True)
    node = new_node(work / ".node", builtin_models, ["saved_model_half_plus_two_mkl", "resnet"])
    settings = dict(item.split("=", 1) for item in node.overrides[1::2])  # --set k=v pairs
    settings["logviewer.enabled"] = "false"
    config = node.root / "etc/appliance/appliance.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump(settings))

    started = node.cli("up", "--timeout", "300")
    with node_running(node, started):
        script = script.replace("localhost:8080", f"{node.address}:{node.http_port}")
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr[-5000:]
        answers = run.stdout.splitlines()
        for line in expected:
            assert line in answers, (line, run.stdout)
        status = node.status()
        assert "my_model" in status["models"], status
