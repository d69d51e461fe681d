"""The logviewer in real headless Chromium against a running node.

`appliance up` starts a real node (supervisord, model server, Envoy, logviewer) under a temp
root on free ports with the light built-in model only; Debian's chromium + chromium-driver,
driven by selenium, log in with the password `up` left in its 0600 file (its stdout is not a
terminal here, as under systemd, so the password is not printed), open the access log, see the
line of a predict request appear in the live tail without a reload, and open the model page
to see the version that serves. Screenshots go to test-artifacts/logviewer/.
"""

from __future__ import annotations

import random
import re
import shutil
import stat
import time
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e import chromium
from tests.e2e.chromium import browser  # noqa: F401 - a fixture
from tests.integration.node_harness import NodeUnderTest, new_node, wait_gone

pytestmark = pytest.mark.slow
MODEL = "saved_model_half_plus_two_mkl"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeUnderTest, str]]:
    """A running node serving the light model; (node, the logviewer password `up` generated)."""
    from appliance.builtin_models import build_all

    built = tmp_path_factory.mktemp("models")
    build_all(built, [MODEL], progress=lambda _: None)
    node = new_node(tmp_path_factory.mktemp("node"), built, [])
    # A copy, not the harness's symlink: the logviewer never browses a link out of the store.
    shutil.copytree(built / MODEL, node.root / "data/models" / MODEL)
    started = node.cli("up", "--timeout", "300", "--set", "enable.access.log=true",
                       "--set", f"model.name={MODEL}", *node.overrides)
    pids = node.pids()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        initial = node.root / "etc/appliance/logviewer.initial-password"
        assert f"it is in {initial}" in started.stdout, started.stdout
        assert stat.S_IMODE(initial.stat().st_mode) == 0o600
        password = initial.read_text().strip()
        assert password not in started.stdout + started.stderr, "up printed the password"
        yield node, password
    finally:
        node.cli("down", timeout=120)
        node.kill_all(wait_gone(pids, 30))


def shot(driver, name: str) -> None:
    chromium.shot(driver, "logviewer", name)


def test_login_live_tail_and_model_page_in_chromium(node, browser) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    node, password = node
    wait = WebDriverWait(browser, 30)
    base = node.logviewer_url

    # Log in.
    browser.get(base + "/")
    field = wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "/login" in browser.current_url
    field.send_keys(password)
    shot(browser, "01-login")
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    try:
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "a.logname")))
    except Exception:
        shot(browser, "01-login-failed")
        raise AssertionError(f"login failed at {browser.current_url}: {browser.page_source[:3000]}")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.logname")]
    for expected in ("access.log", "envoy.log", "model_server.log", "supervisord.log", "logviewer.log"):
        assert expected in names, names
    shot(browser, "02-logs")
    # The header says what its host name is, and the site has an icon.
    label = browser.find_element(By.CSS_SELECTOR, "header.top .node")
    assert label.text.startswith("node ") and "this node" in label.get_attribute("title")
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert browser.execute_script(
        "return fetch(arguments[0]).then(r => r.status + ' ' + r.headers.get('content-type'));",
        icon).startswith("200 image/svg+xml")

    # Open the access log: the live tail is on.
    browser.find_element(By.LINK_TEXT, "access.log").click()
    log = wait.until(ec.presence_of_element_located((By.ID, "log")))
    assert browser.find_element(By.ID, "live").is_selected()
    wait.until(lambda d: "following" in d.find_element(By.ID, "tail-status").text)
    browser.execute_script("window.__sameDocument = true;")

    # A predict request through Envoy, recognisable by its body size in the access log.
    time.sleep(1.5)  # so that the log's mtime before and after the request differ
    sent = time.time()
    padding = random.randint(100, 900)
    body = '{"instances": [1.0, 2.0, 5.0]}' + " " * padding
    resp = requests.post(f"{node.url}/v1/models/{MODEL}:predict", data=body, timeout=30)
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
    marker = f'"bytes_received":{len(body)}'

    def tailed_line(driver):
        for span in driver.find_elements(By.CSS_SELECTOR, "#log span"):
            line = span.text
            if ":predict" in line and marker in line.replace(" ", ""):
                return span
        return False
    # The tail drops its oldest lines past its bound: a line may go between its lookup and its read.
    span = WebDriverWait(browser, 30, poll_frequency=0.25,
                         ignored_exceptions=(StaleElementReferenceException,)).until(tailed_line)
    assert '"POST"' in span.text.replace(" ", "") or "POST" in span.text
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    browser.execute_script("arguments[0].scrollIntoView();", span)
    shot(browser, "03-live-tail")
    # "changed ... ago" follows the tail: the new mtime, and its age counting from it.
    changed = browser.find_element(By.CSS_SELECTOR, "#changed time")
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return Date.parse(arguments[0].getAttribute('datetime'));",
                                   changed) / 1000 >= sent - 0.2)
    assert re.fullmatch(r"\(\d+ s ago\)", browser.find_element(By.CSS_SELECTOR, "#changed span").text)
    assert log.is_displayed()

    # The access log as a table, filtered by model.
    browser.get(f"{base}/access?model={MODEL}")
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.access tbody tr"))
    assert any(":predict" in r.text and "POST" in r.text for r in rows)
    shot(browser, "04-access-table")

    # Models: the list, then the model page with the serving version and its signature. The
    # access table has links named MODEL too: only the models page's own are waited for.
    browser.find_element(By.LINK_TEXT, "Models").click()
    wait.until(lambda d: urlsplit(d.current_url).path == "/models")
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, MODEL)))
    shot(browser, "05-models")
    browser.find_element(By.LINK_TEXT, MODEL).click()
    serving = wait.until(ec.presence_of_element_located((By.ID, "serving")))
    status = requests.get(f"{node.model_server_url}/v1/models/{MODEL}", timeout=10).json()
    version = next(v["version"] for v in status["model_version_status"] if v["state"] == "AVAILABLE")
    assert serving.text == f"serving version {version}"
    assert "serving_default" in browser.page_source
    shot(browser, "06-model")

    # The cluster as Envoy sees it.
    browser.find_element(By.LINK_TEXT, "Cluster").click()
    wait.until(lambda d: urlsplit(d.current_url).path == "/cluster")   # the model page has cards too
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section.card")))
    assert "HEALTHY" in browser.page_source and "model_server_rest" in browser.page_source
    shot(browser, "07-cluster")

    # Log out (a POST with the CSRF token): the pages are closed again.
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    browser.get(base + "/models")
    assert "/login" in browser.current_url

    # The password that was typed in is in no log of the node.
    logs = [p for p in (node.root / "var/log/appliance").rglob("*") if p.is_file()]
    assert logs and not [p.name for p in logs if password.encode() in p.read_bytes()]
