"""rlm.client against a real server, and `rlm run --server URL`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlm.client import AsyncRLMServiceClient, RLMServiceClient, ServiceError
from tests.service.conftest import Service, run_boxes


def test_sync_client_submit_stream_wait_cancel(service: Service):
    key = service.add_tenant("client-sync")
    with RLMServiceClient(service.url, key) as client:
        run = client.submit("How long?", context=[1, 2, 3])
        events = list(client.events(run["id"]))
        assert events[0].event == "status" and events[-1].terminal_status == "final"
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        done = client.wait(run["id"], timeout=120)
        assert done["status"] == "final" and done["result"]["response"] == "len=3"
        tail = list(client.events(run["id"], last_event_id=events[-3].id))
        assert tail == events[-2:]
        uploaded = client.upload_context("z" * 99)
        assert client.wait(client.submit("q", context_id=uploaded["id"])["id"])["result"]["response"] == "len=99"
        busy = client.submit("[sleep] to cancel")
        next(e for e in client.events(busy["id"]) if e.event == "iteration")
        assert client.cancel(busy["id"])["status"] == "cancelled"
        assert run_boxes(busy["id"]) == set()
        assert {r["id"] for r in client.list()["runs"]} >= {run["id"], busy["id"]}
        assert client.list(status="cancelled")["runs"][0]["id"] == busy["id"]
        assert client.usage()["usage"][0]["model"] == "gpt-5-mini"
        with pytest.raises(ServiceError) as refused:
            client.submit("q", context="c", limits={"max_depth": 99})
        assert refused.value.status == 403 and refused.value.code == "policy_violation"
        with pytest.raises(ServiceError) as missing:
            client.get("run_" + "0" * 24)
        assert missing.value.status == 404


def test_submit_retries_are_idempotent(service: Service):
    key = service.add_tenant("client-idem")
    with RLMServiceClient(service.url, key) as client:
        first = client.submit("q", context="c", idempotency_key="same")
        second = client.submit("q", context="c", idempotency_key="same")
        assert first["id"] == second["id"]
        client.wait(first["id"])


async def test_async_client(service: Service):
    key = service.add_tenant("client-async")
    async with AsyncRLMServiceClient(service.url, key) as client:
        run = await client.submit("How long?", context={"a": 1})
        kinds = [event.event async for event in client.events(run["id"])]
        assert kinds[0] == "status" and "final" in kinds
        done = await client.wait(run["id"], timeout=120)
        assert done["result"]["response"] == "len=1"
        busy = await client.submit("[sleep] to cancel")
        async for event in client.events(busy["id"]):
            if event.event == "iteration":
                break
        assert (await client.cancel(busy["id"]))["status"] == "cancelled"
        assert (await client.list(status="final"))["runs"][0]["id"] == run["id"]


def test_rlm_run_with_server(service: Service, tmp_path):
    key = service.add_tenant("client-cli")
    context = tmp_path / "ctx.txt"
    context.write_text("q" * 321)
    env = {**os.environ, "MY_SERVICE_KEY": key}
    result = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "--server", service.url, "--api-key-env",
                             "MY_SERVICE_KEY", "--context", str(context), "How long is it?"],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "len=321"
    assert "status: final" in result.stderr and "gpt-5-mini: 2 calls" in result.stderr
    refused = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "--server", service.url, "--api-key-env",
                              "MY_SERVICE_KEY", "--context", str(context), "--max-depth", "9", "q"],
                             capture_output=True, text=True, env=env, timeout=180)
    assert refused.returncode == 1 and "policy_violation" in refused.stderr and "max_depth" in refused.stderr
    no_key = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "--server", service.url, "--api-key-env",
                             "NOT_SET_ANYWHERE", "--context", str(context), "q"],
                            capture_output=True, text=True, env=env, timeout=180)
    assert no_key.returncode == 1 and "NOT_SET_ANYWHERE" in no_key.stderr
