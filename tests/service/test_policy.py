"""Per-tenant policy on a real server: what a run gets when it asks for less, nothing, or a backend
the platform forces (Docker with gVisor), and a policy the run's own limits then enforce."""

from __future__ import annotations

from tests.service.conftest import Service, submit, wait_run


def test_a_request_for_less_gets_less_and_silence_gets_the_policy(service: Service):
    key = service.add_tenant("pol-less", "--max-depth", "2", "--max-iterations", "12", "--max-wall-s", "600",
                             "--max-cell-timeout-s", "60", "--max-cost-usd", "1.5", "--max-tokens", "none")
    with service.client(key) as client:
        asked = submit(client, limits={"max_iterations": 4, "max_wall_s": 100, "cell_timeout_s": 10,
                                       "max_cost_usd": 0.25}, sandbox={"memory_mb": 256, "cpus": 0.5})
        settings = asked["settings"]
        assert (settings["max_iterations"], settings["max_wall_s"], settings["cell_timeout_s"]) == (4, 100, 10)
        assert (settings["max_cost_usd"], settings["memory_mb"], settings["cpus"]) == (0.25, 256, 0.5)
        silent_run = submit(client)
        silent = silent_run["settings"]
        assert (silent["max_iterations"], silent["max_wall_s"], silent["cell_timeout_s"]) == (12, 600, 60)
        assert silent["max_depth"] == 1 and silent["max_tokens"] is None and silent["max_cost_usd"] == 1.5
        assert silent["backend"] == "local" and silent["model"] == "gpt-5-mini" and silent["sub_model"] == "gpt-5-nano"
        assert wait_run(client, asked["id"])["status"] == "final"
        wait_run(client, silent_run["id"])


def test_the_policy_limits_are_the_runs_limits(service: Service):
    key = service.add_tenant("pol-iterations", "--max-iterations", "3")
    with service.client(key) as client:
        run = wait_run(client, submit(client, "[spin] never answers")["id"])
    assert run["status"] == "max_iterations" and run["result"]["iterations"] == 3


def test_a_platform_can_force_docker_with_gvisor(make_service):
    svc: Service = make_service(backends=("local", "docker")).start(ready_path="/healthz")
    key = svc.add_tenant("pol-gvisor", "--backends", "docker", "--runtimes", "runsc")
    with svc.client(key) as client:
        queued = client.post("/v1/runs", json={"root_prompt": "q", "context": "c"})
        assert queued.status_code == 202
        assert queued.json()["settings"]["backend"] == "docker" and queued.json()["settings"]["runtime"] == "runsc"
        client.post(f"/v1/runs/{queued.json()['id']}/cancel")
        for body, limit in (({"sandbox": {"runtime": "runc"}}, "runtimes"), ({"sandbox": {"backend": "local"}}, "backends")):
            refused = client.post("/v1/runs", json={"root_prompt": "q", "context": "c", **body})
            assert refused.status_code == 403 and refused.json()["error"]["limit"] == limit
