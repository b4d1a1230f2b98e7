"""The web UI in a real browser: headless Chromium (Debian's package) driven through chromedriver.

A person's day: open the dashboard, follow a queue to a dead job and retry it, approve a held job
from the held list, reject another from its page, run a search and a bulk cancel, read the usage
page. On a failure the browser's screenshot is saved and its path printed.

Without /usr/bin/chromium and /usr/bin/chromedriver these tests are skipped, unless
JOBBIE_REQUIRE_BROWSER=1 (set by .ci/run, which installs both), when they fail instead.
"""
from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from .conftest import Node, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        why = f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing): apt-get install chromium chromium-driver"
        if os.environ.get("JOBBIE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def ui_node(tmp_path_factory):
    _need_browser()
    node = Node(tmp_path_factory.mktemp("ui") / "node", http=True)
    node.start()
    wait_for(lambda: httpx.get(node.http_url + "/healthz", timeout=1).status_code == 200, 15,
             message="the http actor")
    yield node
    node.stop(timeout=15)
    node.kill_everything()


@pytest.fixture(scope="module")
def browser(ui_node):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1300,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, ui_node, request, tmp_path):
    """The browser, pointed at the node; saves a screenshot if the test fails."""
    yield browser
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        path = tmp_path / f"{request.node.name}.png"
        browser.save_screenshot(str(path))
        print(f"screenshot of the failure: {path} (page {browser.current_url})")


@pytest.fixture(scope="module")
def client(ui_node):
    c = ui_node.client()
    yield c
    c.close()


def by_css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def text_of(driver, selector) -> str:
    return by_css(driver, selector).text


def wait_text(driver, selector, expected, timeout=10):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, selector), expected))


def test_dashboard_queue_and_retrying_a_dead_job(page, ui_node, client):
    client.enqueue("reports", {"r": 1}, max_retries=0)
    job = client.fetch(["reports"], "browser-worker")[0]
    client.fail(job["job_id"], "TimeoutError: upstream took 30s", attempt=job["attempt"],
                backtrace="Traceback (most recent call last):\nTimeoutError")
    page.get(ui_node.http_url + "/")
    assert text_of(page, "#raft-role") == "leader"
    assert "reports" in text_of(page, "#queues")
    assert "http" in text_of(page, "#actors")
    from selenium.webdriver.common.by import By
    page.find_element(By.LINK_TEXT, "reports").click()
    assert page.title.startswith("Queue reports")
    page.find_element(By.PARTIAL_LINK_TEXT, "dead (1)").click()
    page.find_element(By.LINK_TEXT, job["job_id"]).click()
    assert text_of(page, "#job-state") == "dead"
    assert "TimeoutError: upstream took 30s" in page.page_source
    by_css(page, "#retry").click()
    wait_text(page, ".notice", "retry")
    assert text_of(page, "#job-state") == "pending"
    assert client.get_job(job["job_id"])["state"] == "pending"


def test_approving_a_held_job_by_clicking(page, ui_node, client):
    held = client.enqueue("emails", {"to": "ada@example.com"}, hold=True, hold_reason="first send to a new list")
    other = client.enqueue("emails", {"to": "bob@example.com"}, hold=True, hold_reason="second")
    page.get(ui_node.http_url + "/ui/held")
    assert "first send to a new list" in text_of(page, "#held")
    by_css(page, f'input[value="{held}"]').click()
    by_css(page, 'input[name="note"]').send_keys("ok for today")
    by_css(page, "#approve-selected").click()
    wait_text(page, ".notice", "approved 1 job")
    assert held not in text_of(page, "#held") and other in text_of(page, "#held")
    record = client.get_job(held)
    assert record["state"] == "pending"
    assert any(a["kind"] == "approved" and a.get("note") == "ok for today" and a.get("who") == "ui"
               for a in record["audit"]), record["audit"]
    # The other one is rejected from its own page.
    page.get(f"{ui_node.http_url}/ui/jobs/{other}")
    assert text_of(page, "#job-state") == "held"
    by_css(page, "#note").send_keys("wrong list")
    by_css(page, "#reject").click()
    wait_text(page, ".notice", "rejected 1 job")
    assert text_of(page, "#job-state") == "cancelled"
    assert client.get_job(other)["last_error"] == "rejected: wrong list"


def test_search_and_bulk_cancel(page, ui_node, client):
    ids = [client.enqueue("bulkq", {"n": i}, tags={"batch": "b7"}) for i in range(3)]
    page.get(ui_node.http_url + "/ui/search")
    by_css(page, 'input[name="queue"]').send_keys("bulkq")
    by_css(page, 'input[name="tag"]').send_keys("batch=b7")
    by_css(page, "#search-button").click()
    wait_text(page, "#search-total", "3 jobs match")
    by_css(page, 'button[value="bulk_cancel"]').click()
    wait_text(page, ".notice", "cancel started")
    wait_for(lambda: all(client.get_job(j)["state"] == "cancelled" for j in ids), 10, message="the bulk cancel")


def test_usage_page_shows_spend_and_budgets(page, ui_node, client):
    client.set_price("claude-sonnet", 3, 15)
    client.set_budget("llm-daily", limit_usd=5, window="day")
    client.enqueue("llm", {"doc": 1})
    job = client.fetch(["llm"], "browser-worker")[0]
    client.ack(job["job_id"], attempt=job["attempt"], result={"ok": True},
               usage={"input_tokens": 100_000, "output_tokens": 10_000, "model": "claude-sonnet"})
    # 100k in at $3/M + 10k out at $15/M = $0.45; the usage actor rolls it up within a second or so.
    deadline = time.monotonic() + 15
    while True:
        page.get(ui_node.http_url + "/ui/usage")
        if "$0.45" in page.page_source or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "spent $0.45" in text_of(page, "#usage-total")
    assert "llm-daily" in text_of(page, "#budgets") and "$4.55" in text_of(page, "#budgets")
    assert page.find_elements("css selector", "svg.chart"), "no chart rendered"


def test_forms_refuse_cross_site_posts(ui_node, client):
    job_id = client.enqueue("csrf", {"x": 1})
    with httpx.Client(base_url=ui_node.http_url, follow_redirects=False) as http:
        no_token = http.post("/ui/do", data={"action": "delete", "job_id": job_id})
        assert no_token.status_code == 403
        page = http.get(f"/ui/jobs/{job_id}")
        token = page.cookies["jobbie_csrf"]
        forged = http.post("/ui/do", data={"action": "delete", "job_id": job_id, "csrf": token},
                           headers={"origin": "https://evil.example"})
        assert forged.status_code == 403
        wrong = http.post("/ui/do", data={"action": "delete", "job_id": job_id, "csrf": token + "x"})
        assert wrong.status_code == 403
        assert client.get_job(job_id)["state"] == "pending"
        ok = http.post("/ui/do", data={"action": "delete", "job_id": job_id, "csrf": token, "next": "/"},
                       headers={"origin": ui_node.http_url})
        assert ok.status_code == 303 and "notice=" in ok.headers["location"]
    wait_for(lambda: _gone(client, job_id), 5, message="the delete")


def _gone(client, job_id):
    from jobbie.transport.errors import NotFound
    try:
        client.get_job(job_id)
    except NotFound:
        return True
    return False
