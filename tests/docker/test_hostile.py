"""Hostile cells in Docker boxes, under runc and under gVisor.

Each test runs one attack in a box while a second box beside it keeps executing cells and guest calls
(see ``hostile_beside_neighbour``): the attack must end with a clear status, and neither the
controller nor the neighbour may notice. No test sends a packet off this machine: egress is judged by
the box's structure, and the host is probed only on its loopback.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from sandboxes.guest.protocol import MAX_LINE_BYTES
from tests.docker.helpers import hostile_beside_neighbour

pytestmark = pytest.mark.docker


def _box_lost_to_gvisor_overhead(runtime: str | None, r: Any) -> bool:
    """Under gVisor each process in the box also costs memory in gVisor itself, which the box cannot see
    (its /proc/meminfo counts only the box's own pages): hundreds of forked copies can take the box to
    its limit before its visible usage reaches the agent's threshold. The box is then gone, and the
    engine's OOM flag says why. Under runc this must never happen."""
    if r.status == "oom" and r.error is not None and r.error.name == "SandboxLost":
        assert runtime == "runsc", r
        assert "out of memory" in r.error.value, r
        return True
    return False


async def test_fork_bomb(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime, pids=64, kill_grace_s=1.0) as (box, _):
        await box.execute("kept = 1")
        bomb = ("import os\n"
                "while True:\n"
                "    try:\n"
                "        os.fork()\n"
                "    except OSError:\n"
                "        pass\n")
        r = await box.execute(bomb, timeout=4)
        # Under gVisor the copies can fill the box's memory before they reach the process limit; the
        # agent then stops them all before the box's limit, as it does a memory bomb: `oom`.
        if _box_lost_to_gvisor_overhead(runtime, r):
            return
        assert r.status in ("timeout", "kernel_restarted", "oom"), r
        assert r.notice, r
        # The box carries on: the bomb's processes are gone and a new cell can fork again.
        after = await box.execute("import subprocess\nprint(subprocess.run(['true']).returncode)", timeout=30)
        assert after.status == "ok" and after.stdout.endswith("0\n"), after


async def test_fork_bomb_that_escapes_the_process_group(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime, pids=64, kill_grace_s=1.0) as (box, _):
        bomb = ("import os\n"
                "while True:\n"
                "    try:\n"
                "        if os.fork() == 0:\n"
                "            os.setsid()\n"
                "    except OSError:\n"
                "        pass\n")
        r = await box.execute(bomb, timeout=4)
        if _box_lost_to_gvisor_overhead(runtime, r):
            return
        assert r.status in ("timeout", "kernel_restarted", "oom"), r  # oom: as in test_fork_bomb
        # The copies left their process group, so the interrupt missed them; the agent clears them.
        assert r.notice and ("process limit" in r.notice or r.status == "oom"), r
        after = await box.execute("import subprocess\nprint(subprocess.run(['true']).returncode)", timeout=30)
        assert after.status == "ok" and after.stdout.endswith("0\n"), after


async def test_memory_bomb(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime, memory_mb=256) as (box, _):
        await box.execute("kept = 1")
        r = await box.execute("blocks = []\nwhile True:\n    blocks.append(b'\\x01' * (8 << 20))", timeout=60)
        assert r.status == "oom", r
        assert r.notice and ("memory" in r.notice.lower()), r
        # Only the kernel was stopped (under runc by the box's cgroup; under gVisor, where that would take
        # the whole box, by the agent before the box's limit): a new kernel runs the next cell.
        nxt = await box.execute("print('kept' in globals())")
        assert nxt.status == "ok" and nxt.stdout == "False\n", nxt
        assert nxt.notice and "restarted" in nxt.notice
        again = await box.execute("blocks = [b'\\x01' * (8 << 20) for _ in range(4)]\nprint(len(blocks))")
        assert again.status == "ok" and again.stdout == "4\n", again  # and memory is there to use


async def test_filling_the_disk(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime, disk_mb=64, memory_mb=512) as (box, _):
        r = await box.execute("with open('fill', 'wb') as f:\n"
                              "    while True:\n"
                              "        f.write(b'\\0' * (1 << 20))", timeout=60)
        assert r.status == "error", r
        assert r.error is not None and r.error.name == "OSError", r
        assert "No space left on device" in r.error.value or "File too large" in r.error.value, r.error
        for place in ("/tmp/fill", "/dev/shm/fill"):
            r2 = await box.execute(f"with open('{place}', 'wb') as f:\n"
                                   "    while True:\n"
                                   "        f.write(b'\\0' * (1 << 20))", timeout=60)
            assert r2.status == "error" and r2.error is not None and r2.error.name == "OSError", r2
        # Nothing outside the caps is writable, and the box recovers once space is freed.
        r3 = await box.execute(
            "import os\nfor p in ('fill', '/tmp/fill', '/dev/shm/fill'):\n    os.remove(p)\n"
            "open('small', 'w').write('ok')\nprint(open('small').read())")
        assert r3.status == "ok" and r3.stdout == "ok\n", r3


# How long a cell's kernel gets to honour its interrupt here. A freshly started gVisor box beside a
# busy neighbour on 2 cores took over 2 s (the default) to stop at times, and was then restarted:
# what these tests check is the timeout and the cap, not how fast gVisor delivers a signal.
GRACE_S = 5.0


async def test_printing_without_end(runtime: str | None) -> None:
    limit = 64 * 1024
    async with hostile_beside_neighbour(runtime, output_limit_bytes=limit, kill_grace_s=GRACE_S) as (box, _):
        r = await box.execute("while True:\n    print('y' * 10000)", timeout=3)
        assert r.status == "timeout", r
        assert "characters omitted" in r.stdout
        assert len(r.stdout) <= 2 * limit + 200
        assert (await box.execute("print('after')")).stdout == "after\n"


async def test_busy_loop_past_the_timeout(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime, kill_grace_s=GRACE_S) as (box, _):
        await box.execute("kept = 'yes'")
        r = await box.execute("while True:\n    pass", timeout=2)
        assert r.status == "timeout", r
        assert (await box.execute("print(kept)")).stdout == "yes\n"
        stubborn = ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    "while True:\n    pass")
        r = await box.execute(stubborn, timeout=2)
        assert r.status == "kernel_restarted", r
        nxt = await box.execute("print('kept' in globals())")
        assert nxt.status == "ok" and nxt.stdout == "False\n", nxt


async def test_child_process_left_running_after_its_cell(runtime: str | None, docker_client: Any) -> None:
    async with hostile_beside_neighbour(runtime) as (box, _):
        r = await box.execute(
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import os\\nos.setsid()\\nwhile True: pass'],\n"
            "                     start_new_session=True)\n"
            "print(p.pid)")
        assert r.status == "ok", r
        pid = int(r.stdout.strip())
        # The cell is over; its child still spins (inside the box's CPU quota) and the box serves on.
        for _ in range(3):
            alive = await box.execute(f"import os\nos.kill({pid}, 0)\nprint('alive')")
            assert alive.status == "ok" and alive.stdout == "alive\n", alive
        name = box.backend.container_name
    # Closing the box destroyed the container and everything in it, the child included.
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


async def test_no_network_egress_by_structure(runtime: str | None, docker_client: Any) -> None:
    async with hostile_beside_neighbour(runtime) as (box, _):
        r = await box.execute(
            "import os\n"
            "print(sorted(os.listdir('/sys/class/net')))\n"
            "print(len([l for l in open('/proc/net/route').read().splitlines()[1:] if l.strip()]))\n")
        assert r.status == "ok", r
        interfaces, routes = r.stdout.splitlines()
        assert interfaces == "['lo']"
        assert routes == "0"
        attrs = docker_client.api.inspect_container(box.backend.container_name)
        assert attrs["HostConfig"]["NetworkMode"] == "none"
        assert attrs["NetworkSettings"]["IPAddress"] == ""


async def test_host_loopback_service_is_out_of_reach(runtime: str | None) -> None:
    connections: list[Any] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with hostile_beside_neighbour(runtime) as (box, _):
            r = await box.execute(
                "import socket\n"
                "for host in ('127.0.0.1', 'localhost'):\n"
                "    try:\n"
                f"        socket.create_connection((host, {port}), timeout=3)\n"
                "        print('connected')\n"
                "    except OSError as e:\n"
                "        print(type(e).__name__)\n")
            assert r.status == "ok", r
            assert "connected" not in r.stdout
            assert r.stdout.splitlines()[0] == "ConnectionRefusedError", r.stdout
    finally:
        server.close()
        await server.wait_closed()
    assert connections == []


async def test_host_environment_and_files_are_out_of_reach(runtime: str | None, tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("RLM_TEST_HOST_SECRET", token)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(token)
    async with hostile_beside_neighbour(runtime) as (box, _):
        r = await box.execute(
            "import os, glob\n"
            f"token = {token!r}\n"
            "env_hits = [k for k, v in os.environ.items() if token in v or k == 'RLM_TEST_HOST_SECRET']\n"
            "proc_hits = []\n"
            "for p in glob.glob('/proc/[0-9]*/environ'):\n"
            "    try:\n"
            "        proc_hits += [p] if token.encode() in open(p, 'rb').read() else []\n"
            "    except OSError:\n"
            "        pass\n"
            f"print(env_hits, proc_hits, os.path.exists({str(secret_file)!r}))\n"
            "try:\n    print(os.listdir('/run/sandbox'))\nexcept OSError as e:\n    print(type(e).__name__)\n"
            "print(os.path.exists('/var/run/docker.sock'), os.path.exists('/run/docker.sock'))\n"
            "found = []\n"
            "for root in ('/etc', '/home', '/tmp', '/run', '/opt', '/root', '/mnt', '/srv'):\n"
            "    for d, _, files in os.walk(root):\n"
            "        for f in files:\n"
            "            try:\n"
            "                if token.encode() in open(os.path.join(d, f), 'rb').read(1 << 20):\n"
            "                    found.append(os.path.join(d, f))\n"
            "            except OSError:\n"
            "                pass\n"
            "print(found)\n", timeout=300)  # reads every file of the image: slow under gVisor, not hostile
        assert r.status == "ok", r
        lines = r.stdout.splitlines()
        assert lines[0] == "[] [] False", r.stdout
        assert lines[1] == "PermissionError", r.stdout  # the channel folder cannot even be listed
        assert lines[2] == "False False"
        assert lines[3] == "[]"


async def test_kernel_code_cannot_stop_or_kill_the_agent(runtime: str | None) -> None:
    # The kernel is the agent's child but runs as a user of its own with no capability: every signal it
    # sends to the agent is refused, and one to every process it can reach kills only its own.
    async with hostile_beside_neighbour(runtime) as (box, _):
        await box.execute("kept = 'yes'")
        for signame in ("SIGSTOP", "SIGKILL", "SIGTERM"):
            r = await box.execute(f"import os, signal\nos.kill(os.getppid(), signal.{signame})", timeout=20)
            assert r.status == "error" and r.error is not None and r.error.name == "PermissionError", (signame, r)
        r = await box.execute("import ctypes\nprint(ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0))")  # ATTACH
        assert r.stdout == "-1\n", r
        r = await box.execute(
            "import subprocess\n"
            "child = subprocess.Popen(['sleep', '600'])\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
            "print(child.wait())\n", timeout=30)
        assert r.status == "ok" and r.stdout.splitlines()[-1] == "-9", r  # its own child, and nothing else
        after = await box.execute("print(kept)")
        assert after.status == "ok" and after.stdout == "yes\n", after  # same agent, same kernel
        stopped = await box.execute("os.kill(os.getpid(), signal.SIGSTOP)", timeout=3)
        assert stopped.status in ("timeout", "kernel_restarted"), stopped  # the agent stays in charge
        assert (await box.execute("print('on')")).stdout == "on\n"


async def test_the_kernel_runs_as_another_user_with_no_capability(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime) as (box, _):
        r = await box.execute(
            "import os\n"
            "def status(pid):\n"
            "    return dict(l.split(':', 1) for l in open(f'/proc/{pid}/status').read().splitlines() if ':' in l)\n"
            "me, agent = status('self'), status(os.getppid())\n"
            "print(me['Uid'].split()[0], agent['Uid'].split()[0], os.getgroups())\n"
            "print(*(int(me[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd')))\n")
        assert r.status == "ok", r
        ids, caps = r.stdout.splitlines()
        assert ids == "10001 10000 []", r.stdout
        assert caps == "0 0 0 0", r.stdout


# The kernel code of every RLM in the tree tries to pass itself off as another node: a made-up depth
# (to escape max_depth), another RLM's id. The calls go through the real handlers RLM binds to each
# box, over the Docker channel.
FORGERIES = (
    "from sandboxes.guest.runtime import call, GuestCallError\n"
    "for forged in ({'prompt': 'x', 'context': None, 'depth': 0}, {'prompt': 'x', 'context': None, 'rlm_id': '0'},\n"
    "               {'prompt': 'x', 'depth': -5}):\n"
    "    try:\n"
    "        call('rlm_query', forged)\n"
    "        print('ACCEPTED', sorted(forged))\n"
    "    except GuestCallError as e:\n"
    "        print('refused:', e)\n"
)


def test_forged_depth_cannot_escape_the_recursion_limit(runtime: str | None, tmp_path: Any) -> None:
    from rlm import RLM, Limits
    from rlm.testing import FakeLLMServer, FakeRequest, split

    def models(request: FakeRequest) -> str:
        first = request.messages[0]["content"]
        if "child task" in first:  # the child RLM at depth 1, in a box of its own
            if request.turn == 0:
                return f"```repl\n{FORGERIES}g = rlm_query('grandchild task', context='gc')\nprint(g)\n```"
            return "```repl\nFINAL('child:' + g)\n```"
        if request.turn == 0:  # the root, depth 0
            return f"```repl\n{FORGERIES}r = rlm_query('child task', context='c')\nprint(r)\n```"
        return "FINAL_VAR(r)"

    events: list[dict[str, Any]] = []
    with FakeLLMServer() as server:
        server.policy = split(models, lambda request: "plain answer")
        rlm = RLM(backend="openai",
                  backend_kwargs={"model_name": "gpt-5-mini", "base_url": server.openai_base_url, "api_key": "k"},
                  environment="docker", environment_kwargs={"runtime": runtime}, max_depth=2,
                  limits=Limits(max_wall_s=600, cell_timeout_s=120), on_event=events.append)
        result = rlm.completion("root context")
    assert result.status == "final", result.message
    assert result.response == "child:plain answer"
    starts = {e["rlm_id"]: e for e in events if e["event"] == "rlm_start"}
    # Depth is the controller's: the child is at 1, and its own rlm_query (depth 2 = max_depth) is a
    # plain model call whatever depth its code claimed.
    assert set(starts) == {"0", "0.1", "0.1.1"}
    assert (starts["0"]["depth"], starts["0.1"]["depth"], starts["0.1.1"]["depth"]) == (0, 1, 2)
    assert starts["0.1.1"]["plain_call"] is True and starts["0.1.1"]["box_id"] is None
    cells = [e for e in events if e["event"] == "cell" and e["rlm_id"] in ("0", "0.1")]
    assert {e["rlm_id"] for e in cells} == {"0", "0.1"}
    for cell in cells:
        if "refused:" not in cell["stdout"]:
            continue
        assert "ACCEPTED" not in cell["stdout"], cell["stdout"]
        assert cell["stdout"].count("refused: ValueError: unexpected payload fields") == 3, cell["stdout"]
    assert sum("refused:" in cell["stdout"] for cell in cells) == 2  # one forging cell per RLM with a box


async def test_kernel_code_cannot_pose_as_the_agent(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime) as (box, _):
        # The channel socket takes one connection (the agent's) and refuses the rest, so a forged
        # `ready`/`result` from kernel code goes nowhere.
        r = await box.execute(
            "import socket, json\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect('/run/sandbox/agent.sock')\n"
            "    s.sendall(json.dumps({'type': 'result', 'id': 'x1', 'status': 'ok'}).encode() + b'\\n')\n"
            "    s.settimeout(5)\n"
            "    print('reply', s.recv(100))\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n")
        assert r.status == "ok", r
        assert r.stdout.strip() in ("reply b''", "ConnectionResetError", "BrokenPipeError", "ConnectionRefusedError"), r
        assert box.channel.violations == 0
        assert (await box.execute("print(1)")).stdout == "1\n"


async def test_forged_guest_call_with_huge_payload(runtime: str | None) -> None:
    async with hostile_beside_neighbour(runtime) as (box, _):
        r = await box.execute(
            "from sandboxes.guest.runtime import call, GuestCallError\n"
            f"try:\n    call('echo', 'x' * {MAX_LINE_BYTES + 1024})\n"
            "except GuestCallError as e:\n    print('refused', 'cap' in str(e))\n"
            "import os, socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(os.environ['SANDBOX_CALL_SOCKET'])\n"
            "blob = b'z' * (4 << 20)\n"
            "for _ in range(16):\n"  # 64 MiB with no newline: a line the agent must drop, not hold
            "    s.sendall(blob)\n"
            "s.sendall(b'\\n')\n"
            "print(s.recv(1000)[:60])\n"
            "print(call('echo', 'still works'))\n", timeout=60)
        assert r.status == "ok", r
        assert "refused True" in r.stdout
        assert "still works" in r.stdout
        assert box.channel.violations == 0

