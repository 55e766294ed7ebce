"""See a run: one self-contained HTML page per RLM run, drawn from its run events.

    rlm view RUN.jsonl [-o page.html] [--open]

or from Python::

    from rlm.viewer import build_page, read_run_log
    events, _ = read_run_log("rlm_logs/20260101T120000Z-abc.jsonl")
    Path("run.html").write_text(build_page(events), encoding="utf-8")

The page holds its styles, script and data; it makes no network request (its Content-Security-Policy
forbids any) and works offline. Every string from the run is shown as text, never as markup.

Embedding it elsewhere (the service's run pages):

- ``build_page(live_url="/runs/ID/events")`` is a page that draws the run as events arrive over
  Server-Sent Events: each message carries one run event as JSON in ``data:`` (the record the run
  log and ``on_event`` get). ``build_page(events, live_url=...)`` shows the events so far at once
  and then follows the stream; send ``id:`` lines and the page drops repeats after a reconnect.
- For a page of its own, ``renderer_assets()`` gives the CSS and the script. The script defines
  ``RLMRunView.create(element, {prices, live})``, whose view has ``render(events)`` (draw a whole run,
  replacing what is shown) and ``addEvent(event)`` (one more event, drawn incrementally), plus
  ``search(text)``, ``expandAll()``, ``collapseAll()`` and ``reveal(step)``. ``prices`` maps a model
  name to ``[usd_per_million_input_tokens, usd_per_million_output_tokens]`` (``page_prices`` builds it).
"""

from rlm.viewer.page import build_page, page_prices, read_run_log, renderer_assets, script_json

__all__ = ["build_page", "page_prices", "read_run_log", "renderer_assets", "script_json"]
