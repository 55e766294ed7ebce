"""What only the Modal backend does, through the fake: what it asks Modal for, the image, keepalive
against idle_timeout, a box Modal ends, and the errors a user sees when Modal is not set up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.backends.cloud.modal import GUEST_ROOT, ModalSandbox, _requirements
from sandboxes.box_tags import BOX_ID_LABEL, EXPIRES_LABEL, OWNER_LABEL, USER_LABEL_PREFIX
from sandboxes.errors import SandboxStartError, SandboxUnavailable
from sandboxes.guest.protocol import guest_version
from tests.cloud.boxproc import until_ready
from tests.cloud.conftest import fake_box_processes


async def test_sandbox_is_created_locked_down(modal_fake) -> None:
    spec = SandboxSpec(backend="modal", cpus=2.0, memory_mb=3072, lifetime_s=600, labels={"tenant": "t1"},
                       env={"MY_SETTING": "1"},
                       options={"app_name": "my-app", "environment": "staging", "idle_timeout_s": 120})
    started = time.time()
    async with open_sandbox(spec) as box:
        r = await box.execute("import os\nprint(os.environ['MY_SETTING'], os.getcwd())")
        assert r.status == "ok", r
        (sb,) = modal_fake.created
        kw = sb._kwargs
        assert kw["block_network"] is True
        assert kw["cpu"] == (1.0, 1.0)  # 2 logical CPUs are one Modal (physical) core
        assert kw["memory"] == (3072, 3072)  # request = hard limit
        assert kw["idle_timeout"] == 120
        assert 600 <= kw["timeout"] <= 600 + spec.startup_timeout_s + 1
        assert kw["app"].name == "my-app" and kw["app"].environment_name == "staging"
        tags = kw["tags"]
        assert tags[BOX_ID_LABEL] == box.box_id and tags[f"{USER_LABEL_PREFIX}tenant"] == "t1"
        assert OWNER_LABEL in tags and started + 590 <= int(tags[EXPIRES_LABEL]) <= time.time() + 610
        # The agent is the box's main process, speaking on stdio, working in the box's own folder.
        args = list(sb._args)
        assert args[:3] == ["python", "-m", "sandboxes.guest"] and args[-1] == "--stdio"
        assert r.stdout.split()[1] == json.loads(args[args.index("--config") + 1])["workdir"]
        assert box.versions["guest"] == guest_version()


async def test_image_is_the_docker_images_requirements_plus_only_the_guest(modal_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="modal")) as box:
        image = modal_fake.created[0]._kwargs["image"]
        layers = dict((kind, value) for kind, value in image._layers)
        assert layers["pip"] == tuple(_requirements())
        assert {"ipykernel", "jupyter_client"} <= {p.split("=")[0].split(">")[0] for p in layers["pip"]}
        assert layers["env"]["PYTHONPATH"] == GUEST_ROOT
        local, remote = layers["dir"]
        assert remote == GUEST_ROOT
        files = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
        assert "sandboxes/__init__.py" in files and (Path(local) / "sandboxes/__init__.py").read_bytes() == b""
        assert all(f == "sandboxes/__init__.py" or f.startswith("sandboxes/guest/") for f in files), files
        # The controller's own package is not what the box imports.
        r = await box.execute("import sandboxes\nprint(open(sandboxes.__file__).read() == '')")
        assert r.stdout == "True\n", r


async def test_requirements_come_from_the_images_folder() -> None:
    text = (Path(__file__).resolve().parents[2] / "images" / "requirements.txt").read_text()
    listed = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    assert _requirements() == listed


async def test_keepalive_holds_off_idle_timeout_but_a_dead_controller_is_reaped(modal_fake) -> None:
    spec = SandboxSpec(backend="modal", options={"idle_timeout_s": 3})
    async with open_sandbox(spec) as box:
        # A cell sends nothing on stdin for 7 s: over twice the idle timeout. The stream's keepalive
        # newlines (every second here) count as activity, so Modal keeps the box.
        r = await box.execute("import time\ntime.sleep(7)\nprint('done')", timeout=30)
        assert r.status == "ok" and r.stdout == "done\n", r
        assert modal_fake.created[0].terminated_by is None
    # Now a controller that stops writing without terminating (it died): Modal reaps the box.
    backend = ModalSandbox(spec, "deadcontroller1")
    stream = await backend.start()
    await stream.close()  # the keepalive stops with it; the box is not terminated
    sb = modal_fake.created[-1]
    for _ in range(200):
        if sb.terminated_by:
            break
        await asyncio.sleep(0.1)
    assert sb.terminated_by == "idle_timeout"
    await backend.destroy()


async def test_box_that_dies_is_reported_with_modals_exit_code(modal_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="modal")) as box:
        await box.execute("x = 1")
        modal_fake.created[0]._crash()
        r = await box.execute("x")
        assert r.status == "sandbox_lost", r
        assert "exit code 137" in r.error.value and modal_fake.created[0].object_id in r.error.value


async def test_box_modal_ends_at_its_timeout_is_lost_not_hung(modal_fake) -> None:
    spec = SandboxSpec(backend="modal", lifetime_s=100, startup_timeout_s=20)
    async with open_sandbox(spec) as box:
        sb = modal_fake.created[0]
        sb._watchdog.cancel()
        sb._watchdog = asyncio.create_task(sb._watch(2, None))  # Modal's timeout, shortened
        r = await box.execute("import time\ntime.sleep(30)", timeout=60)
        assert r.status == "sandbox_lost", r
        assert sb.terminated_by == "timeout"


async def test_large_writes_respect_modals_stdin_buffer(modal_fake) -> None:
    """A 6 MiB guest-call reply and a 20 MB upload cross stdin, which takes at most 2 MiB per drain."""
    async def big(payload):
        return "r" * (6 << 20)

    async with open_sandbox(SandboxSpec(backend="modal"), handlers={"big": big}) as box:
        r = await box.execute("from sandboxes.guest.runtime import call\nprint(len(call('big', None)))")
        assert r.stdout == f"{6 << 20}\n", r
        await box.put_file("blob.bin", b"z" * 20_000_000)
        r = await box.execute("import os\nprint(os.path.getsize('blob.bin'))\nos.remove('blob.bin')")
        assert r.stdout == "20000000\n"


async def test_emergency_destroy_needs_no_event_loop(modal_fake) -> None:
    backend = ModalSandbox(SandboxSpec(backend="modal"), "emergency01")
    await until_ready(await backend.start())
    assert fake_box_processes()
    await asyncio.to_thread(backend.emergency_destroy)  # as atexit would: plain blocking calls
    assert fake_box_processes() == []
    await backend.destroy()


async def test_network_bridge_is_an_explicit_loosening(modal_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="modal", network="bridge", runtime="runsc")):
        kw = modal_fake.created[0]._kwargs
        assert kw["block_network"] is False and kw["runtime"] == "gvisor"


async def test_runc_is_refused_with_a_reason(modal_fake) -> None:
    with pytest.raises(SandboxUnavailable, match="gVisor"):
        async with open_sandbox(SandboxSpec(backend="modal", runtime="runc")):
            pass
    assert modal_fake.created == []


async def test_refused_create_says_what_to_check(modal_fake) -> None:
    modal_fake.settings["fail_create"] = PermissionError("Token missing. Could not authenticate client.")
    with pytest.raises(SandboxStartError) as info:
        async with open_sandbox(SandboxSpec(backend="modal")):
            pass
    assert "modal token new" in str(info.value) and "Could not authenticate" in str(info.value)


async def test_boxes_started_together_share_one_app_lookup(modal_fake, monkeypatch) -> None:
    lookups = []
    original = modal_fake.App.lookup.aio

    async def counting(name, *, environment_name=None, create_if_missing=False):
        lookups.append(name)
        await asyncio.sleep(0.05)
        return await original(name, environment_name=environment_name, create_if_missing=create_if_missing)

    monkeypatch.setattr(modal_fake.App, "lookup", modal_fake.aio_static(counting))
    spec = SandboxSpec(backend="modal", options={"app_name": "shared-lookup"})

    async def one() -> str:
        async with open_sandbox(spec) as box:
            return (await box.execute("1")).status

    assert await asyncio.gather(*[one() for _ in range(4)]) == ["ok"] * 4
    assert lookups == ["shared-lookup"]
