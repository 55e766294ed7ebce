"""How fast a large run's page opens: `rlm view` on a 10,000-sub-call run, timed in headless Chromium.

    python benchmarks/viewer_render.py [--subcalls 10000] [--batches 10] [--runs 5] [--log RUN.jsonl]

The run log is generated in the exact event format (``rlm.trajectory.make_event``): a root RLM whose
cells send ``--batches`` batches of ``llm_query_batched`` adding up to ``--subcalls`` sub-calls, each
with a prompt and an answer as long as the log keeps (500 characters), plus a failed cell and a final
answer. ``--log`` takes a real run log instead (for example one kept from benchmarks/rlm_micro.py).

Prints the page's size and, over ``--runs`` page loads: the time from navigation until the page has
rendered and painted (``window.rlmRenderedAt``, set by the page after its first frame), then the time
to open one collapsed list of sub-calls, and to search the whole run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm.recursion import PREVIEW_CHARS  # noqa: E402
from rlm.trajectory import make_event  # noqa: E402
from rlm.viewer import build_page, read_run_log  # noqa: E402


def synthetic_run(subcalls: int, batches: int, seed: int = 1) -> list[dict[str, Any]]:
    """The events of a run with ``subcalls`` sub-calls in ``batches`` cells, timed like a real one."""
    rng = random.Random(seed)
    run_id = "bench0viewer"
    events: list[dict[str, Any]] = []
    t = 0.0

    def emit(kind: str, **fields: Any) -> None:
        events.append(make_event(kind, run_id, t, fields))

    emit("run_start", config={"backend": "openai", "max_depth": 1}, context_type="str", context_size=50_000_000,
         root_prompt="Which supplier is late most often, and why?")
    t += 0.6
    emit("rlm_start", rlm_id="0", parent=None, depth=0, box_id="b0", model="gpt-5-mini")

    def reply(n: int, text: str, code: str) -> None:
        nonlocal t
        seconds = rng.uniform(1.0, 4.0)
        t += seconds
        emit("iteration", rlm_id="0", depth=0, iteration=n, reply=f"{text}\n```repl\n{code}\n```", code_blocks=1,
             input_tokens=2000 + 400 * n, output_tokens=rng.randint(80, 400), model_seconds=round(seconds, 4),
             prompt_chars=8000 + 1600 * n)

    def cell(n: int, code: str, status: str = "ok", stdout: str = "", error: str | None = None,
             seconds: float = 0.05) -> None:
        nonlocal t
        t += seconds
        emit("cell", rlm_id="0", depth=0, iteration=n, index=1, code=code, status=status, stdout=stdout, stderr="",
             error=error, notice=None, seconds=round(seconds, 4), wall_seconds=round(seconds, 4))

    code = "print(len(context))\nlines = context.splitlines()\nprint(lines[:3])"
    reply(1, "First I look at the context.", code)
    cell(1, code, stdout="50000000\n['2025-01-01 supplier 17 shipped late', ...]\n")
    per_batch = -(-subcalls // batches)
    done = 0
    for b in range(batches):
        n = b + 2
        count = min(per_batch, subcalls - done)
        code = (f"chunks = lines[{done * 50}:{(done + count) * 50}]\n"
                f"rs = llm_query_batched([f'Which supplier is late in: {{c}}' for c in batch(chunks, 50)])\n"
                "print(sum(isinstance(r, LLMError) for r in rs), 'failed')")
        reply(n, f"I read batch {b + 1} of {batches} with a sub-model.", code)
        start = t
        lanes = [start] * 64  # 64 concurrent calls, as Limits.max_concurrency allows
        for i in range(count):
            lane = min(range(64), key=lanes.__getitem__)
            seconds = rng.lognormvariate(-0.7, 0.5)
            lanes[lane] += seconds
            failed = rng.random() < 0.001
            prompt = "Which supplier is late in: " + " ".join(
                f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} supplier {rng.randint(1, 99)} shipped "
                f"{rng.choice(['late', 'on time'])};" for _ in range(20))
            t = lanes[lane]
            events.append(make_event("subcall", run_id, t, dict(
                kind="llm_query", rlm_id="0", parent="0", depth=1, index=i, model="gpt-5-nano",
                status="error" if failed else "ok", error="provider error 500" if failed else None,
                seconds=round(seconds, 4), input_tokens=len(prompt) // 4, output_tokens=None if failed else 12,
                prompt_chars=len(prompt), prompt=prompt[:PREVIEW_CHARS],
                response=None if failed else f"supplier {rng.randint(1, 99)}: late {rng.randint(1, 9)} times, "
                                             f"mostly {rng.choice(['customs', 'weather', 'strikes'])}")))
        events.sort(key=lambda e: e["t"])  # the log is in time order
        t = start
        cell(n, code, stdout="0 failed\n", seconds=max(lanes) - start)
        done += count
    n = batches + 2
    code = "late = Counter(parse(r) for r in rs)\nprint(late.most_common(3))"
    reply(n, "Now I count.", code)
    cell(n, code, status="error", error="NameError: name 'Counter' is not defined", seconds=0.01)
    reply(n + 1, "FINAL(Supplier 17 is late most often, mostly at customs.)", "print('done')")
    cell(n + 1, "print('done')", stdout="done\n", seconds=0.01)
    emit("rlm_end", rlm_id="0", depth=0, status="final", iterations=n + 1, message=None,
         response="Supplier 17 is late most often, mostly at customs.", seconds=round(t - 0.6, 4))
    emit("final", response="Supplier 17 is late most often, mostly at customs.", status="final", message=None,
         iterations=n + 1, usage={"gpt-5-mini": {"calls": n + 1, "input_tokens": 90_000, "output_tokens": 4000,
                                                 "cost_usd": 0.0305, "cost_known": True, "retries": 0, "failures": 0},
                                  "gpt-5-nano": {"calls": subcalls, "input_tokens": subcalls * 150,
                                                 "output_tokens": subcalls * 12, "cost_usd": subcalls * 1.23e-5,
                                                 "cost_known": True, "retries": 0, "failures": 0}},
         cost_usd=0.0305 + subcalls * 1.23e-5, execution_time=round(t, 4))
    return events


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1000", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subcalls", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--log", help="a real run log to render instead of the generated one")
    args = parser.parse_args()

    if args.log:
        events, _ = read_run_log(args.log)
        source = args.log
    else:
        events = synthetic_run(args.subcalls, args.batches)
        source = f"generated: {args.subcalls:,} sub-calls in {args.batches} batches"
    started = time.perf_counter()
    page = build_page(events)
    build_s = time.perf_counter() - started
    subs = sum(1 for e in events if e.get("event") == "subcall")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.html"
        path.write_text(page, encoding="utf-8")
        print(f"run log: {source}; {len(events):,} events, {subs:,} sub-calls")
        print(f"page: {path.stat().st_size / 1e6:.1f} MB, built in {build_s:.2f} s")
        driver = chromium()
        rendered, opened, searched = [], [], []
        try:
            for _ in range(args.runs):
                driver.get("about:blank")
                driver.get(path.as_uri())
                deadline = time.monotonic() + 60
                while driver.execute_script("return window.rlmRenderedAt") is None:
                    if time.monotonic() > deadline:
                        raise SystemExit("the page did not render within 60 s")
                    time.sleep(0.02)
                rendered.append(driver.execute_script("return window.rlmRenderedAt") / 1000)
                opened.append(driver.execute_script(
                    "const head = document.querySelector('.subs-head'), t = performance.now();"
                    " head.click(); document.body.offsetHeight;"
                    " return (performance.now() - t) / 1000;"))
                searched.append(driver.execute_script(
                    "const t = performance.now(); window.rlmView.search('supplier 42'); document.body.offsetHeight;"
                    " return (performance.now() - t) / 1000;"))
        finally:
            driver.quit()
    print(f"rendered and painted (from navigation): median {statistics.median(rendered):.2f} s, "
          f"max {max(rendered):.2f} s over {args.runs} loads")
    print(f"open a collapsed list of sub-calls (first 200 rows): median {statistics.median(opened) * 1000:.0f} ms")
    print(f"search the whole run and jump to the first match: median {statistics.median(searched) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
