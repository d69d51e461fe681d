"""`appliance models add|set|remove` on a running single node (issue 11, Must show 1): an ONNX
model and a SavedModel with batching on are added through the config file, both answer through
Envoy, no supervised process restarts, and the logviewer lists both as serving."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
import requests

from appliance.config import NodePaths
from logviewer import credentials
from tests import onnxmodels
from tests.integration.node_harness import NodeUnderTest, new_node, node_running

pytestmark = pytest.mark.slow

DEFAULT = "saved_model_half_plus_two_mkl"
ONNX = "onnx_half"          # y = 0.5x + 3, model.onnx
BATCHED = "batched_half"    # the SavedModel half_plus_two under a second name
CONFIG = f"# a trial node (test_models_commands.py)\nmodel.name: {DEFAULT}   # the default\n"
WRAPPED_RUNS = ":tensorflow:serving:batching_session:wrapped_run_count"


class Site:
    """The node plus a logged-in session of its logviewer."""

    def __init__(self, node: NodeUnderTest, password: str) -> None:
        self.node = node
        self.viewer = requests.Session()
        token = re.search(r'name="csrf_token" value="([^"]+)"',
                          self.viewer.get(f"{node.logviewer_url}/login", timeout=30).text).group(1)
        resp = self.viewer.post(f"{node.logviewer_url}/login", timeout=30,
                                data={"password": password, "csrf_token": token})
        assert resp.ok and "/logout" in resp.text, resp.text[:500]

    def processes(self) -> dict[str, int]:
        """supervisord's PID and every program's, by name."""
        pidfile = self.node.root / "var/lib/appliance/run/supervisord.pid"
        pids = {p["name"]: p["pid"] for p in self.node.status()["processes"]}
        return {"supervisord": int(pidfile.read_text()), **pids}

    def predict(self, model: str, rows: list[float]) -> requests.Response:
        return requests.post(f"{self.node.url}/v1/models/{model}:predict",
                             json={"instances": rows}, timeout=60)

    def models_page_row(self, model: str) -> str:
        page = self.viewer.get(f"{self.node.logviewer_url}/models", timeout=30)
        assert page.ok, page.status_code
        rows = [row for row in page.text.split("<tr>") if f">{model}</a>" in row]
        assert len(rows) == 1, page.text
        return rows[0].split("</tr>")[0]

    def wrapped_runs(self) -> float:
        """The model server's count of batched runs (its Prometheus page, metrics.path)."""
        page = requests.get(f"{self.node.model_server_url}"
                            "/monitoring/prometheus/metrics", timeout=30)
        assert page.ok, page.text
        found = [line.split()[-1] for line in page.text.splitlines()
                 if line.startswith((WRAPPED_RUNS + " ", WRAPPED_RUNS + "{} "))]  # TF prints "{}"
        return float(found[0]) if found else 0.0


@pytest.fixture(scope="module")
def site(builtin_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    node = new_node(tmp_path_factory.mktemp("models-node"), builtin_models, [DEFAULT])
    store = node.root / "data/models"
    onnxmodels.build(store, {ONNX: {1: onnxmodels.half_plus(3.0)}})
    (store / BATCHED).symlink_to(builtin_models / DEFAULT, target_is_directory=True)
    paths = NodePaths(node.root)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(CONFIG)
    password = credentials.set_password(paths.etc)
    # A model that never loads makes `models add` wait this long, not the 600 s default.
    started = node.cli("up", "--timeout", "300", "--set", "startup.timeout.seconds=120",
                       *node.overrides)
    with node_running(node, started):
        yield Site(node, password)


def test_added_models_serve_with_no_restart_and_the_logviewer_lists_them(site: Site) -> None:
    before = site.processes()
    assert "not configured" in site.models_page_row(ONNX)   # in the store, not served yet

    onnx = site.node.cli("models", "add", ONNX, timeout=300)
    assert onnx.returncode == 0, onnx.stdout + onnx.stderr
    batched = site.node.cli("models", "add", BATCHED, "batching.enabled=true", timeout=300)
    assert batched.returncode == 0, batched.stdout + batched.stderr

    config = site.node.root / "etc/appliance/appliance.yaml"
    assert config.read_text() == (
        CONFIG.replace(f"{DEFAULT}   #", f"{DEFAULT},{ONNX},{BATCHED} #")
        + f"models:\n  {BATCHED}:\n    batching:\n      enabled: true\n")
    assert site.predict(ONNX, [1.0, 2.0]).json() == {"predictions": [3.5, 4.0]}
    runs = site.wrapped_runs()
    assert site.predict(BATCHED, [1.0, 2.0, 5.0]).json() == {"predictions": [2.5, 3.0, 4.5]}
    assert site.wrapped_runs() == runs + 1                  # batched: one run of the batch
    assert site.predict(ONNX, [0.0]).json() == {"predictions": [3.0]}
    assert site.wrapped_runs() == runs + 1                  # not batched
    assert site.processes() == before
    for model, version in ((ONNX, 1), (BATCHED, 123)):   # the built SavedModel is version 00000123
        row = site.models_page_row(model)
        assert "not configured" not in row and f'<span class="ok">{version}</span>' in row, row
        assert '<span class="ok">answers</span>' in row, row


def test_set_turns_batching_off_live(site: Site) -> None:
    before = site.processes()
    done = site.node.cli("models", "set", BATCHED, "batching.enabled=", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "models:" not in (site.node.root / "etc/appliance/appliance.yaml").read_text()
    runs = site.wrapped_runs()
    assert site.predict(BATCHED, [1.0]).json() == {"predictions": [2.5]}
    assert site.wrapped_runs() == runs
    assert site.processes() == before


def test_set_changes_a_served_models_platform_live(site: Site) -> None:
    """auto -> onnx: TF Serving refuses a platform change; here the version loads again."""
    before = site.processes()
    done = site.node.cli("models", "set", ONNX, "platform=onnx", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert site.predict(ONNX, [1.0, 2.0]).json() == {"predictions": [3.5, 4.0]}
    refused = site.node.cli("models", "set", ONNX, "platform=tensorflow", timeout=300)
    assert refused.returncode == 1 and "onnx" in refused.stdout + refused.stderr   # not its files
    assert site.predict(ONNX, [1.0]).json() == {"predictions": [3.5]}
    assert site.processes() == before


def test_remove_stops_serving_the_model_and_keeps_its_files(site: Site) -> None:
    before = site.processes()
    done = site.node.cli("models", "remove", ONNX, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert site.predict(ONNX, [1.0]).status_code == 404
    assert (site.node.root / "data/models" / ONNX / "1/model.onnx").is_file()
    assert site.predict(DEFAULT, [1.0]).json() == {"predictions": [2.5]}
    assert site.processes() == before
    assert "not configured" in site.models_page_row(ONNX)
