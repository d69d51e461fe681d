"""The logviewer's pages and endpoints through Flask's test client, on real files in a temp root.

Also the home of the fixtures the other ``test_logviewer_*`` modules import: a node root with
logs, an access log and a model store, and a secret planted outside the roots that no
response may ever contain.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.config import NodePaths, load_config
from logviewer import create_app, credentials
from tests.conftest import free_port

MODEL = "half_plus_two"


@dataclass
class Site:
    tmp: Path
    paths: NodePaths
    app: Flask
    client: FlaskClient
    password: str
    secrets: list[str]          # strings that must never appear in any response

    def login(self, client: FlaskClient | None = None) -> str:
        """Log ``client`` in; return its CSRF token."""
        return login(client or self.client, self.password)


def csrf_of(client: FlaskClient, page: str = "/login") -> str:
    html = client.get(page).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def login(client: FlaskClient, password: str) -> str:
    token = csrf_of(client)
    resp = client.post("/login", data={"password": password, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    return csrf_of(client, "/logs")


def access_line(i: int, status: int = 200, model: str = MODEL, upstream: str = "10.0.0.1:8501",
                method: str = "POST") -> str:
    return json.dumps({
        "time": f"2025-03-01T10:00:{i % 60:02d}.000Z", "listener": "rest", "method": method,
        "path": f"/v1/models/{model}:predict", "protocol": "HTTP/1.1", "status": status,
        "grpc_status": None, "flags": "-", "duration_ms": i % 17, "upstream_ms": "1",
        "upstream_host": upstream, "attempts": 1, "bytes_received": 30, "bytes_sent": 40,
        "client": "192.0.2.9", "request_id": f"req-{i}"})


def build_site(tmp: Path, model_server_url: str = "http://127.0.0.1:9",
               admin_port: int | None = None) -> Site:
    """A node root with real files; the model server URL defaults to one nothing answers, Envoy's
    admin port (``admin_port``) to a free one."""
    secret = f"TOPSECRET-{secrets.token_hex(8)}"
    etc_secret = f"ETCSECRET-{secrets.token_hex(8)}"
    (tmp / "outside").mkdir()
    (tmp / "outside" / "secret.txt").write_text(secret + "\n")
    (tmp / "secret.txt").write_text(secret + "\n")
    root = tmp / "node"
    paths = NodePaths(root)
    logs = paths.logs
    logs.mkdir(parents=True)
    paths.etc.mkdir(parents=True)
    (paths.etc / "secret.txt").write_text(etc_secret + "\n")
    # Envoy's admin on a port nothing listens on, so "/cluster" never sees a stray Envoy.
    (paths.etc / "appliance.yaml").write_text(f"# {etc_secret}\nmodel.name: {MODEL}\n"
                                              f"envoy.admin.port: {admin_port or free_port()}\n")
    (logs / "model_server.log").write_text(
        "".join(f"2025-03-01 10:00:{i:02d} I server.cc:1] line {i}\n" for i in range(50))
        + "2025-03-01 10:01:00 E server.cc:9] Loading servable failed: <script>alert(1)</script>\n")
    (logs / "envoy.log").write_text("[info] starting main dispatch loop\n[warning] upstream slow\n")
    (logs / "supervisord.log").write_text("INFO spawned: 'envoy' with pid 42\n")
    (logs / "access.log").write_text("".join(
        access_line(i, status=(503 if i % 10 == 9 else 404 if i % 7 == 6 else 200),
                    model=("resnet" if i % 3 == 0 else MODEL),
                    upstream=("10.0.0.2:8501" if i % 2 else "10.0.0.1:8501")) + "\n"
        for i in range(40)) + "not json\n")
    (logs / "model_server.log.1").write_text("rotated line\n")
    (logs / "sub").mkdir()
    (logs / "sub" / "agent.log").write_text("agent started\n")
    (logs / "current.log").symlink_to("model_server.log")           # inside: allowed
    (logs / "evil.log").symlink_to(tmp / "outside" / "secret.txt")  # absolute link out
    (logs / "rel.log").symlink_to("../../../../outside/secret.txt")   # relative link out
    (logs / "outdir").symlink_to(tmp / "outside", target_is_directory=True)
    (logs / "etcdir").symlink_to(paths.etc, target_is_directory=True)
    (logs / ".hidden.log").write_text(secret + "\n")
    os.mkfifo(logs / "fifo.log")
    version = paths.models / MODEL / "123"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x08\x01" * 64)
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 1000)
    (version / "evil").symlink_to(tmp / "outside" / "secret.txt")
    (paths.models / MODEL / "0007").mkdir()            # TF Serving's version 7
    (paths.models / MODEL / "0007" / "saved_model.pb").write_bytes(b"old")
    (paths.models / "linked").symlink_to(tmp / "outside", target_is_directory=True)
    password = credentials.set_password(paths.etc)
    config = load_config(paths.etc / "appliance.yaml")
    app = create_app(paths, config, rest_base=model_server_url)
    app.config["TESTING"] = True
    return Site(tmp, paths, app, app.test_client(), password, [secret, etc_secret])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


@pytest.fixture
def client(site: Site) -> FlaskClient:
    site.login()
    return site.client


def text(resp) -> str:
    return resp.get_data(as_text=True)


# ----------------------------------------------------------------------------- login and pages


PAGES = ["/", "/logs", "/logs/view/model_server.log", "/logs/search/model_server.log?q=x",
         "/logs/download/model_server.log", "/api/logs/chunk/model_server.log",
         "/api/logs/tail/model_server.log", "/access", "/models", f"/models/{MODEL}",
         f"/models/{MODEL}/123", f"/models/{MODEL}/123/file/saved_model.pb", "/cluster",
         "/dashboard", "/api/dashboard", "/shadow", "/api/shadow"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_needs_a_login(site: Site, page: str) -> None:
    resp = site.client.get(page)
    if page.startswith("/api/"):
        assert resp.status_code == 401
        assert resp.get_json() == {"error": "not logged in"}
    else:
        assert resp.status_code == 302
        assert resp.location.startswith("/login?next=")


def test_login_page_and_healthz_are_public(site: Site) -> None:
    resp = site.client.get("/login")
    assert resp.status_code == 200
    assert 'type="password"' in text(resp)
    assert site.client.get("/healthz").get_data() == b"ok\n"


def test_login_with_the_password_then_logout(site: Site) -> None:
    token = csrf_of(site.client)
    resp = site.client.post("/login", data={"password": site.password, "csrf_token": token,
                                            "next": "/models"})
    assert resp.status_code == 302 and resp.location == "/models"
    assert site.client.get("/models").status_code == 200
    token = csrf_of(site.client, "/logs")
    assert site.client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert site.client.get("/models").status_code == 302


def test_wrong_password_is_refused(site: Site) -> None:
    token = csrf_of(site.client)
    resp = site.client.post("/login", data={"password": "nope", "csrf_token": token})
    assert resp.status_code == 401
    assert "Wrong password" in text(resp)
    assert site.client.get("/logs").status_code == 302


def test_logs_list_shows_size_mtime_and_links(client: FlaskClient) -> None:
    html = text(client.get("/logs"))
    for name in ("model_server.log", "envoy.log", "access.log", "supervisord.log",
                 "model_server.log.1", "sub/agent.log", "current.log"):
        assert f'href="/logs/view/{name}"' in html, name
        assert f'href="/logs/download/{name}"' in html
    assert 'href="/access?log=access.log"' in html
    assert "<time datetime=" in html and " B</td>" in html
    for hidden in ("evil.log", "rel.log", "outdir", "etcdir", ".hidden.log", "fifo.log"):
        assert hidden not in html


def test_log_view_shows_the_end_escaped_with_live_tail(client: FlaskClient, site: Site) -> None:
    resp = client.get("/logs/view/model_server.log")
    html = text(resp)
    assert resp.status_code == 200
    assert "line 49" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert 'class="lv-err"' in html
    assert 'id="live" checked' in html
    size = (site.paths.logs / "model_server.log").stat().st_size
    assert f'data-end="{size}"' in html
    assert "tail.js" in html


def test_log_view_pages_by_byte_offset(client: FlaskClient) -> None:
    html = text(client.get("/logs/view/model_server.log?offset=0&length=200"))
    assert "line 0\n" in html and "line 49" not in html
    assert 'id="newer"' in html and 'id="live"' not in html
    newer = re.search(r'id="newer" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    html2 = text(client.get(newer))
    first = re.search(r"line (\d+)", html2).group(1)
    assert int(first) > 0
    older = re.search(r'id="older" href="([^"]+)"', html2).group(1).replace("&amp;", "&")
    assert "line 0\n" in text(client.get(older))


def test_chunk_api_reads_whole_lines_by_offset(client: FlaskClient) -> None:
    data = client.get("/api/logs/chunk/model_server.log?offset=5&length=120").get_json()
    assert data["start"] > 5
    assert data["text"].startswith("2025-03-01 10:00:01")
    assert data["text"].endswith("\n")
    back = client.get(f"/api/logs/chunk/model_server.log?before={data['start']}&length=100").get_json()
    assert back["end"] == data["start"] and back["text"].endswith("line 0\n")


def test_tail_api_follows_new_lines(client: FlaskClient, site: Site) -> None:
    log = site.paths.logs / "model_server.log"
    first = client.get("/api/logs/tail/model_server.log").get_json()
    assert first["end"] == log.stat().st_size and "line 49" in first["text"]
    with log.open("a") as handle:
        handle.write("a new line\nhalf a li")
    data = client.get(f"/api/logs/tail/model_server.log?after={first['end']}").get_json()
    assert data["text"] == "a new line\n" and data["reset"] is False
    with log.open("a") as handle:
        handle.write("ne\n")
    data = client.get(f"/api/logs/tail/model_server.log?after={data['end']}").get_json()
    assert data["text"] == "half a line\n"
    log.write_text("truncated\n")
    data = client.get(f"/api/logs/tail/model_server.log?after={data['end']}").get_json()
    assert data["reset"] is True and data["text"] == "truncated\n"
    # Rotation: a new file under the same name, already longer than where the tail was.
    inode = data["inode"]
    log.rename(log.with_name("model_server.log.2"))
    log.write_text("x" * 100 + "\nnew file\n")
    data = client.get(f"/api/logs/tail/model_server.log?after={data['end']}&inode={inode}").get_json()
    assert data["reset"] is True and data["text"].endswith("new file\n") and data["inode"] != inode


def test_search_finds_lines_and_links_to_them(client: FlaskClient) -> None:
    html = text(client.get("/logs/search/model_server.log?q=LOADING+servable"))
    assert "1 matching line" in html
    assert "<mark>Loading servable</mark>" in html
    assert "&lt;script&gt;" in html and "<script>alert" not in html
    assert re.search(r'href="/logs/view/model_server.log\?offset=\d+&amp;live=0"', html)
    assert "0 matching lines" in text(client.get("/logs/search/model_server.log?q=LOADING&case=1"))
    assert client.get("/logs/search/model_server.log?q=" + "x" * 1001).status_code == 400


def test_download_streams_the_file_as_an_attachment(client: FlaskClient, site: Site) -> None:
    resp = client.get("/logs/download/sub/agent.log")
    assert resp.status_code == 200
    assert resp.get_data() == b"agent started\n"
    assert resp.headers["Content-Disposition"] == "attachment; filename=agent.log"
    part = client.get("/logs/download/model_server.log", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.get_data() == b"2025-03-01"


def test_a_symlink_inside_the_log_root_is_served(client: FlaskClient) -> None:
    assert b"line 49" in client.get("/logs/download/current.log").get_data()


def test_access_log_table_and_filters(client: FlaskClient) -> None:
    html = text(client.get("/access?all=1"))
    assert html.count("<tr class=\"s") == 40
    assert "10.0.0.2:8501" in html and f"/v1/models/{MODEL}:predict" in html
    only_5xx = text(client.get("/access?status=5xx"))
    assert only_5xx.count('<tr class="s5xx">') == 4 and 'class="s2xx"' not in only_5xx
    by_model = text(client.get("/access?model=resnet"))
    assert by_model.count("<tr class=\"s") == 14 and f"/v1/models/{MODEL}:" not in by_model
    by_node = text(client.get("/access?node=10.0.0.2"))
    assert by_node.count("<tr class=\"s") == 20 and "10.0.0.1:8501</a>" not in by_node
    combined = text(client.get(f"/access?model={MODEL}&status=404&node=10.0.0.1"))
    rows = re.findall(r'<tr class="(s\dxx)">', combined)
    assert rows and set(rows) == {"s4xx"}
    errors = text(client.get("/access?status=error"))
    assert 'class="s2xx"' not in errors and 'class="s5xx"' in errors


def test_an_access_search_it_cannot_do_says_so(client: FlaskClient) -> None:
    """A filter the search does not know is a 400 that says why, never "0 requests match"."""
    for query, words in (("status=5XX0", "5XX0&#39; is not one the search knows"),
                         ("status=oops", "a class (4xx)"), ("since=yesterday", "since: not a time")):
        resp = client.get(f"/access?{query}")
        assert resp.status_code == 400, query
        assert words in text(resp) and 'id="matched"' not in text(resp), query
    assert client.get("/access?status=4xx&since=2026-01-31T10:00").status_code == 200


def test_access_log_counts_every_match_and_pages_to_older_entries(client: FlaskClient, site: Site) -> None:
    log = site.paths.logs / "access.log"
    with log.open("a") as handle:
        for i in range(300):
            handle.write(access_line(1000 + i) + "\n")
    html = text(client.get("/access?all=1"))
    assert html.count("<tr class=\"s") == 200
    assert re.search(r'id="matched">341<', html)  # 340 lines and one not JSON
    older = re.search(r'href="([^"]+)">older', html).group(1).replace("&amp;", "&")
    html2 = text(client.get(older))
    assert html2.count("<tr class=\"s") == 140
    assert "req-0<" not in html and "req-1299" in html and "req-1000<" not in html
    one = text(client.get("/access?q=REQ-1234"))
    assert re.search(r'id="matched">1<', one) and "req-1234" in one
    # The counts by status link to the same search narrowed to one status.
    assert re.search(r'status=503[^"]*">503</a> <b>4</b>', text(client.get("/access?all=1")))


def test_the_access_page_opens_on_the_last_hour(client: FlaskClient, site: Site) -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with (site.paths.logs / "access.log").open("a") as handle:
        handle.write(access_line(7).replace("2025-03-01T10:00:07.000Z", now) + "\n")
    html = text(client.get("/access"))
    assert html.count('<tr class="s') == 1 and "showing the last hour" in html
    assert 'name="since" value=""' in html    # a search from the form covers the whole log
    assert text(client.get("/access?model=resnet")).count('<tr class="s') == 14


def test_access_page_without_an_access_log(client: FlaskClient, site: Site) -> None:
    (site.paths.logs / "access.log").unlink()
    html = text(client.get("/access"))
    assert "No access log yet" in html and "enable.access.log=true" in html


def test_models_list_without_a_model_server(client: FlaskClient) -> None:
    html = text(client.get("/models"))
    assert f'href="/models/{MODEL}"' in html
    assert "unreachable" in html
    assert 'href="/models/linked"' in html and "not configured" in html


def test_model_page_lists_versions_on_disk(client: FlaskClient) -> None:
    html = text(client.get(f"/models/{MODEL}"))
    assert f'href="/models/{MODEL}/123"' in html and f'href="/models/{MODEL}/7"' in html
    assert html.index(">123<") < html.index(">7<")        # newest first
    assert "not serving" in html and "not loaded" in html


def test_version_page_lists_files_with_download_links(client: FlaskClient) -> None:
    html = text(client.get(f"/models/{MODEL}/123"))
    for rel in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        assert f'href="/models/{MODEL}/123/file/{rel}"' in html
    assert "evil" not in html
    resp = client.get(f"/models/{MODEL}/123/file/variables/variables.index")
    assert resp.status_code == 200 and resp.get_data() == b"index"
    assert client.get(f"/models/{MODEL}/999").status_code == 404
    assert client.get(f"/models/{MODEL}/7/file/saved_model.pb").get_data() == b"old"
    assert 'href="/models/half_plus_two/7/file/saved_model.pb"' in text(client.get(f"/models/{MODEL}/7"))
    assert client.get("/models/nosuch").status_code == 404


def test_a_model_linked_from_outside_is_listed_not_browsed(client: FlaskClient, site: Site) -> None:
    html = text(client.get("/models/linked"))
    assert "links out of the store" in html
    for leak in site.secrets:
        assert leak not in html


def test_cluster_page_without_envoy(client: FlaskClient) -> None:
    resp = client.get("/cluster")
    assert resp.status_code == 200
    assert "does not answer" in text(resp)


def test_shadow_page_sums_the_nodes_reports(client: FlaskClient, site: Site) -> None:
    from appliance import fleet
    from modelserver.model_settings import ShadowSettings
    from modelserver.shadow import _Run, _TensorTotals

    assert "No shadow has run yet" in text(client.get("/shadow"))
    store = fleet.Fleet.of_node(load_config(site.paths.etc / "appliance.yaml"), paths=site.paths)
    for node, flipped in (("10.0.0.1", 1), ("10.0.0.2", 3)):
        run = _Run(MODEL, ShadowSettings(version=2))
        run.compared, run.primary_versions = 2, {1}
        run.tensors["<probs>"] = _TensorTotals(rows=40, values=160, raw_rows=flipped, classifier_rows=40,
                                               top1_raw=flipped, topk_raw=40.0, topk_noise=40.0)
        store.write_object(f"shadow/{node}.json", json.dumps({"node": node, "models": {MODEL: run.report()}}).encode())
    page = text(client.get("/shadow"))
    assert "differs" in page and "10.0.0.1, 10.0.0.2" in page and "&lt;probs&gt;" in page and "<probs>" not in page
    assert "95.0 %" in page            # top-1 agreement over both nodes: 4 of 80 rows changed
    assert client.get("/api/shadow").get_json()[MODEL]["requests"]["compared"] == 4


def test_pages_have_working_links(client: FlaskClient) -> None:
    """Every same-site link on every page answers (no 404s/500s), one level deep."""
    seen: set[str] = set()
    for page in ("/logs", "/access", "/models", f"/models/{MODEL}", f"/models/{MODEL}/123",
                 "/logs/view/model_server.log", "/logs/search/model_server.log?q=line", "/cluster"):
        for href in re.findall(r'href="(/[^"]*)"', text(client.get(page))):
            href = href.replace("&amp;", "&")
            if href in seen:
                continue
            seen.add(href)
            status = client.get(href).status_code
            assert status in (200, 206), (page, href, status)
    assert len(seen) > 40


def test_static_files_and_no_external_resources(client: FlaskClient) -> None:
    for asset in ("/static/app.css", "/static/tail.js"):
        assert client.get(asset).status_code == 200
    for page in ("/logs", "/logs/view/model_server.log", "/models", "/access", "/cluster"):
        html = text(client.get(page))
        assert not re.search(r'(src|href)="(https?:)?//', html), page


def test_secret_key_and_password_files_are_private(site: Site) -> None:
    for name in ("logviewer.secret", "logviewer.passwd"):
        mode = stat.S_IMODE((site.paths.etc / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    stored = (site.paths.etc / "logviewer.passwd").read_text()
    assert site.password not in stored and stored.startswith("scrypt:")


def test_a_new_password_logs_every_session_out(client: FlaskClient, site: Site) -> None:
    assert client.get("/logs").status_code == 200
    time.sleep(0.01)
    credentials.set_password(site.paths.etc)
    assert client.get("/logs").status_code == 302


def test_written_times_stay_on_one_line_beside_long_errors(client: FlaskClient, site: Site) -> None:
    """A long load error in the State column used to squeeze "Written" to four lines."""
    for page in (f"/models/{MODEL}", f"/models/{MODEL}/123"):
        assert '<td class="when"><time' in text(client.get(page)), page
    css = (Path(__file__).resolve().parents[2] / "logviewer/static/app.css").read_text()
    assert "td.when { white-space: nowrap; }" in css


def test_tail_api_gives_the_mtime_the_page_shows(client: FlaskClient, site: Site) -> None:
    data = client.get("/api/logs/tail/envoy.log").get_json()
    assert data["mtime"] == (site.paths.logs / "envoy.log").stat().st_mtime
    assert 'id="changed" data-mtime="' in text(client.get("/logs/view/envoy.log"))


def test_dashboard_draws_the_stores_samples(client: FlaskClient, site: Site) -> None:
    import time

    from logviewer import charts, samples

    empty = text(client.get("/dashboard"))
    assert "No samples yet" in empty and 'data-chart="rps-model"' in empty
    store = samples.Store(site.paths.dashboard, 3600)
    before = samples.parse(f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}} 10\n')
    after = samples.parse(f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}} 60\n')
    now = time.time()
    store.add(now - 5, charts.tick({"127.0.0.1": samples.reduce("127.0.0.1", before, after, 5.0)}))
    resp = client.get("/dashboard?minutes=15")
    html = text(resp)
    assert resp.headers["Server-Timing"].startswith("app;dur=")
    blob = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html).group(1)
    data = json.loads(blob)
    rps = next(c for c in data["charts"] if c["id"] == "rps-model")["series"]
    assert rps == [{"name": MODEL, "values": [10.0]}] and data["minutes"] == 15
    assert client.get("/api/dashboard?minutes=15").get_json()["charts"] == data["charts"]
    assert 'src="/static/dashboard.js"' in html and "<script>" not in html


def test_a_dashboard_store_that_cannot_be_opened_is_said_on_the_page(client: FlaskClient, site: Site) -> None:
    site.paths.dashboard.parent.mkdir(parents=True, exist_ok=True)
    site.paths.dashboard.mkdir()          # a directory where the SQLite file should be
    html = text(client.get("/dashboard"))
    assert "cannot be read" in html and 'data-chart="rps-model"' in html
