"""The dashboard and the access log on the shared dev cluster, in real headless Chromium.

REST and gRPC load goes through serving-1's Envoy (balanced over the three serving nodes);
serving-1's logviewer samples every node's metrics page into its store, and the dashboard drawn
by Chromium shows a non-empty series for each model and each node. Then an hour of samples is
added to the store, and the page's own server time (``Server-Timing``, measured inside the
logviewer from the start of the request to the rendered page) stays under 300 ms.
Screenshots go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import time
from pathlib import Path

import pytest
import requests

from logviewer import charts

from tests.conftest import wait_until
from tests.e2e import chromium
from tests.e2e.chromium import browser  # noqa: F401 - a fixture
from tests.e2e.shared_cluster import MODEL, Load, grpc_sender, rest_sender

pytestmark = pytest.mark.slow
SHOTS = "dashboard"


def session(cluster, node) -> requests.Session:
    """A logged-in session on ``node``'s logviewer (the password `up` left in its 0600 file)."""
    password = (Path(node.root) / "etc/appliance/logviewer.initial-password").read_text().strip()
    s = requests.Session()
    base = logviewer(cluster, node)
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{base}/login").text).group(1)
    assert s.post(f"{base}/login", data={"password": password, "csrf_token": token}).ok
    return s


def logviewer(cluster, node) -> str:
    return f"http://{node.address}:{cluster.ports['logviewer.port']}"


def series(data: dict, chart: str) -> dict[str, list]:
    return {s["name"]: s["values"] for c in data["charts"] if c["id"] == chart for s in c["series"]}


@pytest.fixture(scope="module")
def loaded(cluster):
    """Two sample intervals or more of REST and gRPC load through serving-1."""
    first = cluster.node("serving-1")
    serving = [n.address for n in cluster.nodes if n.role == "serving"]
    s = session(cluster, first)
    base = logviewer(cluster, first)

    def every_node_served() -> dict | None:
        data = s.get(f"{base}/api/dashboard", params={"minutes": 15}, timeout=30).json()
        per_node = series(data, "rps-node")
        busy = [n for n in serving if any(v for v in per_node.get(n, []) if v)]
        latency = series(data, "p50-model").get(MODEL, [])
        return data if len(busy) == len(serving) and any(latency) else None

    rest = rest_sender(cluster.rest(first))
    grpc_target = f"{first.address}:{cluster.ports['grpc.port']}"
    with Load(rest, threads=2) as load_rest, Load(grpc_sender(grpc_target), threads=1) as load_grpc:
        data = wait_until(every_node_served, 120, interval=2, what="every node in the dashboard")
    assert load_rest.count() > 0 and load_rest.failures() == 0
    assert load_grpc.count() > 0 and load_grpc.failures() == 0
    return first, serving, s, data


def test_the_dashboard_draws_every_model_and_node_in_chromium(cluster, loaded, browser) -> None:
    first, serving, _, _ = loaded
    base = logviewer(cluster, first)
    password = (Path(first.root) / "etc/appliance/logviewer.initial-password").read_text().strip()
    chromium.login(browser, f"{base}/dashboard?minutes=15", password)
    chromium.wait_drawn(browser)
    assert "/dashboard" in browser.current_url

    def drawn(chart: str) -> dict[str, int]:
        """Points drawn per series of a chart (read in one go: the page redraws every interval)."""
        return browser.execute_script(
            "var out = {}; document.querySelectorAll('figure[data-chart=\"' + arguments[0] +"
            " '\"] ul.legend li').forEach(function (li) { out[li.dataset.series] ="
            " +li.dataset.points; }); return out;", chart)

    for chart in ("rps-model", "p50-model", "p99-model", "errors-model"):
        assert drawn(chart).get(MODEL, 0) > 0, (chart, drawn(chart))
    assert any(name.startswith(MODEL) and n > 0 for name, n in drawn("rps-version").items())
    for chart in ("rps-node", "p50-node"):
        assert all(drawn(chart).get(node, 0) > 0 for node in serving), (chart, drawn(chart))
    # What clients saw: the load went through serving-1's Envoy.
    assert drawn("rps-edge").get(first.address, 0) > 0 and drawn("errors-edge").get(first.address, 0) > 0
    processes = drawn("cpu-process")
    for node in serving:
        assert processes.get(f"model_server@{node}", 0) > 0, processes
        assert drawn("memory-process").get(f"envoy@{node}", 0) > 0
    # Every line is an SVG path with points, drawn by the page's own script (no CDN).
    lines = browser.execute_script("return Array.from(document.querySelectorAll("
                                   "'figure[data-chart=\"rps-node\"] svg path.line'), p => p.getAttribute('d'));")
    assert len(lines) >= len(serving) and all(d.startswith("M") for d in lines)
    chromium.shot(browser, SHOTS, "01-dashboard-after-load")
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    chromium.shot(browser, SHOTS, "02-dashboard-processes")


def _hour_of_rows(nodes: list[str], now: float, interval: float, until: float) -> list[tuple]:
    """An hour of plausible ticks (two models, four processes per node) for ``nodes`` before
    ``until``, a quarter second off whole seconds, so they can be told apart from the real ones."""
    rows = []
    tick = int(now) - 3600 + 0.25
    while tick < until:
        per_node = {}
        for index, node in enumerate(nodes):
            per_node[node] = {
                "dt": interval, "ev": [["sync", f"{node}: synced"]] if int(tick) % 900 == 0 else [],
                "m": {f"{MODEL}\t1": [400 + index, index, [[100.0, 1000.0, 200], [1000.0, 10000.0, 200 + index]]],
                      "other\t2": [10, 0, [[1000.0, 10000.0, 10]]]},
                "p": {p: [0.05 * (index + 1), 80 * 2**20] for p in ("envoy", "model_server", "agent", "logviewer")}}
        rows.append((tick, json.dumps(charts.tick(per_node), separators=(",", ":"))))
        tick += interval
    return rows


def test_an_hour_of_data_renders_in_under_300_ms_server_time(cluster, loaded, browser) -> None:
    first, serving, s, _ = loaded
    base = logviewer(cluster, first)
    store = Path(first.root) / "var/lib/appliance/dashboard.sqlite"
    interval = 10.0
    now = time.time()
    oldest_real = s.get(f"{base}/api/dashboard", params={"minutes": 60}).json()["times"][0]
    rows = _hour_of_rows(serving, now, interval, until=oldest_real - interval)
    db = sqlite3.connect(str(store), timeout=30)
    try:
        with db:
            db.executemany("INSERT INTO ticks VALUES (?, ?)", rows)
        timings = []
        for _ in range(5):
            resp = s.get(f"{base}/dashboard", params={"minutes": 60}, timeout=30)
            assert resp.ok
            timings.append(float(re.fullmatch(r"app;dur=([\d.]+)", resp.headers["Server-Timing"]).group(1)))
        data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', resp.text).group(1))
        assert len(data["times"]) >= 340, len(data["times"])       # an hour at 10 s
        assert len(series(data, "rps-node")) >= len(serving)
        print(f"dashboard page with {len(data['times'])} ticks of {len(serving)} nodes: "
              f"server time {', '.join(f'{t:.0f}' for t in timings)} ms")
        assert statistics.median(timings) < 300, timings

        password = (Path(first.root) / "etc/appliance/logviewer.initial-password").read_text().strip()
        chromium.login(browser, f"{base}/dashboard?minutes=60", password)
        chromium.wait_drawn(browser)
        chromium.shot(browser, SHOTS, "03-dashboard-an-hour")
    finally:
        with db:
            db.execute("DELETE FROM ticks WHERE tick - CAST(tick AS INTEGER) = 0.25")
        db.close()


def test_the_access_log_names_model_version_and_node_of_rest_and_grpc(cluster, loaded, browser) -> None:
    first, serving, s, _ = loaded
    base = logviewer(cluster, first)
    html = wait_until(lambda: (lambda t: t if "PredictionService/Predict" in t else None)(
        s.get(f"{base}/access", params={"model": MODEL, "q": "PredictionService"}).text), 30,
        interval=1, what="gRPC lines in the access log")
    matched = int(re.search(r'id="matched">(\d+)<', html).group(1))
    assert matched > 0
    rest = s.get(f"{base}/access", params={"model": MODEL, "status": "200"}).text
    for node in serving:
        assert f">{node}</a> <b>" in rest, node       # counts by node name every serving node
    assert re.search(rf'>{re.escape(MODEL)}</a> <b>\d+</b>', rest)
    log = Path(first.root) / "var/log/appliance/access.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()[-200:]]
    grpc = [e for e in lines if "PredictionService/Predict" in str(e.get("path"))]
    assert grpc and all(e["model"] == MODEL and e["version"] for e in grpc), grpc[:2]
    assert all(e["edge_node"] == first.address for e in lines)

    from selenium.webdriver.common.by import By

    password = (Path(first.root) / "etc/appliance/logviewer.initial-password").read_text().strip()
    chromium.login(browser, f"{base}/access?model={MODEL}", password)
    assert "/access" in browser.current_url, browser.current_url
    assert browser.find_element(By.ID, "matched").text.isdigit()
    chromium.shot(browser, SHOTS, "04-access-log-by-model")
