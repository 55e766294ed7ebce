"""The service's web pages in a real headless Chromium against a real `rlm serve` process: sign in
with a tenant's key, watch a run appear in the list and finish live on its page, cancel one from its
page, page through the list, and see that another tenant's key shows none of it.

The model is scripted here: a run whose question holds ``[gate]`` waits for its second reply until the
test opens the gate, so the page's mid-run state is looked at while it provably lasts.
"""

from __future__ import annotations

import re
import threading
from typing import Iterator

import httpx
import pytest

from rlm.testing import FakeLLMServer, FakeRequest, Reply, is_rlm_root
from tests.service.conftest import Service, run_boxes, submit, wait_until
from tests.viewer.conftest import artifacts, browser, screenshot  # noqa: F401  (fixtures)
from tests.viewer.test_browser import by_css, text_of, wait

pytestmark = pytest.mark.browser

GATE = threading.Event()
QUESTION = "Which city had the most outages? [gate]"
CONTEXT = "2025-03-02 Lisbon: outage\n2025-03-05 Oslo: outage\n2025-03-09 Lisbon: outage"
ANSWER = "Lisbon, with 2 outages <b>not bold</b>"


def policy(request: FakeRequest) -> Reply:
    if not is_rlm_root(request):
        return Reply(text="Lisbon", delay=0.05, input_tokens=40, output_tokens=2)
    question = request.messages[0]["content"]
    if request.turn == 0:
        if "[sleep]" in question:
            code = "import time\nprint('working')\ntime.sleep(600)"
        else:
            code = "lines = context.splitlines()\nprint(len(lines), 'lines')\nprint(llm_query('Top city in: ' + context))"
        return Reply(text=f"I read the log first.\n```repl\n{code}\n```", input_tokens=900, output_tokens=60)
    if "[gate]" in question:
        # Blocks this fake server's loop until the test opens the gate (only this run uses the server then).
        GATE.wait(60)
    return Reply(text=f"FINAL({ANSWER})", input_tokens=1200, output_tokens=20)


@pytest.fixture(scope="module")
def ui_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with FakeLLMServer(policy) as fake:
        svc = Service(tmp_path_factory.mktemp("ui-service"), fake).start()
        try:
            yield svc
        finally:
            GATE.set()
            svc.stop()


def page_state(driver) -> str | None:
    return driver.execute_script("return document.documentElement.dataset.state || null")


def listed(driver) -> list[str]:
    """The ids of the runs in the list, read in one step (the list is redrawn as runs change)."""
    return driver.execute_script("return [...document.querySelectorAll('table.runs tr[data-run]')].map(r => r.dataset.run)")


def sign_in(driver, url: str, key: str) -> None:
    """A fresh sign-in on /ui: whatever key the tab held is dropped first."""
    driver.get(url + "/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/ui")
    wait(driver, lambda d: page_state(d) == "signed-out", "no sign-in form")
    by_css(driver, "#api-key")[0].send_keys(key)
    by_css(driver, "form.signin button")[0].click()
    wait(driver, lambda d: page_state(d) == "ready", "signing in did not show the runs")


def test_the_pages_are_static_shells_with_a_strict_policy(ui_service: Service):
    with httpx.Client(base_url=ui_service.url, timeout=30) as http:  # no key at all
        listing = http.get("/ui")
        one = http.get("/ui/runs/run_" + "a" * 24)
        other = http.get("/ui/runs/run_" + "b" * 24)
        assert listing.status_code == one.status_code == other.status_code == 200
        assert one.text == other.text and "run_" not in one.text  # nothing of any run is in the page
        csp = one.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
        assert one.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in one.text and "<style" not in one.text and " style=" not in one.text
        for name, kind in (("view.js", "text/javascript"), ("service.js", "text/javascript"),
                           ("view.css", "text/css"), ("service.css", "text/css")):
            asset = http.get(f"/ui/static/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
        assert http.get("/ui/static/..%2Fapp.py").status_code == 404
        assert http.get("/ui/static/nothing.js").status_code == 404


def test_a_run_appears_in_the_list_and_finishes_live_on_its_page(ui_service: Service, browser, artifacts):  # noqa: F811
    key = ui_service.add_tenant("ui-alice")
    browser.get(ui_service.url + "/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.get(ui_service.url + "/ui")
    wait(browser, lambda d: page_state(d) == "signed-out", "no sign-in form")
    by_css(browser, "#api-key")[0].send_keys("rlm_not-a-key")
    by_css(browser, "form.signin button")[0].click()
    wait(browser, lambda d: "not valid" in text_of(d, "[data-role=sign-in-error]"), "a wrong key was not refused")
    browser.get_log("browser")  # drops the console's note of that 401
    sign_in(browser, ui_service.url, key)
    assert text_of(browser, ".runs-body") == "No runs yet."
    GATE.clear()
    try:
        with ui_service.client(key) as client:
            run = submit(client, QUESTION, context=CONTEXT)
        row = f"tr[data-run='{run['id']}']"
        wait(browser, lambda d: by_css(d, row + "[data-status=running]"), "the run never showed as running in the list")
        screenshot(browser, artifacts / "service-runs-running.png", full_page=False)
        browser.execute_script("document.querySelector(arguments[0]).click()", row + " a.run-link")  # redrawn while running
        wait(browser, lambda d: d.current_url.endswith("/ui/runs/" + run["id"]), "the link did not open the run")
        # Mid-run: the first iteration's cell and sub-call are there, the model is thinking on the second.
        cell = "section.rlm[data-rlm='0'] .iter[data-iteration='1'] .cell[data-cell='1']"
        wait(browser, lambda d: "3 lines" in text_of(d, cell + " .out.stdout"), "the first cell never showed live")
        wait(browser, lambda d: "Iteration 2: waiting for the model" in text_of(d, ".thinking"),
             "the page did not say the model is thinking")
        assert "Lisbon" in text_of(browser, cell + " .sub[data-kind=subcall] .response")
        assert text_of(browser, ".run-card [data-role=status]") == "running"
        assert "running" in text_of(browser, ".answer-head") and "live" in text_of(browser, ".rlm-view .bar")
        assert not by_css(browser, "[data-action=cancel]")[0].get_attribute("disabled")
        screenshot(browser, artifacts / "service-run-live.png")
    finally:
        GATE.set()
    wait(browser, lambda d: text_of(d, "[data-role=answer]") == ANSWER, "the answer never arrived live")
    wait(browser, lambda d: text_of(d, ".run-card [data-role=status]") == "final", "the header never said final")
    assert by_css(browser, "[data-action=cancel]")[0].get_attribute("disabled")
    assert not by_css(browser, "[data-role=answer] b")  # the answer's markup is text
    assert "live" not in text_of(browser, ".rlm-view .bar")
    cost = browser.execute_script(
        "return [...document.querySelectorAll('.facts .fact')].find(f => f.innerText.startsWith('cost')).innerText")
    assert re.fullmatch(r"cost\s*\$\d+\.\d{4}", cost), cost  # the settled run's cost from the API
    screenshot(browser, artifacts / "service-run-final.png")
    browser.get(ui_service.url + "/ui")
    wait(browser, lambda d: by_css(d, row + "[data-status=final]"), "the list did not show the run as final")
    cells = text_of(browser, row)
    assert "gpt-5-mini" in cells and "$" in cells and ANSWER in cells
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_cancel_from_the_run_page_and_filter_and_page_the_list(ui_service: Service, browser, artifacts):  # noqa: F811
    key = ui_service.add_tenant("ui-carol")
    sign_in(browser, ui_service.url, key)
    with ui_service.client(key) as client:
        done = submit(client, "How many lines?", context=CONTEXT)
        wait_until(lambda: client.get(f"/v1/runs/{done['id']}").json()["status"] == "final", 120, "a run to finish")
        busy = submit(client, "Count forever [sleep]", context=CONTEXT)
        browser.get(f"{ui_service.url}/ui/runs/{busy['id']}")
        wait(browser, lambda d: "running…" in text_of(d, ".not-run .pill"), "the sleeping cell never showed running")
        wait(browser, lambda d: "ready in" in text_of(d, ".box-line"), "the page never said the box was ready")
        assert run_boxes(busy["id"])  # the box is up and its cell sleeps
        by_css(browser, "[data-action=cancel]")[0].click()
        wait(browser, lambda d: text_of(d, ".run-card [data-role=status]") == "cancelled", "cancel did not show")
        assert client.get(f"/v1/runs/{busy['id']}").json()["status"] == "cancelled"
        wait(browser, lambda d: "cancelled" in text_of(d, ".answer-head"), "the run view did not end as cancelled")
        assert text_of(browser, ".not-run .pill") == "stopped: run cancelled"
        assert text_of(browser, "section.rlm[data-rlm='0'] .rlm-head .pill.warn") == "cancelled"
        wait_until(lambda: not run_boxes(busy["id"]), 60, "the cancelled run's box to go")
        screenshot(browser, artifacts / "service-run-cancelled.png", full_page=False)
    # Filter by status, through the page's own control.
    browser.get(ui_service.url + "/ui")
    wait(browser, lambda d: len(listed(d)) == 2, "both runs listed")
    from selenium.webdriver.support.ui import Select

    Select(by_css(browser, "[data-role=status-filter]")[0]).select_by_value("cancelled")
    wait(browser, lambda d: listed(d) == [busy["id"]],
         "the filter did not leave only the cancelled run")
    assert browser.current_url.endswith("/ui?status=cancelled")
    # Pages of one run: the API's cursor behind "Show older runs".
    browser.get(ui_service.url + "/ui?limit=1")
    wait(browser, lambda d: listed(d) == [busy["id"]],
         "the first page is not the newest run")
    by_css(browser, "[data-action=older]")[0].click()
    wait(browser, lambda d: listed(d) == [busy["id"], done["id"]], "the older run did not follow")
    # A full page may have more behind it (the API's cursor says so); the next, empty one ends the list.
    by_css(browser, "[data-action=older]")[0].click()
    wait(browser, lambda d: not by_css(d, "[data-action=older]"), "the list never ended")
    assert listed(browser) == [busy["id"], done["id"]]
    screenshot(browser, artifacts / "service-runs.png", full_page=False)


def test_another_tenants_key_sees_none_of_the_runs(ui_service: Service, browser, artifacts):  # noqa: F811
    key_a = ui_service.add_tenant("ui-dave")
    with ui_service.client(key_a) as client:
        run = submit(client, "Dave's secret question", context="dave's private context")
        wait_until(lambda: client.get(f"/v1/runs/{run['id']}").json()["status"] == "final", 120, "the run to finish")
    sign_in(browser, ui_service.url, key_a)
    wait(browser, lambda d: by_css(d, f"tr[data-run='{run['id']}']"), "A does not see its own run")
    by_css(browser, "[data-action=sign-out]")[0].click()
    wait(browser, lambda d: page_state(d) == "signed-out", "signing out did not ask for a key")
    assert browser.execute_script("return sessionStorage.length") == 0
    key_b = ui_service.add_tenant("ui-erin")
    sign_in(browser, ui_service.url, key_b)
    assert text_of(browser, ".runs-body") == "No runs yet."
    browser.get(f"{ui_service.url}/ui/runs/{run['id']}")
    wait(browser, lambda d: page_state(d) == "not-found", "B's page for A's run did not say not found")
    assert "Run not found" in text_of(browser, "[data-role=not-found]")
    assert "secret" not in browser.find_element("css selector", "body").text
    assert not by_css(browser, "[data-action=cancel]")
    screenshot(browser, artifacts / "service-not-found.png", full_page=False)
    with ui_service.client(key_b) as client:  # the API the page uses says the same
        assert client.get(f"/v1/runs/{run['id']}").status_code == 404
        assert client.get("/v1/runs").json()["runs"] == []
