"""The local backend: the shared contract, plus what only a child-process backend can show."""

from __future__ import annotations

import asyncio
import time

import pytest

from sandboxes import SandboxSpec, open_sandbox, open_sandbox_sync
from sandboxes.errors import SandboxClosed
from tests.conftest import box_processes
from tests.sandbox_contract import HANDLERS, SandboxContract


class TestLocalContract(SandboxContract):
    backend = "local"


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_flood_keeps_controller_memory_bounded() -> None:
    async with open_sandbox(SandboxSpec(output_limit_bytes=256 * 1024)) as box:
        await box.execute("1")
        _peak_rss_reset()
        base = _peak_rss_mb()
        r = await box.execute("import sys\ns = 'z' * (1 << 20)\nfor _ in range(1024): print(s)", timeout=120)
        grown = _peak_rss_mb() - base
        assert r.status == "ok" and "characters omitted" in r.stdout
        assert grown < 50, f"controller peak memory grew by {grown:.0f} MB for a 1 GiB flood"


async def test_no_process_left_after_close() -> None:
    async with open_sandbox(SandboxSpec()) as box:
        box_id = box.box_id
        r = await box.execute(
            "import subprocess\n"
            "p1 = subprocess.Popen(['sleep', '300'])\n"
            "p2 = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # left its group
            "print(p1.pid, p2.pid)")
        pids = [int(p) for p in r.stdout.split()]
        assert all(pid in box_processes(box_id) for pid in pids)
    assert box_processes(box_id) == []


async def test_no_process_left_after_cancellation() -> None:
    opened = asyncio.Event()
    ids: list[str] = []

    async def cell_running(payload: object) -> None:
        opened.set()

    async def run() -> None:
        async with open_sandbox(SandboxSpec(), handlers={"running": cell_running}) as box:
            ids.append(box.box_id)
            await box.execute("import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True)")
            await box.execute("import time\nfrom sandboxes.guest.runtime import call\ncall('running')\n"
                              "time.sleep(60)", timeout=120)

    task = asyncio.create_task(run())
    await asyncio.wait_for(opened.wait(), 60)  # cancelled while a cell runs
    assert box_processes(ids[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert box_processes(ids[0]) == []


async def test_cancelled_during_start_leaves_nothing() -> None:
    before = set(box_processes())
    task = asyncio.create_task(open_sandbox(SandboxSpec()).__aenter__())
    async with asyncio.timeout(60):  # cancelled once the box has processes, before it is ready
        while not set(box_processes()) - before and not task.done():
            await asyncio.sleep(0.01)
    assert not task.done(), "the box became ready before the test could cancel its start"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(box_processes()) - before == set()


async def test_no_host_secrets_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    monkeypatch.setenv("SOME_HOST_VAR", "host")
    async with open_sandbox(SandboxSpec(env={"ALLOWED": "yes"})) as box:
        r = await box.execute("import os\nprint(sorted(k for k in os.environ if 'KEY' in k or k.startswith('SOME')), "
                              "os.environ.get('ALLOWED'))")
        assert r.stdout == "[] yes\n"


async def test_rlimits_apply() -> None:
    async with open_sandbox(SandboxSpec(memory_mb=1024, disk_mb=64, nofile=256)) as box:
        r = await box.execute("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20, "
                              "resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20, "
                              "resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
        assert r.stdout == "1024 64 256\n"
        big = await box.execute("x = bytearray(2 << 30)")
        assert big.status == "error" and big.error.name == "MemoryError"
        disk = await box.execute("open('big.bin', 'wb').write(b'0' * (100 << 20))")
        assert disk.status == "error" and disk.error is not None
        assert (await box.execute("print('ok')")).stdout == "ok\n"


async def test_kernel_code_cannot_label_the_agents_death_oom() -> None:
    # On the local backend kernel code runs as the agent's user: it writes "out of memory" where the
    # agent's last words are kept, then kills the agent. The status is the exit signal's, not the words'.
    async with open_sandbox(SandboxSpec()) as box:
        r = await box.execute(
            "import os, signal, time\n"
            "with open(f'/proc/{os.getppid()}/fd/2', 'w') as agent_stderr:\n"
            "    agent_stderr.write('MemoryError: out of memory (OOM) - the box ran out of memory\\n')\n"
            "os.kill(os.getppid(), signal.SIGKILL)\n"
            "time.sleep(30)", timeout=20)
        assert r.status == "sandbox_lost", r
        assert r.error is not None and "signal 9" in r.error.value, r.error
        assert "out of memory" in r.error.value  # quoted for a human, and only that


async def test_closed_box_says_so() -> None:
    async with open_sandbox(SandboxSpec()) as box:
        pass
    with pytest.raises(SandboxClosed):
        await box.execute("1")


async def test_lifetime_reached() -> None:
    async with open_sandbox(SandboxSpec(lifetime_s=2.0)) as box:
        assert (await box.execute("1")).status == "ok"
        r = await box.execute("import time; time.sleep(10)", timeout=20)
        assert r.status == "sandbox_lost"
        assert "lifetime" in (r.notice or "")
        assert box_processes(box.box_id) == []


def test_sync_wrapper() -> None:
    seen = []

    def record(payload):  # plain functions are served from worker threads
        seen.append(payload)
        return len(seen)

    with open_sandbox_sync(SandboxSpec(), handlers={"record": record, **HANDLERS}) as box:
        r = box.execute("from sandboxes.guest.runtime import call\nprint(call('record', 'a'), call('echo', [1]))")
        assert r.stdout == "1 [1]\n"
        box_id = box.box_id
    assert seen == ["a"]
    assert box_processes(box_id) == []


def test_agent_with_no_controller_leaves_no_kernel(tmp_path) -> None:
    """The entry point starts the kernel before the agent connects; if the controller is already gone
    (killed mid-start), the agent exits and takes the kernel with it."""
    import json
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    from sandboxes.backends.local import MARKER_ENV

    marker = f"orphan-{uuid.uuid4().hex[:8]}"
    root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": root, MARKER_ENV: marker, "HOME": str(tmp_path)}
    config = json.dumps({"workdir": str(tmp_path / "work")})
    agent = subprocess.run([sys.executable, "-m", "sandboxes.guest", "--config", config,
                            "--connect", str(tmp_path / "nobody.sock")],
                           env=env, capture_output=True, timeout=60)
    assert agent.returncode != 0
    deadline = time.monotonic() + 10
    while box_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert box_processes(marker) == []


def test_the_kernel_is_born_under_the_box_limits(tmp_path) -> None:
    """The agent sets its rlimits on itself before it launches the kernel, so the kernel holds them
    from its first instruction: nothing sets them from outside after the start, racing it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = (
        "import json, signal, sys\n"
        "from sandboxes.guest.kernelproc import launch\n"
        "kernel = launch(json.loads(sys.argv[1]))\n"
        "try:\n"
        "    print(open(f'/proc/{kernel.pid}/limits').read())\n"
        "finally:\n"
        "    kernel.signal(signal.SIGKILL)\n"
    )
    config = json.dumps({"workdir": str(tmp_path / "work"), "rlimits": {"NOFILE": 123, "FSIZE": 7 << 20}})
    out = subprocess.run([sys.executable, "-c", script, config], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    limits = {line[:26].strip(): line[26:].split()[:2] for line in out.stdout.splitlines()[1:] if line.strip()}
    assert limits["Max open files"] == ["123", "123"], out.stdout
    assert limits["Max file size"] == [str(7 << 20), str(7 << 20)], out.stdout
