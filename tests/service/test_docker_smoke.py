"""One run on the Docker backend through the service: the box is a container, labelled with the
run, and gone when the run ends."""

from __future__ import annotations

import pytest

from sandboxes.box_tags import RUN_ID_LABEL
from tests.docker.conftest import docker_client  # noqa: F401  (the engine and the kernel image, or a skip)
from tests.service.conftest import Service, events_of, submit, wait_run


@pytest.mark.docker
def test_a_run_in_a_docker_box(make_service, docker_client):  # noqa: F811
    svc: Service = make_service(backends=("docker",)).start()
    key = svc.add_tenant("docker-smoke", "--backends", "docker", "--runtimes", "runc")
    with svc.client(key) as client:
        run = submit(client, context="d" * 4321)
        assert run["settings"]["backend"] == "docker"
        events = events_of(client, run["id"])
        done = wait_run(client, run["id"], deadline_s=300)
    assert done["status"] == "final" and done["result"]["response"] == "len=4321", done
    start = next(e for e in events if e["event"] == "run_start")
    assert start["data"]["config"]["environment"] == "docker"
    box_ids = {e["data"]["box_id"] for e in events if e["event"] == "rlm_start"}
    assert len(box_ids) == 1
    assert docker_client.containers.list(all=True, filters={"label": f"{RUN_ID_LABEL}={run['id']}"}) == []
