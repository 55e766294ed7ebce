"""The page as a file: self-contained, data escaped, logs read forgivingly; and the `rlm view` command."""

from __future__ import annotations

import json
import re

from rlm.cli import main as rlm_main
from rlm.viewer import build_page, read_run_log, script_json
from rlm.viewer.page import renderer_assets


def embedded(page: str, element_id: str):
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    assert match, element_id
    return json.loads(match.group(1))


def test_events_are_embedded_as_json_that_no_string_can_break_out_of():
    nasty = ["</script><script>alert(1)</script>", "<!-- <script>", "a & b > c", "\u2028line\u2029sep"]
    events = [{"event": "iteration", "t": 1.0, "run_id": "r", "rlm_id": "0", "reply": text} for text in nasty]
    page = build_page(events)
    data = page.split('id="rlm-events">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data
    assert [e["reply"] for e in embedded(page, "rlm-events")] == nasty
    # The only script elements are the renderer's: the data never opens one.
    assert page.count("<script") == 3


def test_not_a_number_does_not_break_the_page():
    assert json.loads(script_json({"seconds": float("nan"), "ok": [float("inf"), 1]})) == {"seconds": None,
                                                                                         "ok": [None, 1]}


def test_the_page_is_self_contained_and_forbids_network():
    page = build_page([{"event": "run_start", "t": 0, "run_id": "r", "root_prompt": "Q?"}])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in renderer_assets()["css"]
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and "connect-src &#x27;none&#x27;" in csp
    assert "<title>RLM run: Q?</title>" in page


def test_a_live_page_may_connect_to_its_stream_only():
    page = build_page(live_url="http://127.0.0.1:8000/runs/abc/events")
    assert embedded(page, "rlm-config")["live_url"] == "http://127.0.0.1:8000/runs/abc/events"
    assert "connect-src http://127.0.0.1:8000;" in page
    assert "gpt-5-mini" in embedded(page, "rlm-config")["prices"]  # models are not known in advance
    assert "connect-src &#x27;self&#x27;" in build_page(live_url="/runs/abc/events")


def test_prices_cover_the_models_of_the_run():
    events = [{"event": "rlm_start", "rlm_id": "0", "model": "gpt-5-mini-2026-01-01"},
              {"event": "subcall", "rlm_id": "0", "model": "my-local-model"}]
    prices = embedded(build_page(events), "rlm-config")["prices"]
    assert prices == {"gpt-5-mini-2026-01-01": [0.25, 2.0]}


def test_a_log_cut_short_by_a_crash_is_read_up_to_the_cut(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text('{"event": "run_start", "t": 0}\n\n[1, 2]\n{"event": "rlm_start", "t": 0.1, "rlm_id": "0"}\n'
                   '{"event": "iteration", "t": 0.3, "rep', encoding="utf-8")
    events, bad = read_run_log(log)
    assert [e["event"] for e in events] == ["run_start", "rlm_start"]
    assert bad == 2


def test_rlm_view_writes_the_page_next_to_the_log(scripted_log, capsys):
    assert rlm_main(["view", str(scripted_log)]) == 0
    out = scripted_log.with_suffix(".html")
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    events = embedded(page, "rlm-events")
    assert events == read_run_log(scripted_log)[0]
    assert {"run_start", "rlm_start", "iteration", "cell", "subcall", "rlm_end", "final"} <= {e["event"] for e in events}


def test_rlm_view_says_what_is_wrong(tmp_path, capsys):
    assert rlm_main(["view", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such run log" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n", encoding="utf-8")
    assert rlm_main(["view", str(empty)]) == 1
    assert "holds no run events" in capsys.readouterr().err
