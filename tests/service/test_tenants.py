"""`rlm tenants` against the database of a running server: keys shown once and stored as hashes,
policy changes applied by the server at once, rotation, disabling (running runs cancelled), audit."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from tests.service.conftest import Service, events_of, run_boxes, submit, wait_run, wait_until


def db_rows(service: Service, query: str, *args: object) -> list[tuple]:
    path = service.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(query, args).fetchall()


def test_add_prints_a_key_once_and_stores_only_its_hash(service: Service):
    result = service.tenants("add", "ten-keys", "--backends", "local")
    key = result.stdout.strip()
    assert key.startswith("rlm_") and len(key) > 50 and "\n" not in key
    assert "shown only now" in result.stderr
    (stored_hash,) = db_rows(service, "SELECT key_hash FROM tenants WHERE name = ?", "ten-keys")[0]
    assert stored_hash == hashlib.sha256(key.encode()).hexdigest()
    secret = key.rsplit("_", 1)[1]
    with sqlite3.connect(service.db_url.removeprefix("sqlite:///")) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump  # the key itself is nowhere in the database
    listing = service.tenants("list").stdout
    assert "ten-keys" in listing and secret not in listing and stored_hash not in listing
    again = service.tenants("add", "ten-keys", check=False)
    assert again.returncode == 1 and "exists" in again.stderr


def test_set_changes_the_policy_the_running_server_enforces(service: Service):
    key = service.add_tenant("ten-set", "--max-depth", "2")
    with service.client(key) as client:
        body = {"root_prompt": "q", "context": "c", "limits": {"max_depth": 2}}
        first = client.post("/v1/runs", json=body)
        assert first.status_code == 202
        changed = service.tenants("set", "ten-set", "--max-depth", "1", "--daily-usd", "3.5", "--models", "any")
        policy = json.loads(changed.stdout)
        assert policy["max_depth"] == 1 and policy["daily_usd"] == 3.5 and policy["models"] is None
        refused = client.post("/v1/runs", json=body)
        assert refused.status_code == 403 and refused.json()["error"]["limit"] == "max_depth"
        wait_run(client, first.json()["id"])
    bad = service.tenants("set", "ten-set", "--backends", "cloud9", check=False)
    assert bad.returncode == 1 and "unknown sandbox backend" in bad.stderr


def test_rotate_key_replaces_the_key_at_once(service: Service):
    old = service.add_tenant("ten-rotate")
    new = service.tenants("rotate-key", "ten-rotate").stdout.strip()
    assert new != old and new.startswith("rlm_")
    with service.client(old) as client:
        assert client.get("/v1/runs").status_code == 401
    with service.client(new) as client:
        assert client.get("/v1/runs").status_code == 200


def test_disable_cancels_running_and_queued_runs_and_enable_restores(service: Service):
    key = service.add_tenant("ten-disable", "--max-concurrent-runs", "1")
    with service.client(key) as client:
        running = submit(client, "[sleep] busy")
        queued = submit(client, "[sleep] waiting")
        events_of(client, running["id"], stop=lambda e: e["event"] == "iteration")
        assert wait_until(lambda: run_boxes(running["id"]), 30, "the running run's box")
        service.tenants("disable", "ten-disable")
        assert client.get("/v1/runs").status_code == 403
    rows = lambda: dict(db_rows(service, "SELECT id, status FROM runs WHERE id IN (?, ?)", running["id"], queued["id"]))
    statuses = wait_until(lambda: (s := rows()) and all(v == "cancelled" for v in s.values()) and s, 30,
                          "both runs cancelled after the tenant was disabled")
    assert statuses == {running["id"]: "cancelled", queued["id"]: "cancelled"}
    assert wait_until(lambda: not run_boxes(running["id"]), 30, "the box destroyed")
    service.tenants("enable", "ten-disable")
    with service.client(key) as client:
        assert client.get(f"/v1/runs/{running['id']}").json()["result"]["message"] == "the tenant was disabled"
        wait_run(client, submit(client)["id"])


def test_every_key_policy_and_cancel_action_is_audited(service: Service):
    key = service.add_tenant("ten-audit")
    service.tenants("set", "ten-audit", "--max-iterations", "5")
    service.tenants("rotate-key", "ten-audit")
    new_key = service.tenants("rotate-key", "ten-audit").stdout.strip()
    with service.client(new_key) as client:
        run = submit(client, "[sleep] to cancel")
        client.post(f"/v1/runs/{run['id']}/cancel")
        wait_run(client, run["id"])
    service.tenants("disable", "ten-audit")
    service.tenants("enable", "ten-audit")
    (tenant_id,) = db_rows(service, "SELECT id FROM tenants WHERE name = ?", "ten-audit")[0]
    actions = [(a, actor.split(":")[0], json.loads(d)) for a, actor, d in
               db_rows(service, "SELECT action, actor, detail FROM audit WHERE tenant_id = ? ORDER BY id", tenant_id)]
    assert [a for a, _, _ in actions] == ["tenant_add", "policy_set", "key_rotate", "key_rotate", "run_cancel",
                                          "tenant_disable", "tenant_enable"]
    assert actions[4][1] == "tenant" and actions[4][2] == {"run_id": run["id"]}
    assert all(key not in json.dumps(d) and new_key not in json.dumps(d) for _, _, d in actions)
