"""The run page: the renderer's HTML, CSS and JavaScript with a run's events, in one HTML document.

The events go in a ``<script type="application/json">`` element with every ``<``, ``>`` and ``&``
written as a JSON escape, so no string in a run (a reply holding ``</script>``) can end the element.
A Content-Security-Policy allows only the page's own inline script and style (by hash) and no network
but the live stream, so even markup that slipped through could neither run nor call out.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from rlm.budget import PRICES, price_for

_SLOT = re.compile(r"\{\{(\w+)\}\}")


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return (resources.files("rlm.viewer") / "static" / name).read_text(encoding="utf-8")


def renderer_assets() -> dict[str, str]:
    """The renderer alone, for a page that embeds it: ``{"css": ..., "js": ...}``.

    The script defines ``window.RLMRunView`` (``create(element, {prices, live})`` returning a view with
    ``render(events)`` and ``addEvent(event)``), and boots itself on an element ``#rlm-run`` if the page
    has one, reading ``#rlm-config`` and ``#rlm-events`` as ``build_page`` writes them.
    """
    return {"css": _asset("view.css"), "js": _asset("view.js")}


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&`` left)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # NaN or infinity somewhere: JSON.parse would refuse the whole page
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _models(events: list[Mapping[str, Any]]) -> set[str]:
    return {str(e["model"]) for e in events
            if isinstance(e, Mapping) and e.get("event") in ("rlm_start", "subcall", "model_call") and e.get("model")}


def page_prices(events: list[Mapping[str, Any]], live: bool) -> dict[str, list[float]]:
    """USD per million input and output tokens for the models the page may meet."""
    table = dict(PRICES) if live else {}
    for model in _models(events):
        price = price_for(model)
        if price is not None:
            table[model] = price
    return {name: [p.input_per_mtok, p.output_per_mtok] for name, p in table.items()}


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _connect_source(live_url: str | None) -> str:
    if not live_url:
        return "'none'"
    parts = urlsplit(live_url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return "'self'"


def build_page(events: Iterable[Mapping[str, Any]] | None = None, *, live_url: str | None = None,
               title: str | None = None, sse_event_names: Iterable[str] = ()) -> str:
    """One self-contained HTML page that shows a run.

    Args:
        events: the run's events so far, as the run log holds them (``rlm.trajectory``); shown at once.
        live_url: an EventSource URL whose messages each carry one more event as JSON in ``data:``
            (unnamed messages, plus any named in ``sse_event_names``); a message's ``id:`` is used to
            drop repeats after a reconnect. The page stops listening after the ``final`` event.
        title: the document title (default: the run's question).
    """
    # Anything else than an object is kept too: the page shows it as a malformed event.
    items = [dict(e) if isinstance(e, Mapping) else e for e in (events or [])]
    if title is None:
        question = next((e.get("root_prompt") for e in items
                         if isinstance(e, Mapping) and e.get("event") == "run_start"), None)
        title = f"RLM run: {question}" if isinstance(question, str) and question else "RLM run"
    config: dict[str, Any] = {"prices": page_prices(items, live=live_url is not None)}
    if live_url:
        config["live_url"] = live_url
        config["sse_event_names"] = list(sse_event_names)
    css, js = _asset("view.css"), _asset("view.js")
    csp = "; ".join([
        "default-src 'none'", f"script-src {_sha256(js)}", f"style-src {_sha256(css)}", "img-src data:",
        f"connect-src {_connect_source(live_url)}", "base-uri 'none'", "form-action 'none'",
    ])
    slots = {"csp": html.escape(csp), "title": html.escape(title[:200]), "style": css, "script": js,
             "config": script_json(config), "events": script_json(items)}
    # One pass, so text put in a slot is never scanned for slots again.
    return _SLOT.sub(lambda m: slots[m.group(1)], _asset("view.html"))


def read_run_log(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The events of a JSONL run log, and how many lines could not be read.

    A run that crashed can leave a last line cut short; it is skipped, as is any line that is not a
    JSON object, so a damaged log still shows everything it holds.
    """
    events: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_constant=lambda _: None)
            except ValueError:
                bad += 1
                continue
            if isinstance(event, dict):
                events.append(event)
            else:
                bad += 1
    return events, bad
