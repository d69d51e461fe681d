"""Reading a peer's scrape page: whatever answers at a member's address (a misconfigured member
list, a reused address) gets the metrics token in the request, and no further than that."""

from __future__ import annotations

import http.server
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from appliance import nodemetrics
from appliance.config import NodePaths, load_config
from appliance.pki import issue

ADDRESS = os.environ.get("APPLIANCE_E2E_FIRST", "127.0.0.1")
TOKEN = "a-cluster-metrics-token-0123456789"


class Peer(http.server.ThreadingHTTPServer):
    """An HTTPS server on a member's address: ``answer`` says what its /metrics does."""

    answer = "page"
    seen: list[tuple[str, str]]

    def handle_error(self, request: object, client_address: object) -> None:
        """A reader that hangs up mid-page (the huge page's, by design) is not a fault to print."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: Peer = self.server  # type: ignore[assignment]
        server.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path == "/metrics" and server.answer == "redirect":
            self.send_response(302)
            self.send_header("Location", f"https://{ADDRESS}:{server.server_port}/stolen")
            self.end_headers()
            return
        body = b"# TYPE x counter\nx 1\n" * (1 if server.answer == "page" else 1 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    cert, key = tmp_path / "peer.crt", tmp_path / "peer.key"
    issue(cert, key, "/CN=peer", f"IP:{ADDRESS}", 1, None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Peer((ADDRESS, 0), Handler)
    server.seen = []
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _read(peer: Peer, tmp_path: Path) -> tuple[str | None, str]:
    config = load_config(None, ["node.address=10.255.0.1", f"logviewer.port={peer.server_port}",
                                f"metrics.token={TOKEN}"])
    return nodemetrics.read_page(config, NodePaths(tmp_path / "root"), ADDRESS, timeout=10)


def test_a_peers_page_is_read_with_the_token(peer: Peer, tmp_path: Path) -> None:
    assert _read(peer, tmp_path) == ("# TYPE x counter\nx 1\n", "")
    assert peer.seen == [("/metrics", f"Bearer {TOKEN}")]


def test_a_redirect_is_not_followed_with_the_token(peer: Peer, tmp_path: Path) -> None:
    peer.answer = "redirect"
    text, error = _read(peer, tmp_path)
    assert text is None and "302" in error and TOKEN not in error
    assert [path for path, _ in peer.seen] == ["/metrics"]


def test_a_huge_page_is_refused_not_held(peer: Peer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    peer.answer = "huge"
    monkeypatch.setattr(nodemetrics, "MAX_PAGE", 1 << 20)
    text, error = _read(peer, tmp_path)
    assert text is None and "larger than 1 MiB" in error
