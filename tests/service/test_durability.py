"""Durability: a server killed with SIGKILL mid-run, or stopped with SIGTERM, restarts on the same
database with every accepted run ending in a terminal status and no sandbox process left."""

from __future__ import annotations

import signal

from tests.service.conftest import Service, events_of, run_boxes, submit, wait_run, wait_until

TERMINAL = ("final", "cancelled", "interrupted", "rejected", "error", "max_iterations", "max_tokens",
            "max_cost_usd", "max_wall_s", "max_llm_calls", "max_depth", "cell_timeout_s", "model_timeout_s")


def test_kill_9_mid_run_loses_no_accepted_run_and_leaves_no_box(make_service):
    svc: Service = make_service(server_settings={"max_concurrent_runs": 2}).start()
    key = svc.add_tenant("durable", "--max-concurrent-runs", "2", "--max-queued-runs", "50")
    with svc.client(key) as client:
        busy = submit(client, "[sleep] in a cell when the server dies")
        events_of(client, busy["id"], stop=lambda e: e["event"] == "iteration")
        others = [submit(client, context=f"c{i}")["id"] for i in range(6)]
        boxes = wait_until(lambda: run_boxes(busy["id"]), 30, "the busy run's box")
        seen_before = events_of(client, busy["id"], stop=lambda e: e["event"] == "iteration")
    assert boxes
    svc.stop(signal.SIGKILL)  # what the box processes do now is their own affair; the restart reaps them

    svc.start()
    with svc.client(key) as client:
        interrupted = wait_run(client, busy["id"])
        assert interrupted["status"] == "interrupted", interrupted
        assert run_boxes(busy["id"]) == set()
        events = events_of(client, busy["id"])
        assert events[:len(seen_before)] == seen_before  # its events were kept
        assert events[-1]["data"]["status"] == "interrupted"
        assert interrupted["result"]["usage"]["gpt-5-mini"]["calls"] == 1  # its spend was settled
        finished = [wait_run(client, run_id) for run_id in others]
        assert all(r["status"] in TERMINAL for r in finished)
        assert all(r["status"] == "final" for r in finished if r["started_at"] and r["started_at"] > interrupted["finished_at"])
        for run in finished:
            assert run_boxes(run["id"]) == set()
        assert client.get("/v1/usage").json()["today"]["reserved_tokens"] == 0


def test_kill_9_in_a_burst_of_runs_then_every_run_ends(make_service):
    svc: Service = make_service(server_settings={"max_concurrent_runs": 3}).start()
    key = svc.add_tenant("burst", "--max-concurrent-runs", "3", "--max-queued-runs", "100")
    with svc.client(key) as client:
        ids = [submit(client, context=f"c{i}")["id"] for i in range(12)]
        wait_until(lambda: any(client.get(f"/v1/runs/{i}").json()["status"] == "final" for i in ids), 60,
                   "a first run to finish")
    svc.stop(signal.SIGKILL)  # some runs done, some running, some queued
    svc.start()
    with svc.client(key) as client:
        runs = [wait_run(client, run_id) for run_id in ids]
    assert all(r["status"] in TERMINAL for r in runs), [r["status"] for r in runs]
    assert {r["status"] for r in runs} <= {"final", "interrupted"}
    assert all(run_boxes(run_id) == set() for run_id in ids)


def test_sigterm_interrupts_running_runs_keeps_queued_ones_and_destroys_boxes(make_service):
    svc: Service = make_service(server_settings={"max_concurrent_runs": 1, "shutdown_grace_s": 1.0}).start()
    key = svc.add_tenant("graceful", "--max-concurrent-runs", "1")
    with svc.client(key) as client:
        busy = submit(client, "[sleep] running at shutdown")
        queued = submit(client, context="waits for the next start")
        events_of(client, busy["id"], stop=lambda e: e["event"] == "iteration")
        wait_until(lambda: run_boxes(busy["id"]), 30, "the busy run's box")
    # uvicorn re-raises the signal once its graceful shutdown is done, so the exit status names it.
    assert svc.stop(signal.SIGTERM, timeout=60) in (0, -signal.SIGTERM)
    assert run_boxes(busy["id"]) == set()
    assert '"event": "service_stopped"' in svc.log()
    svc.start()
    with svc.client(key) as client:
        stopped = client.get(f"/v1/runs/{busy['id']}").json()
        assert stopped["status"] == "interrupted" and "shut down" in stopped["result"]["message"]
        assert wait_run(client, queued["id"])["status"] == "final"  # queued at shutdown, run after the restart
