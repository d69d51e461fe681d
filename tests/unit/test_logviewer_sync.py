"""The models pages' repository and sync state, read from the agent's state file as the agent's
own code writes it (a real Syncer cycle over a local-directory repository + StateFile)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from appliance.agent.cycle import Syncer
from appliance.agent.state import StateFile, state_path
from appliance.agent.store import LocalStore
from appliance.agent.transfer import Downloader
from appliance.config import load_config
from appliance.sources.base import MANIFEST_FORMAT, MANIFEST_SUFFIX
from appliance.sources.local import LocalSource
from logviewer import create_app
from tests.tfmodels import saved_model_bytes
from tests.unit.test_logviewer_app import MODEL, Site, build_site, login, text

S3 = ["s3.type=seaweedfs", "s3.endpoint=http://127.0.0.1:9", "model.base.path=s3://models",
      f"model.name={MODEL},fresh"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def s3_client(site: Site, overrides: list[str] = S3) -> FlaskClient:
    """The same node with a repository configured, logged in."""
    app = create_app(site.paths, load_config(None, overrides), rest_base="http://127.0.0.1:9")
    app.config["TESTING"] = True
    client = app.test_client()
    login(client, site.password)
    return client


def one_cycle(site: Site, tmp_path: Path) -> StateFile:
    """A real sync cycle into the site's store, its report written by the agent's StateFile."""
    repo = LocalSource(tmp_path / "repo")
    for number, payload in ((123, b"same"), (124, b"new"), (125, b"pushed")):
        version = tmp_path / f"src/{number}"
        version.mkdir(parents=True)
        (version / "saved_model.pb").write_bytes(saved_model_bytes(len(payload) * 100, number))
        repo.push(version, MODEL, str(number))
    listed = repo.versions(MODEL)[125]
    (repo.root / f"{MODEL}/125{MANIFEST_SUFFIX}").write_text(json.dumps({
        "format": MANIFEST_FORMAT, "objects": [{"path": o.path, "size": o.size, "etag": o.etag}
                                               for o in listed.objects]}))
    (repo.root / f"{MODEL}/125/saved_model.pb").write_bytes(b"<b>changed</b>")
    syncer = Syncer((MODEL, "fresh"), repo, LocalStore(site.paths.models), Downloader(repo, 2),
                    None, settle_seconds=0.01)
    state = StateFile(state_path(site.paths))
    state.membership(["127.0.0.1", "10.0.0.2"])
    state.cycle_started(1, syncer, 10)
    started = time.time()
    state.cycle_done(1, started, syncer.run_once(), 0, 10)
    return state


def test_without_a_repository_there_is_no_sync_section(site: Site) -> None:
    site.login()
    for page in ("/models", f"/models/{MODEL}"):
        html = text(site.client.get(page))
        assert "Repository sync" not in html and "In the repository" not in html


def test_before_the_agent_reports_the_page_says_so(site: Site) -> None:
    client = s3_client(site)
    html = text(client.get("/models"))
    assert "The agent has not reported yet" in html
    assert str(state_path(site.paths)) in html
    model = text(client.get(f"/models/{MODEL}"))
    assert "No report from the agent yet" in model and "The agent has not reported yet" in model


def test_the_repository_versions_and_the_sync_state(site: Site, tmp_path: Path) -> None:
    one_cycle(site, tmp_path)
    (site.paths.logs / "agent.log").write_text("cycle 1 ok\n")
    client = s3_client(site)
    html = text(client.get("/models"))
    assert f"<code>local directory {tmp_path / 'repo'}</code>" in html
    assert re.search(r'id="sync-age"><time datetime="[^"]+"[^>]*>[^<]+</time> '
                     r'<span class="muted">\(\d+ s ago\)</span>', html)
    assert "cycle 1" in html and "refused a version" in html
    assert "<code>127.0.0.1</code>, <code>10.0.0.2</code>" in html
    assert 'href="/logs/view/agent.log"' not in html, "a link to the log only when it is needed"
    row = html[html.index(f'href="/models/{MODEL}"'):].split("</tr>")[0]
    assert re.search(r'class="refused" title="refused: [^"]*saved_model.pb: size 14 in the '
                     r'repository, 600 when pushed">125 refused', row), row
    assert '<span class="installed" title="installed">124</span>' in row
    assert '<span class="installed" title="installed">123</span>' in row
    fresh = html[html.index('href="/models/fresh"'):].split("</tr>")[0]
    assert "no version" in fresh
    page = text(client.get(f"/models/{MODEL}"))
    table = page[page.index('id="repo-versions"'):].split("</table>")[0]
    assert re.search(r">125</td>\s*<td><span class=\"bad\">refused</span> <span class=\"bad\">"
                     r"its objects do not match the push manifest: saved_model.pb: size 14",
                     table), table
    assert f'href="/models/{MODEL}/124"' in table and "installed</span> in cycle 1" in table
    assert "&lt;b&gt;" not in page and "<b>changed" not in page   # file content never shown


def test_a_stale_report_and_a_dead_agent_are_visible(site: Site, tmp_path: Path) -> None:
    state = one_cycle(site, tmp_path)
    (site.paths.logs / "agent.log").write_text("cycle 1 ok\n")
    # The same file as the agent wrote it, but an hour ago, by a process that is gone now.
    doc = json.loads(state.path.read_text())
    for key in ("written_at", "next_cycle_at", "last_ok_at"):
        doc[key] -= 3600
    doc["pid"] = 2 ** 22 + 1        # above pid_max's default: never a live process
    state.path.write_text(json.dumps(doc))
    html = text(s3_client(site).get("/models"))
    stale = re.search(r'<p class="bad" id="sync-stale">(.*?)</p>', html, re.S).group(1)
    assert "No report from the agent for 1.0 h" in stale
    assert "its process (pid 4194305) is not running" in stale
    assert 'href="/logs/view/agent.log"' in stale
    assert "1.0 h ago" in html


def test_a_failed_cycle_shows_its_cause_escaped_and_keeps_the_last_picture(
        site: Site, tmp_path: Path) -> None:
    state = one_cycle(site, tmp_path)
    state.cycle_failed(2, time.time(), "cannot list s3://models/ at <http://x>: timed out", 1, 10)
    client = s3_client(site)
    html = text(client.get("/models"))
    assert '<span class="bad">FAILED</span>' in html
    assert "cannot list s3://models/ at &lt;http://x&gt;: timed out" in html
    assert "1 failure(s) in a row; last good cycle" in html
    assert "125 refused" in html, "the last completed cycle's versions stay listed"


def test_an_unreadable_state_file_is_reported(site: Site) -> None:
    state_path(site.paths).parent.mkdir(parents=True, exist_ok=True)
    state_path(site.paths).write_text("{half")
    html = text(s3_client(site).get("/models"))
    assert "The agent's state file cannot be read" in html and "is not JSON" in html


def test_every_link_on_the_sync_pages_answers(site: Site, tmp_path: Path) -> None:
    one_cycle(site, tmp_path)
    client = s3_client(site)
    for page in ("/models", f"/models/{MODEL}", "/models/fresh"):
        resp = client.get(page)
        assert resp.status_code == 200, page
        for href in set(re.findall(r'href="(/[^"]*)"', text(resp))):
            assert client.get(href.replace("&amp;", "&")).status_code in (200, 206), (page, href)
