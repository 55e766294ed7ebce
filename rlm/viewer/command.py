"""``rlm view RUN.jsonl [-o page.html] [--open]``: write a run's page next to its log (or where told)."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path


def add_view_parser(sub: argparse._SubParsersAction) -> None:
    view = sub.add_parser("view", help="write a run's log as one self-contained HTML page",
                          description="Write the run log RUN.jsonl as one self-contained HTML page (no network "
                                      "needed to open it) and print the page's path.")
    view.add_argument("log", metavar="RUN.jsonl", help="a run log (see RLMLogger / rlm run --log-dir)")
    view.add_argument("-o", "--output", metavar="PAGE.html", help="where to write the page (default: next to "
                                                                   "the log, with .html)")
    view.add_argument("--open", action="store_true", help="open the page in the default web browser")
    view.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from rlm.viewer.page import build_page, read_run_log

    log = Path(args.log)
    if not log.is_file():
        print(f"rlm view: no such run log: {log} (run logs are written under --log-dir, default rlm_logs/)",
              file=sys.stderr)
        return 1
    try:
        events, bad = read_run_log(log)
    except OSError as exc:
        print(f"rlm view: cannot read {log}: {exc}", file=sys.stderr)
        return 1
    if not events:
        print(f"rlm view: {log} holds no run events (is it a JSONL run log?)", file=sys.stderr)
        return 1
    if bad:
        print(f"rlm view: skipped {bad} unreadable line{'s' if bad != 1 else ''} of {log}", file=sys.stderr)
    out = Path(args.output) if args.output else log.with_suffix(".html")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(build_page(events), encoding="utf-8")
    except OSError as exc:
        print(f"rlm view: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(out)
    if args.open and not webbrowser.open(out.resolve().as_uri()):
        print(f"rlm view: no web browser could be started; open {out} yourself", file=sys.stderr)
    return 0
