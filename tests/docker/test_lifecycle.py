"""Docker boxes: hardening as applied, labels, and destruction on every path (close, cancellation,
failure, lifetime, interpreter exit, SIGTERM), plus reaping what a killed controller left."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxes import Sandbox, SandboxSpec, open_sandbox
from sandboxes.backends.docker.backend import CPU_PERIOD_US, container_config
from sandboxes.box_tags import EXPIRES_LABEL, MANAGED_LABEL, OWNER_LABEL, RUN_ID_LABEL, USER_LABEL_PREFIX, owner_id
from sandboxes.backends.docker.doctor import PROBE_CELL, hardening_findings, host_view
from sandboxes.errors import SandboxStartError, SandboxUnavailable
from sandboxes.backends.docker.reaper import reap

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def gone(client: Any, name: str) -> bool:
    return client.containers.list(all=True, filters={"name": f"^/{name}$"}) == []


async def test_hardening_applies_inside_the_box(runtime: str | None, docker_client: Any) -> None:
    spec = SandboxSpec(backend="docker", runtime=runtime, memory_mb=384, pids=100, disk_mb=96, cpus=0.5)
    async with open_sandbox(spec) as box:
        r = await box.execute(PROBE_CELL)
        assert r.status == "ok", r
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        seen["_host"] = await asyncio.to_thread(host_view, box.backend.container_name)
        from sandboxes.backends.docker.backend import engine_pids_limit

        findings = hardening_findings(seen, 384, engine_pids_limit(spec))
        failed = [f for f in findings if not f[1]]
        assert not failed, failed
        splits = {"kernel user differs from the agent's", "kernel holds no capability"}
        assert splits <= {f[0] for f in findings}
        # A kernel running as its agent's user, or holding a capability, fails those two checks.
        as_agent = dict(seen, agent_uid=seen["uid"], cap_prm="00000000000000e0")
        judged = {name: holds for name, holds, _ in hardening_findings(as_agent, 384, engine_pids_limit(spec))}
        assert not any(judged[name] for name in splits), judged
        attrs = docker_client.api.inspect_container(box.backend.container_name)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    # Only what the agent needs to run the kernel as another user; it drops SETPCAP itself at start.
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 384 * 1024 * 1024
    assert host["CpuQuota"] / host["CpuPeriod"] == 0.5 and host["CpuPeriod"] == CPU_PERIOD_US
    assert host["Init"] is True
    assert host["Privileged"] is False
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["nofile"] == spec.nofile
    assert attrs["Config"]["User"] == "0:0"  # the agent splits the users at once (kernel 10001, agent 10000)
    assert (host.get("Runtime") or "runc") == (runtime or "runc")
    # The channel folder is the only host path in the box, and it is read-only.
    mounts = attrs["Mounts"]
    assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [("bind", "/run/sandbox", False)]
    assert set(host["Tmpfs"]) == {"/home/sandbox", "/tmp"}
    assert "size=96m" in host["Tmpfs"]["/home/sandbox"]


def test_container_config_keeps_the_host_environment_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    spec = SandboxSpec(backend="docker", env={"MY_SETTING": "1"}, labels={"run_id": "r-1", "team": "a"})
    config = container_config(spec, "abc123", "/tmp/rlm-box-abc123-x")
    assert config["environment"]["MY_SETTING"] == "1"
    assert "OPENAI_API_KEY" not in config["environment"]
    assert "sk-host-secret" not in json.dumps(config, default=str)
    assert config["labels"][RUN_ID_LABEL] == "r-1"
    assert config["labels"][f"{USER_LABEL_PREFIX}team"] == "a"
    loosened = container_config(spec.replace(network="bridge"), "abc124", "/tmp/x")
    assert loosened["host_config"]["network_mode"] == "bridge"


@pytest.mark.parametrize("cpus", [4.0, 1.0, 0.5, 0.1, 0.05, 0.01])
def test_cpu_share_is_kept_over_a_short_period(cpus: float) -> None:
    config = container_config(SandboxSpec(backend="docker", cpus=cpus), "abc125", "/tmp/x")["host_config"]
    assert "nano_cpus" not in config  # Docker refuses it together with a period
    assert config["cpu_quota"] >= 1000  # the kernel's floor: Docker refuses less
    assert config["cpu_quota"] / config["cpu_period"] == pytest.approx(cpus, rel=0.01)
    assert config["cpu_period"] == CPU_PERIOD_US or config["cpu_quota"] == 1000


async def test_labels_name_owner_run_and_expiry(docker_client: Any) -> None:
    spec = SandboxSpec(backend="docker", lifetime_s=600, labels={"run_id": "run-42"})
    async with open_sandbox(spec) as box:
        labels = docker_client.api.inspect_container(box.backend.container_name)["Config"]["Labels"]
    assert labels[MANAGED_LABEL] == "true"
    assert labels[OWNER_LABEL] == owner_id()
    assert labels[RUN_ID_LABEL] == "run-42"
    assert abs(float(labels[EXPIRES_LABEL]) - (time.time() + 600)) < 30


async def test_destroyed_on_close_with_its_channel_folder(docker_client: Any) -> None:
    async with open_sandbox(SandboxSpec(backend="docker")) as box:
        name = box.backend.container_name
        folder = box.backend.dir
        assert folder is not None and (folder / "agent.sock").exists()
        # Other users of the host cannot reach the socket: its parent folder is private to us.
        parent = folder.parent.stat()
        assert parent.st_uid == os.geteuid() and parent.st_mode & 0o077 == 0
        assert not gone(docker_client, name)
    assert gone(docker_client, name)
    assert not folder.exists()


async def test_destroyed_when_the_caller_is_cancelled(docker_client: Any) -> None:
    names: list[str] = []
    running = asyncio.Event()

    async def cell_running(payload: Any) -> None:
        running.set()

    async def user() -> None:
        async with open_sandbox(SandboxSpec(backend="docker"), handlers={"running": cell_running}) as box:
            names.append(box.backend.container_name)
            await box.execute("import time\nfrom sandboxes.guest.runtime import call\ncall('running')\n"
                              "while True: time.sleep(0.1)", timeout=120)

    task = asyncio.create_task(user())
    await asyncio.wait_for(running.wait(), 120)  # cancelled while its cell runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names and gone(docker_client, names[0])


async def test_cancelled_while_starting_leaves_nothing(docker_client: Any) -> None:
    before = {c.name for c in docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})}
    for delay in (0.0, 0.05, 0.15, 0.3):
        task = asyncio.create_task(Sandbox.start(SandboxSpec(backend="docker")))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            box = await task
            await box.close()
        except asyncio.CancelledError:
            pass
    after = {c.name for c in docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})}
    assert after - before == set()


async def test_lifetime_reached(docker_client: Any) -> None:
    async with open_sandbox(SandboxSpec(backend="docker", lifetime_s=3)) as box:
        assert (await box.execute("1")).status == "ok"
        name = box.backend.container_name
        async with asyncio.timeout(60):  # the box is destroyed when its lifetime ends, by no one's call
            while not gone(docker_client, name):
                await asyncio.sleep(0.1)
        r = await box.execute("1")
        assert r.status == "sandbox_lost"
        assert r.error is not None and "lifetime" in r.error.value
        assert gone(docker_client, name)


async def test_missing_image_says_how_to_build_it() -> None:
    with pytest.raises(SandboxUnavailable, match="rlm sandbox build-image"):
        async with open_sandbox(SandboxSpec(backend="docker", image="rlm-sandbox-kernel:no-such-tag")):
            pass


async def test_stale_image_fails_before_any_container(docker_client: Any) -> None:
    import io

    from sandboxes.backends.docker.engine import GUEST_VERSION_LABEL
    from sandboxes.backends.docker.image_check import default_image

    tag = "rlm-sandbox-kernel:stale-test"
    dockerfile = f"FROM {default_image()}\nLABEL {GUEST_VERSION_LABEL}=0000000000000000\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="none")
    try:
        before = len(docker_client.containers.list(all=True))
        with pytest.raises(SandboxUnavailable, match="stale"):
            async with open_sandbox(SandboxSpec(backend="docker", image=tag)):
                pass
        assert len(docker_client.containers.list(all=True)) <= before
    finally:
        docker_client.images.remove(tag, force=True)


def test_engine_unreachable_says_how_to_start_one(tmp_path: Path) -> None:
    script = ("import asyncio\nfrom sandboxes import SandboxSpec, open_sandbox\n"
              "async def main():\n"
              "    async with open_sandbox(SandboxSpec(backend='docker')):\n        pass\n"
              "try:\n    asyncio.run(main())\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.stdout.startswith("SandboxUnavailable"), out
    assert "no Docker engine answers" in out.stdout and "Start a Docker engine" in out.stdout


def test_gvisor_missing_is_named() -> None:
    from sandboxes.backends.docker.engine import require_runtime

    class NoGvisor:
        def info(self) -> dict[str, Any]:
            return {"Runtimes": {"runc": {"path": "runc"}}}

    with pytest.raises(SandboxUnavailable, match="gVisor is not installed"):
        require_runtime(NoGvisor(), "runsc")
    require_runtime(NoGvisor(), None)
    require_runtime(NoGvisor(), "runc")


CHILD = """
import asyncio, sys, time
from sandboxes import Sandbox, SandboxSpec
async def main():
    box = await Sandbox.start(SandboxSpec(backend="docker"))
    print(box.backend.container_name, flush=True)
    if sys.argv[1] == "exit":
        return  # the interpreter exits with the box still open
    await asyncio.sleep(600)
asyncio.run(main())
"""


def _child(mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    assert name.startswith("rlm-box-"), name
    return proc, name


def _wait_gone(client: Any, name: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(client, name):
            return True
        time.sleep(0.2)
    return False


def test_destroyed_at_interpreter_exit(docker_client: Any) -> None:
    proc, name = _child("exit")
    proc.wait(60)
    assert _wait_gone(docker_client, name)


def test_destroyed_on_sigterm(docker_client: Any) -> None:
    proc, name = _child("wait")
    assert not gone(docker_client, name)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == -signal.SIGTERM
    assert _wait_gone(docker_client, name)


def test_reap_removes_the_boxes_of_a_killed_controller(docker_client: Any) -> None:
    proc, name = _child("wait")
    proc.kill()
    proc.wait(60)
    assert not gone(docker_client, name)  # nobody cleaned up: that is what reap is for
    found = reap()
    mine = [b for b in found if b.container == name]
    assert mine and mine[0].removed and "gone" in mine[0].reason
    assert gone(docker_client, name)
    # Its channel folder is young, so reap leaves it for a later run (a box may be starting there);
    # the test removes it itself.
    from sandboxes.backends.docker.channel_dirs import channel_parent

    for folder in Path(channel_parent()).glob(f"{name}-*"):
        shutil.rmtree(folder, ignore_errors=True)


async def test_reap_leaves_live_boxes_and_removes_expired_ones(docker_client: Any) -> None:
    async with open_sandbox(SandboxSpec(backend="docker", lifetime_s=600)) as box:
        name = box.backend.container_name
        assert name not in [b.container for b in reap(dry_run=True)]
        later = reap(dry_run=True, now=time.time() + 3600)
        assert any(b.container == name and "lifetime" in b.reason for b in later)
        assert not gone(docker_client, name)


async def test_start_failure_leaves_nothing(docker_client: Any) -> None:
    spec = SandboxSpec(backend="docker", env={"PYTHONPATH": "/nowhere"}, startup_timeout_s=30)
    with pytest.raises(SandboxStartError, match="exited"):
        async with open_sandbox(spec):
            pass
    left = docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})
    assert left == []
