"""The run page in a real headless Chromium: the scripted run with a child RLM, a failed cell,
sub-calls and a reply holding <script>alert(1)</script>."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.viewer import scripted_run
from tests.viewer.conftest import screenshot

from rlm.viewer import build_page, read_run_log

pytestmark = pytest.mark.browser

LOAD_S = 30


def wait(driver, condition, message: str, timeout: float = LOAD_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message)


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.documentElement.dataset.rendered") == "true",
         "the page never said it had rendered")


def by_css(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def text_of(driver, css: str) -> str:
    """The rendered text of every element matching ``css``, read in one step (the page may be changing)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText).join('\\n')", css)


def in_view(driver, element) -> bool:
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.bottom > 0 && r.top < window.innerHeight && r.height > 0;", element)


@pytest.fixture
def page(browser, scripted_page):
    open_page(browser, scripted_page.as_uri())
    return browser


def test_header_shows_question_answer_status_and_totals(page, artifacts):
    summary = text_of(page, ".summary")
    assert scripted_run.QUESTION in summary
    assert text_of(page, "[data-role=answer]") == scripted_run.ANSWER
    assert "final" in text_of(page, ".answer-head")
    for words in ("wall time", "iterations", "model calls", "tokens", "cost", "gpt-5-mini", "gpt-5-nano"):
        assert words in summary
    # 5 root iterations, 7 in the whole tree; 14 calls: 5 + 2 loop replies and 7 sub-calls.
    assert "5\niterations (7 in all RLMs)" in summary
    assert "14\nmodel calls" in summary
    screenshot(page, artifacts / "run-page.png")


def test_tree_holds_the_root_and_its_child_rlm_inside_the_cell_that_made_it(page):
    roots = by_css(page, ".tree-body > section.rlm")
    assert [r.get_attribute("data-rlm") for r in roots] == ["0"]
    child = by_css(page, "section.rlm[data-rlm='0.1']")[0]
    # Nested: the child sits in the root's 4th iteration, in the cell that called rlm_query.
    path = page.execute_script(
        "const out = []; let e = arguments[0].parentElement;"
        "while (e) { if (e.matches('.cell, .iter, section.rlm')) out.push(e.className.split(' ')[0] +"
        " ':' + (e.dataset.rlm || e.querySelector(':scope > .iter-head .name, :scope > .cell-head .name')?.textContent));"
        " e = e.parentElement; } return out;", child)
    assert path == ["cell:Cell 1", "iter:Iteration 4", "rlm:0"]
    head = child.find_element("css selector", ".rlm-head").text
    assert "Child RLM 0.1" in head and "depth 1" in head and "gpt-5-nano" in head and "final" in head
    iterations = child.find_elements("css selector", ".iter-head .name")
    assert [i.text for i in iterations] == ["Iteration 1", "Iteration 2"]
    assert "a failing cooling unit in rack B7." in child.text
    outline = text_of(page, ".outline")
    assert "RLM 0" in outline and "└ RLM 0.1" in outline


def test_a_cell_shows_its_code_output_and_timing(page):
    cell = by_css(page, "section.rlm[data-rlm='0'] > .rlm-body > .iter[data-iteration='2'] .cell[data-cell='1']")[0]
    assert "llm_query_batched" in cell.find_element("css selector", ".code").text
    assert cell.find_element("css selector", ".out.stdout pre").text == "['Lisbon', 'Oslo', 'Lisbon', 'Porto', 'Lisbon']"
    assert "took" in cell.find_element("css selector", ".cell-head").text
    # Code is highlighted: keywords, strings and the REPL's functions get their own spans.
    kinds = {e.get_attribute("class") for e in cell.find_elements("css selector", ".code span")}
    assert {"tk-kw", "tk-str", "tk-bi"} <= kinds


def test_the_failed_cell_is_red_and_the_header_links_to_it(page, artifacts):
    link = by_css(page, "[data-action=failed-cells]")[0]
    assert link.text.endswith("1 failed cell")
    failed = by_css(page, ".cell.failed")
    assert len(failed) == 1
    assert failed[0].value_of_css_property("border-top-color") == "rgba(240, 168, 164, 1)"
    assert "KeyError: 'Lisbon'" in failed[0].find_element("css selector", ".out.error").text
    page.execute_script("window.scrollTo(0, 0)")
    assert not in_view(page, failed[0])
    link.click()
    wait(page, lambda d: in_view(d, failed[0]), "the failed-cell link did not bring the cell into view")
    screenshot(page, artifacts / "failed-cell.png", full_page=False)


def test_sub_calls_show_prompt_answer_and_the_slowest_one_is_marked(page):
    rows = by_css(page, ".sub[data-kind=subcall]")
    assert len(rows) == 7  # 6 from the root, 1 from the child: all lists are short, so open
    oslo = next(r for r in rows if "City in: 2025-03-05 Oslo" in r.text)
    assert oslo.find_element("css selector", ".response pre").text == "Oslo"
    assert "gpt-5-nano" in oslo.text and "tokens" in oslo.text
    assert "slowest call" in oslo.text
    # The header names it too, and its link jumps to it.
    link = by_css(page, "[data-action=slowest-call]")[0]
    assert "Oslo" in link.text
    # A long prompt starts collapsed and opens on demand.
    long_row = next(r for r in rows if "Summarise every line" in r.text)
    assert "line 6" not in long_row.text
    long_row.find_element("css selector", ".prompt button").click()
    assert "line 6: the q" in long_row.text  # the log keeps the first 500 characters of a prompt
    assert "(first 500 of 2,998 characters)" in long_row.text.lower()


def test_collapsed_sub_call_lists_are_built_when_opened(browser, scripted_log, tmp_path):
    events, _ = read_run_log(scripted_log)
    # The same run with 300 more sub-calls in the root's batched cell: the list starts collapsed.
    at = next(i for i, e in enumerate(events) if e["event"] == "cell" and e.get("iteration") == 2)
    extra = [dict(events[at - 1], index=100 + i, prompt=f"extra prompt {i}", response=f"extra answer {i}")
             for i in range(300)]
    page = tmp_path / "many.html"
    page.write_text(build_page(events[:at] + extra + events[at:]), encoding="utf-8")
    open_page(browser, page.as_uri())
    rows = ".sub[data-kind=subcall]"
    assert len(by_css(browser, rows)) == 1  # only the child's single sub-call: the long list is not built
    head = next(h for h in by_css(browser, ".subs-head") if "306 sub-calls" in h.text)
    head.click()
    assert len(by_css(browser, rows)) == 200 + 1  # one page built, plus the child's single sub-call
    more = by_css(browser, ".show-more")[0]
    assert "106 not shown" in more.text
    more.click()
    assert len(by_css(browser, rows)) == 306 + 1


def test_search_highlights_every_match_and_jumps_between_them(page, artifacts):
    box = by_css(page, "input.search")[0]
    box.send_keys("rack B7")
    wait(page, lambda d: text_of(d, "mark.current") == "rack B7", "no current match")
    count = text_of(page, ".search-count")
    first_total = int(count.split("/")[1].split()[0])
    assert count.startswith("1 / ") and first_total >= 5
    marks = by_css(page, "mark")
    assert all(m.text.lower() == "rack b7" for m in marks)
    current = by_css(page, "mark.current")[0]
    assert in_view(page, current)
    box.send_keys("\n")
    wait(page, lambda d: text_of(d, ".search-count").startswith("2 / "), "Enter did not go to the next match")
    assert by_css(page, "mark.current")[0] != current
    screenshot(page, artifacts / "search.png", full_page=False)
    # A match inside a collapsed part is opened for it: search a sub-call's answer after collapsing all.
    by_css(page, "[data-action=collapse-all]")[0].click()
    box.clear()
    box.send_keys("Forty lines about a fox")
    wait(page, lambda d: text_of(d, "mark.current") == "Forty lines about a fox", "the hidden match was not revealed")
    assert in_view(page, by_css(page, "mark.current")[0])
    box.clear()
    box.send_keys("no such text anywhere")
    wait(page, lambda d: text_of(d, ".search-count") == "no match", "a search without matches said nothing")
    assert by_css(page, "mark") == []


def test_a_reply_holding_a_script_tag_shows_it_as_text(page):
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    prose = [e for e in by_css(page, ".prose") if "<script>" in e.text]
    assert len(prose) == 1 and scripted_run.SCRIPT_REPLY in prose[0].text
    assert page.execute_script("return document.scripts.length") == 3
    assert page.execute_script("return document.querySelectorAll('.rlm-view script').length") == 0
    errors = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_expand_all_and_collapse_all(page):
    bodies = lambda: [b.is_displayed() for b in by_css(page, ".iter-body")]  # noqa: E731
    assert all(bodies()) and len(bodies()) == 7
    by_css(page, "[data-action=collapse-all]")[0].click()
    assert not any(bodies())
    assert not by_css(page, "section.rlm[data-rlm='0.1'] .rlm-body")[0].is_displayed()
    assert not any(e.is_displayed() for e in by_css(page, ".subs-list"))
    by_css(page, "[data-action=expand-all]")[0].click()
    assert all(bodies()) and len(bodies()) == 7
    assert all(e.is_displayed() for e in by_css(page, ".subs-list"))


def test_the_timeline_draws_each_step_and_names_it_on_hover(page):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = by_css(page, ".timeline canvas")[0]
    # Where the renderer drew the slowest sub-call (its layout, kept for hit-testing).
    box = page.execute_script(
        "const v = window.rlmView, tl = v._tl;"
        "for (const lane of tl.lanes) for (const it of lane.items) if (it.obj === v.marks.slowCall) return it.box;")
    assert box, "the slowest call is not on the timeline"
    painted = page.execute_script(
        "const c = arguments[0], b = arguments[1], r = window.devicePixelRatio || 1;"
        "const px = c.getContext('2d').getImageData(Math.round((b[0] + b[2] / 2) * r), Math.round((b[1] + b[3] / 2) * r), 1, 1).data;"
        "return Array.from(px);", canvas, box)
    assert painted[3] == 255 and painted[:3] != [255, 255, 255]
    offset = page.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    ActionChains(page).move_to_element_with_offset(canvas, int(box[0] + box[2] / 2 - offset[0] / 2),
                                                   int(box[1] + box[3] / 2 - offset[1] / 2)).perform()
    tip = by_css(page, ".tl-tip")[0]
    wait(page, lambda d: tip.is_displayed(), "no tooltip on hover")
    assert "llm_query" in tip.text and "Oslo" in tip.text
    ActionChains(page).click().perform()
    oslo = next(r for r in by_css(page, ".sub") if "City in: 2025-03-05 Oslo" in r.text)
    wait(page, lambda d: in_view(d, oslo), "clicking the bar did not jump to the sub-call")


def test_unknown_and_malformed_events_show_as_rows_and_break_nothing(browser, scripted_log, tmp_path):
    events, _ = read_run_log(scripted_log)
    at = next(i for i, e in enumerate(events) if e["event"] == "iteration" and e["iteration"] == 2)
    run_id = events[0]["run_id"]
    odd = [{"event": "a_future_kind", "t": 0.74, "run_id": run_id, "rlm_id": "0", "depth": 0, "name": "grep",
            "arguments": {"pattern": "<b>bold</b>"}, "seconds": 0.01},
           {"event": "another_kind", "t": 0.75, "run_id": run_id, "summary_chars": 1200},
           {"event": "compaction", "t": 0.76, "run_id": run_id, "tokens_before": "many"},
           {"event": "model_call", "t": 0.77, "run_id": run_id, "rlm_id": "0", "depth": "x", "cost_usd": "free"},
           {"event": "tool_call", "t": 0.78, "run_id": run_id, "rlm_id": "9", "args": None, "seconds": "slow"},
           ["not", "an", "object"], {"event": "cell", "rlm_id": "0", "t": "soon", "stdout": None}]
    page = tmp_path / "odd.html"
    page.write_text(build_page(events[:at + 1] + odd + events[at + 1:]), encoding="utf-8")
    open_page(browser, page.as_uri())
    rows = text_of(browser, ".ev")
    assert "a_future_kind" in rows and 'arguments={"pattern":"<b>bold</b>"}' in rows
    assert "another_kind" in rows and "summary_chars=1200" in rows and "malformed" in rows
    assert "The conversation was summarised" in rows  # a known kind with odd fields still shows
    assert text_of(browser, "[data-role=answer]") == scripted_run.ANSWER
    assert by_css(browser, ".rlm-view b") and not any(b.text == "bold" for b in by_css(browser, ".rlm-view b"))
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


class _Stream:
    """A page and its event stream on 127.0.0.1: the first ``hold`` events, then the rest on ``go``."""

    def __init__(self, events: list[dict], hold: int) -> None:
        self.events, self.hold, self.go = events, hold, threading.Event()
        page = build_page(live_url="/events").encode("utf-8")
        stream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                after = int(self.headers.get("Last-Event-ID", -1))
                for i, event in enumerate(stream.events):
                    if i == stream.hold and not stream.go.wait(LOAD_S):
                        return
                    if i > after:
                        self.wfile.write(f"id: {i}\ndata: {json.dumps(event)}\n\n".encode("utf-8"))
                        self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> "_Stream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_live_page_fed_event_by_event_shows_the_same_run(browser, scripted_page, scripted_log, artifacts):
    open_page(browser, scripted_page.as_uri())
    static_tree = text_of(browser, ".tree-body")
    static_summary = text_of(browser, ".summary")
    events, _ = read_run_log(scripted_log)
    # Held back after the child's first reply: the child shows, the root's cell is still running.
    hold = next(i for i, e in enumerate(events) if e["event"] == "iteration" and e["rlm_id"] == "0.1") + 1
    with _Stream(events, hold) as stream:
        open_page(browser, stream.url)
        # Mid-run: the child has started and the root's cell is still running.
        wait(browser, lambda d: by_css(d, "section.rlm[data-rlm='0.1'] .iter"), "the live page never showed the child")
        assert "running" in text_of(browser, ".answer-head")
        assert "running…" in text_of(browser, ".cell-head")
        assert "live" in text_of(browser, ".bar")
        screenshot(browser, artifacts / "live-mid-run.png")
        browser.execute_script("window.__same = document.querySelector('.tree-body')")
        stream.go.set()  # the rest of the run arrives
        wait(browser, lambda d: text_of(d, "[data-role=answer]") == scripted_run.ANSWER, "the answer never arrived")
        wait(browser, lambda d: text_of(d, ".tree-body") == static_tree, "the live tree differs from the static one")
        assert text_of(browser, ".summary") == static_summary
        assert "live" not in text_of(browser, ".bar")
        assert browser.execute_script("return window.__same === document.querySelector('.tree-body')")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []



def test_tool_calls_and_the_sandbox_show_where_they_happened(page):
    cell = by_css(page, "section.rlm[data-rlm='0'] .iter[data-iteration='1'] .cell[data-cell='1']")[0]
    tool = cell.find_element("css selector", ".sub[data-kind=tool]")
    assert "tool site_info" in tool.text and "ok" in tool.text
    assert tool.find_element("css selector", ".prompt pre").text == '[["Lisbon"], {}]'
    assert tool.find_element("css selector", ".response pre").text == '"Lisbon: 2 halls, racks A1 to B9"'
    assert "1 tool call" in cell.find_element("css selector", ".subs-head").text
    box = by_css(page, "section.rlm[data-rlm='0'] > .rlm-body > .box-line")[0].text
    assert "ready in" in box and "start" in box and "setup" in box
    # Bookkeeping events are read, not listed.
    names = text_of(page, ".ev-name").split("\n")
    assert not {"iteration_start", "iteration_end", "model_call", "sandbox_ready", "tool_call"} & set(names)


def test_compaction_a_lost_sandbox_box_waits_and_real_costs(browser, scripted_log, tmp_path, artifacts):
    events, _ = read_run_log(scripted_log)
    run_id = events[0]["run_id"]

    def at(kind: str, rlm: str = "0", **match) -> int:
        return next(i for i, e in enumerate(events) if e["event"] == kind and e.get("rlm_id") == rlm
                    and all(e.get(k) == v for k, v in match.items()))

    def ev(kind: str, t: float, rlm: str = "0", **fields) -> dict:
        return {"event": kind, "t": t, "run_id": run_id, "rlm_id": rlm, "depth": len(rlm.split(".")) - 1, **fields}

    # What each model call really cost comes from model_call: make the slow Oslo sub-call the dearest,
    # which the price table alone would never say.
    oslo = next(i for i, e in enumerate(events) if e["event"] == "subcall" and "Oslo" in e["prompt"])
    assert events[oslo - 1]["event"] == "model_call"
    events[oslo - 1]["cost_usd"] = 0.5
    ready = at("sandbox_ready")
    events[ready] = dict(events[ready], wait_s=0.5, seconds=events[ready]["seconds"] + 0.5)
    t_ready = events[ready]["t"]
    iter3 = at("iteration_start", iteration=3)
    t3 = events[iter3]["t"]
    cell3 = at("cell", iteration=3)
    child_cell = at("cell", "0.1", iteration=2)
    inserts = [
        (child_cell + 1, [ev("sandbox_lost", events[child_cell]["t"], "0.1", iteration=2, box_id="box-of-child",
                             reason="the box's process exited (status 137)")]),
        (cell3, [ev("tool_call", t3 + 0.01, iteration=3, name="lookup", args='[["rack B7"], {}]',
                    status="error", error="lookup raised KeyError: 'rack B7'", seconds=0.004, result=None)]),
        (iter3 + 1, [ev("model_call", t3 + 0.002, model="gpt-5-mini", input_tokens=90000, output_tokens=800,
                        cost_usd=0.02, retries=0, failed=False, seconds=0.002),
                     ev("compaction", t3 + 0.003, iteration=3, count=1, forced=False, tokens_before=90000,
                        tokens_after=4000, model_seconds=0.002, input_tokens=90000, output_tokens=800,
                        summary="The user asks which city had the most outages.")]),
        (ready, [ev("box_queued", t_ready - 1.0, box_id=events[ready]["box_id"], ahead=2),
                 ev("box_wait", t_ready - 0.5, box_id=events[ready]["box_id"], seconds=0.5)]),
    ]
    for index, new in inserts:  # from the end, so earlier indexes stay right
        events[index:index] = new
    page = tmp_path / "events.html"
    page.write_text(build_page(events), encoding="utf-8")
    open_page(browser, page.as_uri())

    costly = by_css(browser, "[data-action=costliest-call]")[0].text
    assert "$0.5000" in costly and "Oslo" in costly
    box = by_css(browser, "section.rlm[data-rlm='0'] > .rlm-body > .box-line")[0].text
    assert "waited 500 ms for a start slot (2 starts ahead)" in box
    labels = browser.execute_script("return window.rlmView._tl.lanes[0].items.map(i => i.label)")
    assert labels[:3] == ["waiting for a sandbox start slot", "sandbox start", "context upload and setup"]
    # The compaction stands before the reply of the iteration it preceded.
    iteration3 = by_css(browser, "section.rlm[data-rlm='0'] .iter[data-iteration='3'] > .iter-body")[0]
    first = iteration3.find_element("css selector", ":scope > *")
    assert "compaction" in first.get_attribute("class") and "~90,000 → ~4,000 tokens" in first.text
    failed_tool = by_css(browser, ".iter[data-iteration='3'] .sub[data-kind=tool].failed")[0]
    assert "lookup raised KeyError" in failed_tool.text
    assert by_css(browser, "[data-action=failed-tools]")[0].text.endswith("1 failed tool call")
    lost = by_css(browser, "[data-action=lost-sandboxes]")[0]
    assert lost.text.endswith("1 lost sandbox")
    lost.click()
    notice = by_css(browser, "section.rlm[data-rlm='0.1'] .ev.sandbox_lost")[0]
    wait(browser, lambda d: in_view(d, notice), "the lost-sandbox link did not show the notice")
    assert "Sandbox box-of-child was lost: the box's process exited (status 137)" in notice.text
    screenshot(browser, artifacts / "run-events.png")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
