"""The cluster page against a real Envoy: one upstream that answers its health check, one that
does not, and requests through Envoy counted per host. The admin itself is never exposed."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests

from appliance.render import find_binary
from tests.conftest import Processes, free_ports, wait_until
from tests.unit.test_logviewer_app import build_site, text

pytestmark = pytest.mark.slow

BOOTSTRAP = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: rest
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rest
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: model_server_rest}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: model_server_rest
    type: STATIC
    connect_timeout: 0.5s
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /v1/models/m}}
    outlier_detection: {{consecutive_5xx: 3}}
    load_assignment:
      cluster_name: model_server_rest
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {alive}}}}}}}
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}
"""


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"model_version_status": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def envoy(tmp_path: Path, processes: Processes) -> Iterator[dict]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    admin, listen, dead = free_ports("127.0.0.1", "127.0.0.1", "127.0.0.1")
    ports = {"admin": admin, "listen": listen, "alive": upstream.server_address[1], "dead": dead}
    config = tmp_path / "envoy.yaml"
    config.write_text(BOOTSTRAP.format(**ports))
    processes.start([find_binary("envoy"), "-c", str(config), "--disable-hot-restart",
                     "--concurrency", "1", "--base-id", str(ports["admin"])],
                    log=tmp_path / "envoy.log")
    admin = f"http://127.0.0.1:{ports['admin']}"
    wait_until(lambda: requests.get(f"{admin}/ready", timeout=1).ok, 60, what="envoy")

    def both_checked() -> bool:
        body = requests.get(f"{admin}/clusters", timeout=1).text
        return ("health_flags::healthy" in body and "/failed_active_hc" in body)
    wait_until(both_checked, 30, what="health checks of both hosts")
    try:
        yield ports
    finally:
        upstream.shutdown()


def test_cluster_page_shows_each_host_as_envoy_sees_it(envoy: dict, tmp_path: Path) -> None:
    for _ in range(5):
        assert requests.get(f"http://127.0.0.1:{envoy['listen']}/v1/models/m", timeout=5).ok
    site = build_site(tmp_path, admin_port=envoy["admin"])   # a node whose Envoy is this one
    site.login()
    html = text(site.client.get("/cluster"))
    assert "model_server_rest" in html
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr>\s*<td class=\"mono\">([\d.:]+)</td>.*?</tr>", html, re.S)}
    alive, dead = f"127.0.0.1:{envoy['alive']}", f"127.0.0.1:{envoy['dead']}"
    assert set(rows) == {alive, dead}
    assert ">HEALTHY<" in rows[alive] and "failed health check" not in rows[alive]
    assert ">UNHEALTHY<" in rows[dead] and "failed health check" in rows[dead]
    counts = re.findall(r'<td class="num">(\d+)</td>', rows[alive])
    assert int(counts[0]) >= 5                               # rq_total through Envoy
    assert "outlier ejections active 0" in html
    # Nothing of the admin leaks: no link to it, no port number of it.
    assert str(envoy["admin"]) not in html and "/clusters" not in html
