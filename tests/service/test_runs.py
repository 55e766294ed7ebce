"""Runs through the HTTP API of a real server: contexts inline and uploaded, idempotent submits,
listing with filters and cursors, cancellation, event streams with resume and replay, usage."""

from __future__ import annotations

import json

from tests.service.conftest import Service, events_of, run_boxes, submit, wait_run, wait_until


def test_inline_contexts_text_list_and_object_reach_the_box(service: Service):
    key = service.add_tenant("runs-inline")
    with service.client(key) as client:
        cases = {"text": "x" * 1234, "list": list(range(17)), "object": {"a": 1, "b": [2, 3], "c": "d"}}
        runs = {name: submit(client, context=context) for name, context in cases.items()}
        for name, run in runs.items():
            assert run["status"] == "queued" and run["id"].startswith("run_")
            done = wait_run(client, run["id"])
            assert done["status"] == "final", done
            assert done["result"]["response"] == f"len={len(cases[name])}"
            usage = done["result"]["usage"]["gpt-5-mini"]
            assert usage["calls"] == 2 and usage["input_tokens"] == 220 and usage["output_tokens"] == 30


def test_an_uploaded_context_is_hashed_and_reusable(service: Service):
    key = service.add_tenant("runs-upload")
    payload = json.dumps([{"id": i} for i in range(50)]).encode()
    with service.client(key) as client:
        uploaded = client.post("/v1/contexts", params={"kind": "json"}, content=payload)
        assert uploaded.status_code == 201, uploaded.text
        info = uploaded.json()
        import hashlib

        assert info["size"] == len(payload) and info["sha256"] == hashlib.sha256(payload).hexdigest()
        first = submit(client, context=None, context_id=info["id"])
        second = submit(client, context=None, context_id=info["id"])
        for run in (first, second):
            done = wait_run(client, run["id"])
            assert done["status"] == "final" and done["result"]["response"] == "len=50", done
        both = client.post("/v1/runs", json={"root_prompt": "q", "context": "x", "context_id": info["id"]})
        assert both.status_code == 422


def test_idempotency_key_returns_the_same_run(service: Service):
    key = service.add_tenant("runs-idem")
    with service.client(key) as client:
        body = {"root_prompt": "q", "context": "abc"}
        first = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-42"})
        again = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-42"})
        other = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-43"})
        assert first.status_code == again.status_code == other.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
        assert other.json()["id"] != first.json()["id"]
        assert len(client.get("/v1/runs").json()["runs"]) == 2
        for run_id in (first.json()["id"], other.json()["id"]):
            wait_run(client, run_id)
    other_key = service.add_tenant("runs-idem-other")
    with service.client(other_key) as client:  # keys are per tenant
        theirs = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-42"})
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
        wait_run(client, theirs.json()["id"])


def test_list_filters_by_status_and_pages_with_a_cursor(service: Service):
    key = service.add_tenant("runs-list")
    with service.client(key) as client:
        ids = [submit(client, context=f"c{i}")["id"] for i in range(5)]
        for run_id in ids:
            wait_run(client, run_id)
        busy = submit(client, "[sleep] hold")
        seen, cursor = [], None
        while True:
            page = client.get("/v1/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [r["id"] for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [busy["id"], *reversed(ids)]  # newest first, each exactly once
        final = client.get("/v1/runs", params={"status": "final"}).json()["runs"]
        assert sorted(r["id"] for r in final) == sorted(ids)
        assert client.get("/v1/runs", params={"cursor": "abc"}).status_code == 422
        client.post(f"/v1/runs/{busy['id']}/cancel")
        wait_run(client, busy["id"])


def test_cancel_stops_the_run_and_destroys_its_box(service: Service):
    key = service.add_tenant("runs-cancel")
    with service.client(key) as client:
        run = submit(client, "[sleep] a long cell")
        # The root model's first reply (a cell that sleeps ten minutes) has been received: the box runs it.
        events_of(client, run["id"], stop=lambda e: e["event"] == "iteration")
        assert wait_until(lambda: run_boxes(run["id"]), 30, "the run's box processes")
        cancelled = client.post(f"/v1/runs/{run['id']}/cancel")
        assert cancelled.status_code == 200
        done = wait_run(client, run["id"])
        assert done["status"] == "cancelled" and done["result"]["message"] == "cancelled by the tenant"
        assert run_boxes(run["id"]) == set()
        assert done["result"]["usage"]["gpt-5-mini"]["calls"] == 1  # its usage is settled all the same
        events = events_of(client, run["id"])
        assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"
        again = client.post(f"/v1/runs/{run['id']}/cancel")  # cancelling a finished run changes nothing
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        queued_and_cancelled = submit(client, "[sleep] never started")
        client.post(f"/v1/runs/{queued_and_cancelled['id']}/cancel")
        assert wait_run(client, queued_and_cancelled["id"])["status"] == "cancelled"


def test_events_stream_live_resume_with_last_event_id_and_replay(service: Service):
    key = service.add_tenant("runs-sse")
    with service.client(key) as client:
        run = submit(client, "[subcall] with a sub-call")
        head = events_of(client, run["id"], stop=lambda e: e["event"] == "rlm_start")
        assert [e["event"] for e in head][:2] == ["status", "run_start"]
        rest = events_of(client, run["id"], last_event_id=head[-1]["id"])
        full = events_of(client, run["id"])  # the finished run's whole log, replayed
        assert [e["id"] for e in full] == list(range(1, len(full) + 1))
        assert head + rest == full  # resumed exactly where it stopped: nothing lost, nothing twice
        kinds = [e["event"] for e in full]
        for kind in ("run_start", "rlm_start", "iteration", "cell", "subcall", "model_call", "rlm_end", "final"):
            assert kind in kinds, kind
        assert full[-1]["event"] == "status" and full[-1]["data"]["status"] == "final"
        models = {e["data"]["model"] for e in full if e["event"] == "model_call"}
        assert models == {"gpt-5-mini", "gpt-5-nano"}
        query_resume = client.get(f"/v1/runs/{run['id']}/events", params={"last_event_id": len(full) - 1})
        assert query_resume.text.count("\nevent: ") + query_resume.text.startswith("event: ") <= 1
        assert f"id: {len(full)}\n" in query_resume.text


def test_usage_by_day_and_model(service: Service):
    key = service.add_tenant("runs-usage")
    with service.client(key) as client:
        for i in range(2):
            wait_run(client, submit(client, "[subcall] count", context=f"ctx{i}")["id"])
        usage = client.get("/v1/usage").json()
        by_model = {row["model"]: row for row in usage["usage"]}
        assert set(by_model) == {"gpt-5-mini", "gpt-5-nano"}
        assert by_model["gpt-5-mini"]["calls"] == 4 and by_model["gpt-5-nano"]["calls"] == 2
        assert by_model["gpt-5-nano"]["input_tokens"] == 100 and by_model["gpt-5-nano"]["output_tokens"] == 20
        expected = (2 * 220 * 0.25 + 2 * 30 * 2.0) / 1e6  # gpt-5-mini list price, per 2 runs
        assert abs(by_model["gpt-5-mini"]["cost_usd"] - expected) < 1e-9
        assert {row["day"] for row in usage["usage"]} == {usage["today"]["day"]}
        assert usage["today"]["spent_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in usage["usage"])
        assert usage["today"]["reserved_usd"] == 0 and usage["today"]["reserved_tokens"] == 0
