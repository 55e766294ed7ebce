"""Operations of a real server: health and readiness, Prometheus metrics, JSON logs with tenant and
run ids, and the OpenAPI docs."""

from __future__ import annotations

import json

import httpx

from tests.service.conftest import Service, events_of, submit, wait_run


def test_healthz_readyz_and_docs(service: Service):
    assert httpx.get(f"{service.url}/healthz").json() == {"ok": True}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "checks": {"store": "ok", "sandbox:local": "ok"}}
    assert httpx.get(f"{service.url}/docs").status_code == 200
    paths = httpx.get(f"{service.url}/openapi.json").json()["paths"]
    assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/cancel", "/v1/runs/{run_id}/events",
            "/v1/contexts", "/v1/usage"} <= set(paths)


def test_readyz_fails_when_a_sandbox_backend_is_unreachable(make_service, tmp_path):
    svc: Service = make_service(backends=("local", "docker"),
                                env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start(ready_path="/healthz")
    ready = httpx.get(f"{svc.url}/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["store"] == "ok" and checks["sandbox:local"] == "ok"
    assert checks["sandbox:docker"].startswith("unreachable")


def test_metrics_count_runs_queue_boxes_tokens_dollars_and_latencies(service: Service):
    key = service.add_tenant("ops-metrics")
    with service.client(key) as client:
        wait_run(client, submit(client, "[subcall] measured")["id"])
        busy = submit(client, "[sleep] holding a box")
        events_of(client, busy["id"], stop=lambda e: e["event"] == "iteration")
        text = httpx.get(f"{service.url}/metrics").text
        client.post(f"/v1/runs/{busy['id']}/cancel")
        wait_run(client, busy["id"])
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['rlm_service_runs_total{status="final",tenant="ops-metrics"}'] == 1
    assert samples['rlm_service_running_runs{tenant="ops-metrics"}'] == 1
    assert samples['rlm_service_queue_depth{tenant="ops-metrics"}'] == 0
    assert samples["rlm_service_active_boxes"] >= 1
    assert samples['rlm_service_model_tokens_total{direction="input",model="gpt-5-nano",tenant="ops-metrics"}'] == 50
    assert samples['rlm_service_model_usd_total{model="gpt-5-mini",tenant="ops-metrics"}'] > 0
    assert samples['rlm_service_model_call_seconds_count{model="gpt-5-mini"}'] >= 3
    assert samples["rlm_service_cell_seconds_count"] >= 1
    after = httpx.get(f"{service.url}/metrics").text
    assert 'rlm_service_runs_total{status="cancelled",tenant="ops-metrics"} 1.0' in after


def test_logs_are_json_with_tenant_and_run_ids(service: Service):
    key = service.add_tenant("ops-logs")
    with service.client(key) as client:
        run = wait_run(client, submit(client)["id"])
    records = []
    for line in service.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    mine = [r for r in records if r.get("service_run_id") == run["id"] or r.get("run_id") == run["id"]]
    events = {r["event"] for r in mine}
    assert {"run_accepted", "run_start", "rlm_start", "run_end"} <= events, events
    tenant_ids = {r.get("tenant_id") for r in mine}
    assert len(tenant_ids) == 1 and None not in tenant_ids
    assert all("level" in r and "timestamp" in r for r in mine)
