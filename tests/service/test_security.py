"""The service's trust boundary, each point against the real server: authentication, tenant
isolation (404, never a hint that something exists), the policy, body caps and deadlines, malformed
input, provider settings in requests, and ids with path characters."""

from __future__ import annotations

import socket
import time

import httpx

from tests.service.conftest import Service, submit, wait_run


def test_no_key_is_401(service: Service):
    with service.client(None) as anonymous:
        for method, path in (("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/usage"),
                             ("POST", "/v1/contexts")):
            response = anonymous.request(method, path, json={"root_prompt": "x", "context": "y"})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthenticated"


def test_a_wrong_key_is_401(service: Service):
    key = service.add_tenant("sec-wrong-key")
    prefix, key_id, secret = key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(secret)}"  # the right key id, a wrong secret
    for bad in (forged, "rlm_0000000000000000_" + secret, "not-a-key", key + "x", "Basic " + key):
        with service.client(bad) as client:
            assert client.get("/v1/runs").status_code == 401, bad
    with service.client(key) as client:
        assert client.get("/v1/runs").status_code == 200


def test_a_disabled_tenant_is_403(service: Service):
    key = service.add_tenant("sec-disabled")
    with service.client(key) as client:
        assert client.get("/v1/runs").status_code == 200
        service.tenants("disable", "sec-disabled")
        response = client.get("/v1/runs")
        assert response.status_code == 403 and response.json()["error"]["code"] == "tenant_disabled"
        assert client.post("/v1/runs", json={"root_prompt": "q", "context": "c"}).status_code == 403


def test_another_tenants_run_and_context_do_not_exist(service: Service):
    key_a = service.add_tenant("sec-iso-a")
    key_b = service.add_tenant("sec-iso-b")
    with service.client(key_a) as a, service.client(key_b) as b:
        run_b = submit(b, "[sleep] busy")
        context_b = b.post("/v1/contexts", params={"kind": "text"}, content=b"secret of b").json()["id"]
        missing = a.get("/v1/runs/run_" + "0" * 24)
        assert missing.status_code == 404
        for response in (a.get(f"/v1/runs/{run_b['id']}"),
                         a.get(f"/v1/runs/{run_b['id']}/events"),
                         a.post(f"/v1/runs/{run_b['id']}/cancel")):
            assert response.status_code == 404
            assert response.json() == missing.json()  # exactly as if it did not exist
        assert run_b["id"] not in [r["id"] for r in a.get("/v1/runs").json()["runs"]]
        using = a.post("/v1/runs", json={"root_prompt": "q", "context_id": context_b})
        assert using.status_code == 404 and using.json()["error"]["code"] == "not_found"
        assert b.get(f"/v1/runs/{run_b['id']}").json()["status"] in ("queued", "running")  # untouched by A
        assert a.get("/v1/usage").json()["usage"] == []
        b.post(f"/v1/runs/{run_b['id']}/cancel")
        assert wait_run(b, run_b["id"])["status"] == "cancelled"


def test_a_request_above_the_policy_is_refused_naming_the_limit(service: Service):
    key = service.add_tenant("sec-policy", "--max-depth", "1", "--max-memory-mb", "512", "--max-cost-usd", "0.5",
                             "--models", "gpt-5-mini,gpt-5-nano")
    with service.client(key) as client:
        for body, limit in (({"limits": {"max_depth": 2}}, "max_depth"),
                            ({"sandbox": {"memory_mb": 4096}}, "max_memory_mb"),
                            ({"limits": {"max_cost_usd": 1.0}}, "max_cost_usd"),
                            ({"sandbox": {"backend": "docker"}}, "backends"),
                            ({"model": "claude-haiku-4-5"}, "models")):
            response = client.post("/v1/runs", json={"root_prompt": "q", "context": "c", **body})
            assert response.status_code == 403, (body, response.text)
            error = response.json()["error"]
            assert error["code"] == "policy_violation" and error["limit"] == limit, error
            if limit.startswith("max_"):
                assert f"{limit}=" in error["message"], error  # e.g. "... policy limit max_depth=1"
        assert client.get("/v1/runs").json()["runs"] == []  # nothing was accepted


def test_a_body_above_the_cap_is_413(service: Service):
    key = service.add_tenant("sec-size")
    with service.client(key) as client:
        big = client.post("/v1/runs", json={"root_prompt": "q", "context": "x" * 300_000})
        assert big.status_code == 413, big.text
        upload = client.post("/v1/contexts", params={"kind": "text"}, content=b"x" * 3_000_000)
        assert upload.status_code == 413

        def chunks():  # no Content-Length: the cap holds while the body streams in
            for _ in range(40):
                yield b"y" * 100_000

        streamed = client.post("/v1/contexts", params={"kind": "text"}, content=chunks())
        assert streamed.status_code == 413
        assert client.get("/v1/runs").json()["runs"] == []
    folder = service.workdir / "data" / "contexts"
    leftovers = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size >= 2_000_000] if folder.exists() else []
    assert leftovers == []  # refused uploads leave no file behind


def test_a_slow_drip_upload_is_timed_out(service: Service):
    key = service.add_tenant("sec-drip")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", service.port), timeout=60) as sock:
        head = (f"POST /v1/contexts?kind=text HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Length: 100000\r\n\r\n").encode()
        sock.sendall(head + b"a")
        sock.settimeout(0.3)
        answer = b""
        while b"\r\n\r\n" not in answer:  # drip a byte now and then until the server answers
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            except socket.timeout:
                if time.monotonic() - started > 60:
                    raise AssertionError("the server kept accepting a slow drip for 60 s")
                sock.sendall(b"a")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 30  # the body deadline is 3 s; wide margin


def test_malformed_json_is_422(service: Service):
    key = service.add_tenant("sec-json")
    with service.client(key) as client:
        for content in (b"{not json", b"[1, 2", b"\xff\xfe", b'{"root_prompt": 5, "context": "c"}', b"null"):
            response = client.post("/v1/runs", content=content, headers={"content-type": "application/json"})
            assert response.status_code == 422, (content, response.text)
            assert response.json()["error"]["code"] == "invalid_request"
        bad_json_context = client.post("/v1/contexts", params={"kind": "json"}, content=b"{oops")
        assert bad_json_context.status_code == 422


def test_a_base_url_or_provider_key_in_a_request_is_refused(service: Service, fake_llm):
    key = service.add_tenant("sec-provider")
    before = fake_llm.request_count
    with service.client(key) as client:
        for body in ({"base_url": "http://127.0.0.1:1/v1"}, {"api_key": "sk-mine"},
                     {"sandbox": {"base_url": "http://127.0.0.1:1"}}, {"limits": {"api_key": "x"}},
                     {"backend_kwargs": {"base_url": "http://127.0.0.1:1"}}):
            response = client.post("/v1/runs", json={"root_prompt": "q", "context": "c", **body})
            assert response.status_code == 422, (body, response.text)
            assert "server's configuration" in response.json()["error"]["message"], response.text
        as_model = client.post("/v1/runs", json={"root_prompt": "q", "context": "c", "model": "http://127.0.0.1:1/v1"})
        assert as_model.status_code == 403 and as_model.json()["error"]["limit"] == "models"
        assert client.get("/v1/runs").json()["runs"] == []
    assert fake_llm.request_count == before


def test_ids_with_path_characters_are_404(service: Service):
    key = service.add_tenant("sec-paths")
    with service.client(key) as client:
        run = submit(client)
        for path in ("/v1/runs/..%2F..%2Fetc%2Fpasswd", "/v1/runs/run_..%2F" + run["id"],
                     f"/v1/runs/{run['id']}%00", "/v1/runs/%2e%2e", f"/v1/runs/{run['id']}%2F..%2F..",
                     "/v1/runs/run_" + "0" * 23 + "%2F"):
            assert client.get(path).status_code == 404, path
            assert client.get(path + "/events").status_code == 404, path
        for context_id in ("../../service.db", "ctx_../x", "/etc/passwd", "ctx_" + "0" * 24):
            response = client.post("/v1/runs", json={"root_prompt": "q", "context_id": context_id})
            assert response.status_code == 404, (context_id, response.text)
        resume = client.get(f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "../1"})
        assert resume.status_code == 422
        wait_run(client, run["id"])
    httpx.get(f"{service.url}/healthz").raise_for_status()  # still serving
