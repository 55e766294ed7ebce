"""The warm pool on Docker boxes: hand-out, one run per box, refill, nothing left after close."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxes import SandboxSpec
from sandboxes.box_tags import OWNER_LABEL, owner_id
from sandboxes.pool import SandboxPool

pytestmark = pytest.mark.docker


async def test_docker_pool_hands_out_fresh_boxes(runtime: str | None, docker_client: Any) -> None:
    spec = SandboxSpec(backend="docker", runtime=runtime)
    names = []
    async with SandboxPool(spec, min_idle=2, max_total=3) as pool:
        await pool.wait_ready(timeout=120)
        for _ in range(3):
            async with pool.sandbox() as box:
                names.append(box.backend.container_name)
                r = await box.execute("import os\nprint(os.path.exists('marker'))\nopen('marker', 'w').close()")
                assert r.status == "ok" and r.stdout == "False\n", r
            assert docker_client.containers.list(all=True, filters={"name": names[-1]}) == []
        await pool.wait_ready(timeout=120)
    assert len(set(names)) == 3
    left = docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})
    assert left == []
