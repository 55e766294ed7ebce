"""Runs that start together take turns for their boxes, and a run that waits says so: in its run log
(box_queued, box_wait, wait_s in sandbox_ready) and in its progress."""

from __future__ import annotations

import asyncio
import json

from rlm import Limits
from rlm.testing import FakeRequest, split
from sandboxes import start_queue

SUM = "```repl\ntotal = sum(int(x) for x in context.split())\nprint(total)\n```"


def root(request: FakeRequest) -> str:
    return SUM if request.turn == 0 else "FINAL_VAR(total)"


async def test_runs_started_together_wait_their_turn_and_say_so(server, make_rlm, environment, capsys):
    server.policy = split(root)
    queue = start_queue(environment)
    size = queue.concurrency
    queue.resize(1)
    try:
        rlm = make_rlm(verbose=True, limits=Limits(max_wall_s=300))
        contexts = [" ".join(str(i * n) for i in range(50)) for n in (1, 2, 3)]
        results = await asyncio.gather(*(rlm.acompletion(c, root_prompt="sum?") for c in contexts))
    finally:
        queue.resize(size)
    assert [r.status for r in results] == ["final"] * 3, [r.message for r in results]
    assert [r.response for r in results] == [str(sum(int(x) for x in c.split())) for c in contexts]
    logs = [[json.loads(line) for line in open(r.trajectory_path)] for r in results]
    waited = [events for events in logs if any(e["event"] == "box_wait" for e in events)]
    assert len(waited) == 2  # one box started at once; the two others waited their turn, one after the other
    for events in waited:
        kinds = [e["event"] for e in events]
        assert kinds.index("box_queued") < kinds.index("box_wait") < kinds.index("sandbox_ready")
        wait = next(e for e in events if e["event"] == "box_wait")
        ready = next(e for e in events if e["event"] == "sandbox_ready")
        assert wait["seconds"] > 0 and ready["wait_s"] == wait["seconds"]
    assert sorted(next(e for e in events if e["event"] == "box_queued")["ahead"] for events in waited) == [0, 1]
    progress = capsys.readouterr().err
    assert progress.count("waiting for a sandbox start slot") == 2
    assert progress.count("sandbox start slot after") == 2
