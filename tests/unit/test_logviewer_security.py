"""Path traversal, injection, CSRF, cookies and headers of the logviewer (Flask test client).

A secret is planted outside the log and model roots (next to the node root, and in the node's
etc/ dir, which is inside the node root but outside both served roots); every attempt must be
refused with a 4xx and no response may contain a byte of it.
"""

from __future__ import annotations

import re

import pytest

from tests.unit.test_logviewer_app import MODEL, Site, build_site, csrf_of, text

# Every endpoint that takes a file path, with the path put where {} is.
FILE_ENDPOINTS = ["/logs/view/{}", "/logs/search/{}?q=SECRET", "/logs/download/{}",
                  "/api/logs/chunk/{}", "/api/logs/tail/{}?after=0",
                  f"/models/{MODEL}/123/file/{{}}"]

# Paths relative to the log root (and, through FILE_ENDPOINTS, the model version dir).
ATTEMPTS = [
    "../../../../outside/secret.txt",                  # plain ..
    "../../../secret.txt",
    "../../../etc/appliance/secret.txt",               # inside the node root, outside the roots
    "..%2f..%2f..%2f..%2foutside%2fsecret.txt",        # encoded slash
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",  # encoded dots
    "%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fappliance%2Fsecret.txt",
    "%252e%252e/%252e%252e/%252e%252e/%252e%252e/outside/secret.txt",  # double-encoded
    "%252e%252e%252f%252e%252e%252fsecret.txt",
    "..%252f..%252f..%252fsecret.txt",
    "%25252e%25252e/secret.txt",                       # triple-encoded
    "%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt",            # overlong UTF-8 dots
    "%e0%80%ae%e0%80%ae/secret.txt",
    "..%c0%af..%c0%afsecret.txt",                      # overlong UTF-8 slash
    "..\\..\\..\\secret.txt",                          # backslashes
    "..%5c..%5c..%5csecret.txt",
    "%2f" + "etc/passwd",                               # absolute, encoded leading slash
    "%2F%2Fetc%2Fpasswd",
    "/etc/passwd",                                     # absolute (empty first part)
    "/%2e%2e/%2e%2e/etc/passwd",
    "~/../../secret.txt",
    "model_server.log%00.png",                         # NUL bytes
    "model_server.log%2500",
    "..%00/secret.txt",
    "%00../../secret.txt",
    "evil.log",                                        # absolute symlink out of the root
    "rel.log",                                         # relative symlink out of the root
    "outdir/secret.txt",                               # directory symlink out of the root
    "etcdir/secret.txt",                               # directory symlink to the node's etc
    "etcdir/logviewer.passwd",
    "etcdir/logviewer.secret",
    "sub/../../../../outside/secret.txt",              # .. after a real directory
    "sub/./agent.log/../../../secret.txt",
    "./model_server.log",                              # dot segments at all
    ".hidden.log",                                     # hidden file
    "fifo.log",                                        # not a regular file (must not hang)
    "sub",                                             # a directory
    "model_server.log%0d%0aSet-Cookie:%20x=1",         # header injection
    "nosuch.log",
    "a" * 2000,                                        # too long
    "....//....//secret.txt",
    "..;/..;/secret.txt",
    "%u002e%u002e/secret.txt",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = build_site(tmp_path_factory.mktemp("security"))
    site.login()
    return site


def assert_refused(site: Site, resp, url: str) -> None:
    assert 400 <= resp.status_code < 500, (url, resp.status_code, text(resp)[:300])
    body = resp.get_data()
    for secret in site.secrets:
        assert secret.encode() not in body, url
    assert b"scrypt:" not in body and b"root:x:0:0" not in body, url
    assert "x=1" not in resp.headers.get("Set-Cookie", ""), url


def test_there_are_at_least_30_attempts_per_endpoint() -> None:
    assert len(ATTEMPTS) >= 30
    assert len(ATTEMPTS) * len(FILE_ENDPOINTS) >= 200


@pytest.mark.parametrize("endpoint", FILE_ENDPOINTS)
@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_traversal_and_injection_attempts_are_refused(site: Site, endpoint: str, attempt: str) -> None:
    url = endpoint.format(attempt)
    assert_refused(site, site.client.get(url), url)


MODEL_ATTEMPTS = [
    "/models/..", "/models/%2e%2e", "/models/%2e%2e/%2e%2e/outside", "/models/..%2f..%2foutside",
    "/models/%252e%252e", f"/models/{MODEL}/..", f"/models/{MODEL}/%2e%2e/file/secret.txt",
    f"/models/{MODEL}/123%00", f"/models/{MODEL}/-1", f"/models/{MODEL}/1e3",
    "/models/linked/1", "/models/linked/1/file/secret.txt", "/models/.hidden",
    f"/models/{MODEL}/123/file/evil", f"/models/{MODEL}/7/file/../123/../../../../secret.txt",
    "/models/%00", "/models/a%0d%0aSet-Cookie:x=1",
]


@pytest.mark.parametrize("url", MODEL_ATTEMPTS)
def test_model_path_attempts_are_refused(site: Site, url: str) -> None:
    assert_refused(site, site.client.get(url), url)


@pytest.mark.parametrize("log", ["../../../outside/secret.txt", "evil.log", "/etc/passwd",
                                 "%2e%2e/secret.txt", "etcdir/secret.txt", "model_server.log\x00"])
def test_the_access_logs_name_parameter_is_confined_too(site: Site, log: str) -> None:
    resp = site.client.get("/access", query_string={"log": log})
    assert resp.status_code in (200, 400, 404)
    assert "No access log yet" in text(resp) or resp.status_code >= 400
    for secret in site.secrets:
        assert secret not in text(resp)


def test_directory_listing_never_shows_what_is_outside(site: Site) -> None:
    for page in ("/logs", "/models", f"/models/{MODEL}", f"/models/{MODEL}/123", "/models/linked"):
        html = text(site.client.get(page))
        for secret in site.secrets:
            assert secret not in html


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example",
                                    "javascript:alert(1)", "\r\nLocation: https://evil.example"])
def test_login_never_redirects_off_site(tmp_path, target: str) -> None:
    site = build_site(tmp_path)
    token = csrf_of(site.client)
    resp = site.client.post("/login", data={"password": site.password, "csrf_token": token,
                                            "next": target})
    assert resp.status_code == 302 and resp.location == "/logs"


def test_state_changes_need_the_csrf_token(tmp_path) -> None:
    site = build_site(tmp_path)
    # Login itself is CSRF-protected (no login CSRF).
    resp = site.client.post("/login", data={"password": site.password})
    assert resp.status_code == 400
    token = site.login()
    assert site.client.post("/logout").status_code == 400
    assert site.client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    assert site.client.post("/logout", data={"csrf_token": token},
                            headers={"Origin": "https://evil.example"}).status_code == 403
    assert site.client.get("/logs").status_code == 200          # still logged in
    assert site.client.post("/logout", data={"csrf_token": token},
                            headers={"Origin": "http://localhost"}).status_code == 302
    assert site.client.get("/logs").status_code == 302


def test_logout_by_get_is_not_possible(site: Site) -> None:
    assert site.client.get("/logout").status_code == 405


def test_session_cookie_flags(tmp_path) -> None:
    site = build_site(tmp_path)
    token = csrf_of(site.client)
    resp = site.client.post("/login", data={"password": site.password, "csrf_token": token})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    (tmp_path / "tls").mkdir()
    secure = build_site(tmp_path / "tls")
    client = secure.app.test_client()
    token = csrf_of(client)
    resp = client.post("/login", base_url="https://localhost",
                       data={"password": secure.password, "csrf_token": token},
                       headers={"Origin": "https://localhost"})
    assert "Secure" in resp.headers["Set-Cookie"]


def test_a_forged_session_cookie_is_ignored(site: Site) -> None:
    client = site.app.test_client()
    client.set_cookie("appliance_logviewer", "eyJhdXRoIjoieCJ9.forged.sig")
    assert client.get("/logs").status_code == 302


def test_security_headers(site: Site) -> None:
    resp = site.client.get("/logs")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "<script>" not in text(resp)                       # no inline script anywhere


def test_repeated_failed_logins_are_throttled(tmp_path) -> None:
    site = build_site(tmp_path)
    token = csrf_of(site.client)
    codes = [site.client.post("/login", data={"password": "x", "csrf_token": token}).status_code
             for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    resp = site.client.post("/login", data={"password": site.password, "csrf_token": token})
    assert resp.status_code == 429


def test_oversized_bodies_are_refused(site: Site) -> None:
    token = csrf_of(site.client, "/logs")
    resp = site.client.post("/logout", data={"csrf_token": token, "pad": "x" * 200_000})
    assert resp.status_code == 413


def test_html_in_names_and_queries_is_escaped(site: Site) -> None:
    resp = site.client.get("/logs/search/model_server.log?q=%3Cimg%20src=x%20onerror=alert(1)%3E")
    html = text(resp)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    resp = site.client.get("/access?model=%22%3E%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>alert(1)" not in text(resp)


def test_query_numbers_are_bounded(site: Site) -> None:
    for query in ("offset=-5", "offset=99999999999999999999999", "before=abc", "length=0",
                  "length=999999999999", "offset=1e9"):
        resp = site.client.get(f"/api/logs/chunk/model_server.log?{query}")
        assert resp.status_code == 200, query
        assert len(resp.get_json()["text"]) <= 1024 * 1024
    data = site.client.get("/api/logs/tail/model_server.log?after=999999999999").get_json()
    assert data["reset"] is True
    assert re.search("line 49", data["text"])
