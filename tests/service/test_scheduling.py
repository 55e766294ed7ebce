"""Scheduling on a real server: the fair queue, nested concurrency limits, 429 with Retry-After when
a queue is full, and the daily quota (reserved per run, so concurrent runs cannot overspend it)."""

from __future__ import annotations

import time

from tests.service.conftest import Service, events_of, submit, wait_run


def overlap(runs: list[dict]) -> int:
    """The most runs that were running at the same moment."""
    points = sorted([(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def test_a_flooding_tenant_does_not_delay_a_quiet_tenants_first_run(make_service):
    svc = make_service(server_settings={"max_concurrent_runs": 1}).start()
    flood_key = svc.add_tenant("flood", "--max-concurrent-runs", "4", "--max-queued-runs", "100")
    quiet_key = svc.add_tenant("quiet")
    with svc.client(flood_key) as flood, svc.client(quiet_key) as quiet:
        flood_ids = [submit(flood, context=f"f{i}")["id"] for i in range(8)]
        quiet_id = submit(quiet, context="q")["id"]
        done_quiet = wait_run(quiet, quiet_id)
        done_flood = [wait_run(flood, run_id) for run_id in flood_ids]
    assert done_quiet["status"] == "final" and all(r["status"] == "final" for r in done_flood)
    ahead = [r for r in done_flood if done_quiet["created_at"] < r["started_at"] < done_quiet["started_at"]]
    assert len(ahead) <= 1, "the quiet tenant's first run waited behind more than one flood run's start"
    assert overlap(done_flood + [done_quiet]) == 1  # the global limit held across tenants


def test_per_tenant_concurrency_limit(service: Service):
    key = service.add_tenant("sched-limit", "--max-concurrent-runs", "2")
    with service.client(key) as client:
        ids = [submit(client, context=f"c{i}")["id"] for i in range(5)]
        runs = [wait_run(client, run_id) for run_id in ids]
    assert all(r["status"] == "final" for r in runs)
    assert overlap(runs) <= 2


def test_a_full_queue_is_429_with_retry_after(service: Service):
    key = service.add_tenant("sched-queue", "--max-concurrent-runs", "1", "--max-queued-runs", "2")
    with service.client(key) as client:
        ids = [submit(client, "[sleep] hold")["id"] for _ in range(3)]  # one running, two queued
        refused = client.post("/v1/runs", json={"root_prompt": "q", "context": "c"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "queue_full" and "max_queued_runs=2" in refused.json()["error"]["message"]
        for run_id in ids:
            client.post(f"/v1/runs/{run_id}/cancel")
        assert all(wait_run(client, run_id)["status"] == "cancelled" for run_id in ids)
        assert client.post("/v1/runs", json={"root_prompt": "q", "context": "c"}).status_code == 202


def test_a_spent_daily_quota_is_refused_saying_when_it_resets(service: Service):
    key = service.add_tenant("sched-quota", "--daily-tokens", "20000")
    with service.client(key) as client:
        run = wait_run(client, submit(client, "[heavy] spend it")["id"])
        assert run["status"] == "max_tokens", run
        assert run["result"]["tokens"] >= 20000
        refused = client.post("/v1/runs", json={"root_prompt": "q", "context": "c"})
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "daily_quota_exhausted" and "resets at" in error["message"]
        assert error["resets_at"] > time.time() and 0 < int(refused.headers["retry-after"]) <= 86400
        assert error["resets_at"] % 86400 == 0  # the next UTC midnight


def test_concurrent_runs_of_one_tenant_cannot_overspend_the_day(service: Service):
    key = service.add_tenant("sched-reserve", "--daily-tokens", "30000", "--max-concurrent-runs", "3")
    with service.client(key) as client:
        ids = [submit(client, "[sleep] hold", limits={"max_tokens": 12000})["id"] for _ in range(3)]
        budgets = sorted(events_of(client, run_id, stop=lambda e: e["event"] == "status")[0]["data"]["budget_tokens"]
                         for run_id in ids)
        assert budgets == [6000, 12000, 12000]  # the third got what the day had left, not what it asked
        held = client.get("/v1/usage").json()["today"]
        assert held["reserved_tokens"] == 30000
        refused = client.post("/v1/runs", json={"root_prompt": "q", "context": "c"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_quota_exhausted"
        for run_id in ids:  # each made its first model call (its cell now sleeps): then cancel it
            events_of(client, run_id, stop=lambda e: e["event"] == "iteration")
            client.post(f"/v1/runs/{run_id}/cancel")
        runs = [wait_run(client, run_id) for run_id in ids]
        assert all(r["status"] == "cancelled" for r in runs)
        today = client.get("/v1/usage").json()["today"]
        assert today["reserved_tokens"] == 0  # every hold released when its run settled
        assert today["spent_tokens"] == sum(r["result"]["tokens"] for r in runs) == 3 * 120
        assert client.post("/v1/runs", json={"root_prompt": "q", "context": "c"}).status_code == 202
