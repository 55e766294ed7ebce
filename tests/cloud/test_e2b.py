"""What only the E2B backend does, through the fake: what it asks E2B for, the guest files it writes,
the command it starts, a box E2B ends, a template without the guest's packages, and set-up errors."""

from __future__ import annotations

import asyncio
import shlex
import time

import pytest

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.backends.cloud.e2b import DEFAULT_TEMPLATE, E2BSandbox
from sandboxes.box_tags import BOX_ID_LABEL, EXPIRES_LABEL, OWNER_LABEL, USER_LABEL_PREFIX
from sandboxes.errors import SandboxStartError
from sandboxes.backends.guest_bundle import guest_files
from tests.cloud.boxproc import until_ready
from tests.cloud.conftest import fake_box_processes


async def test_sandbox_is_created_without_internet_and_with_a_lifetime(e2b_fake) -> None:
    spec = SandboxSpec(backend="e2b", lifetime_s=900, labels={"tenant": "t2"}, env={"MY_SETTING": "2"})
    started = time.time()
    async with open_sandbox(spec) as box:
        r = await box.execute("import os\nprint(os.environ['MY_SETTING'])")
        assert r.stdout == "2\n", r
        (sbx,) = e2b_fake.created
        kw = sbx.create_kwargs
        assert kw["allow_internet_access"] is False
        assert kw["network"] == {"allow_public_traffic": False}
        assert kw["template"] == DEFAULT_TEMPLATE
        assert 900 <= kw["timeout"] <= 900 + spec.startup_timeout_s + 1
        tags = kw["metadata"]
        assert tags[BOX_ID_LABEL] == box.box_id and tags[f"{USER_LABEL_PREFIX}tenant"] == "t2"
        assert OWNER_LABEL in tags and int(tags[EXPIRES_LABEL]) >= started + 890
        (run,) = sbx.run_calls
        assert run["background"] is True and run["stdin"] is True
        assert run["timeout"] == 0  # E2B's default (60 s) would cut the agent's stream after a minute
        assert run["retain_output"] is False  # or the SDK keeps every byte the agent writes
        argv = shlex.split(run["cmd"])
        assert argv[0] == "exec" and argv[1:4] == ["python3", "-m", "sandboxes.guest"]
        assert argv[-1] == "--stdio"


async def test_only_the_guest_package_is_written_into_the_box(e2b_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="e2b")) as box:
        run = e2b_fake.created[0].run_calls[0]
        guest_root = run["envs"]["PYTHONPATH"]
        r = await box.execute(
            "import os, sandboxes\n"
            f"root = {guest_root!r}\n"
            "print(sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs))\n"
            "print(repr(open(sandboxes.__file__).read()))")
        files, init = r.stdout.splitlines()
        assert eval(files) == sorted(guest_files())  # noqa: S307 - our own test output
        assert init == "''"


async def test_template_option_and_internet_loosening(e2b_fake) -> None:
    spec = SandboxSpec(backend="e2b", network="bridge", options={"template": "my-kernel-template"})
    async with open_sandbox(spec):
        kw = e2b_fake.created[0].create_kwargs
        assert kw["template"] == "my-kernel-template" and kw["allow_internet_access"] is True


async def test_box_e2b_kills_at_its_timeout_is_lost_not_hung(e2b_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="e2b")) as box:
        sbx = e2b_fake.created[0]
        sbx._deadline = time.monotonic() + 2  # E2B's timeout, shortened
        r = await box.execute("import time\ntime.sleep(30)", timeout=60)
        assert r.status == "sandbox_lost", r
        assert sbx.killed_by == "timeout"
        assert "no longer running" in r.error.value


async def test_agent_crash_is_reported_with_its_exit(e2b_fake) -> None:
    async with open_sandbox(SandboxSpec(backend="e2b")) as box:
        await box.execute("x = 1")
        e2b_fake.created[0]._crash()
        r = await box.execute("x")
        assert r.status == "sandbox_lost", r
        assert "exited with code 137" in r.error.value


async def test_template_without_jupyter_fails_at_start_with_a_hint(e2b_fake) -> None:
    """A Python without ipykernel/jupyter_client (Debian's own python3 here) stands in for a template
    that lacks them: the start fails fast, quoting the agent and saying what to use instead."""
    spec = SandboxSpec(backend="e2b", startup_timeout_s=30, options={"python": "/usr/bin/python3"})
    probe = await asyncio.create_subprocess_exec("/usr/bin/python3", "-c", "import jupyter_client",
                                                 stderr=asyncio.subprocess.DEVNULL)
    if not (await probe.wait()):
        pytest.skip("/usr/bin/python3 here has jupyter_client")
    started = time.monotonic()
    with pytest.raises(SandboxStartError) as info:
        async with open_sandbox(spec):
            pass
    assert time.monotonic() - started < 20
    text = str(info.value)
    assert "No module named" in text and "images/requirements.txt" in text, text
    assert e2b_fake.created[0].killed_by == "kill"


async def test_refused_create_says_what_to_check(e2b_fake) -> None:
    e2b_fake.settings["fail_create"] = PermissionError("401: Invalid API key")
    with pytest.raises(SandboxStartError) as info:
        async with open_sandbox(SandboxSpec(backend="e2b")):
            pass
    assert "E2B_API_KEY" in str(info.value) and "Invalid API key" in str(info.value)


async def test_emergency_destroy_uses_the_sync_client(e2b_fake) -> None:
    backend = E2BSandbox(SandboxSpec(backend="e2b"), "emergency02")
    await until_ready(await backend.start())
    assert fake_box_processes()
    await asyncio.to_thread(backend.emergency_destroy)
    assert fake_box_processes() == []
    assert e2b_fake.created[0].killed_by == "sync kill"
    await backend.destroy()
