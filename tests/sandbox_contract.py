"""The behaviour every backend must show, written once.

A backend's test module subclasses ``SandboxContract`` and provides ``make_spec``; pytest then runs
every test below against that backend. Tests go through the public API only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.errors import SandboxError, SandboxLost

MB = 1024 * 1024


async def echo(payload: Any) -> Any:
    return payload


async def fail(payload: Any) -> Any:
    raise RuntimeError(f"handler refused {payload!r}")


HANDLERS = {"echo": echo, "fail": fail}


class SandboxContract:
    """Subclasses set ``backend`` and may override ``make_spec`` to add options."""

    backend = "local"
    # Whether kernel code runs as the agent's user and so can signal it (see sandboxes.guest.users).
    kernel_can_signal_agent = True

    def make_spec(self, **changes: Any) -> SandboxSpec:
        return SandboxSpec(backend=self.backend, **changes)

    async def test_state_persists_across_cells(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            assert (await box.execute("x = 20\ny = x + 1")).status == "ok"
            r = await box.execute("print(x + y)\nx * 2")
            assert r.status == "ok", r
            assert r.stdout == "41\n"
            assert r.display == [{"text/plain": "40"}]

    async def test_error_comes_back_with_traceback(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            r = await box.execute("def f():\n    return {}['missing']\nf()")
            assert r.status == "error"
            assert r.error is not None
            assert r.error.name == "KeyError"
            assert "missing" in r.error.value
            assert "f()" in r.error.traceback and "\x1b[" not in r.error.traceback
            # the kernel is fine afterwards
            assert (await box.execute("1 + 1")).display == [{"text/plain": "2"}]

    async def test_busy_loop_times_out_and_keeps_state(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            await box.execute("kept = 'still here'")
            started = time.monotonic()
            r = await box.execute("while True: pass", timeout=2)
            elapsed = time.monotonic() - started
            assert r.status == "timeout", r
            # Stopped by its own timeout, not by the controller giving up on the agent (that would take
            # timeout + grace + startup_timeout_s + slack, over a minute, and say sandbox_lost).
            assert elapsed < 2 + box.spec.kill_grace_s + 20, elapsed
            assert r.error is not None and r.error.name == "KeyboardInterrupt"
            after = await box.execute("print(kept)")
            assert after.status == "ok" and after.stdout == "still here\n"

    async def test_cell_ignoring_sigint_is_killed_and_kernel_restarted(self) -> None:
        spec = self.make_spec(kill_grace_s=1.0)
        async with open_sandbox(spec) as box:
            await box.execute("lost = 1")
            code = ("import signal, time\n"
                    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    "while True: time.sleep(0.01)\n")
            started = time.monotonic()
            r = await box.execute(code, timeout=1.5)
            elapsed = time.monotonic() - started
            assert r.status == "kernel_restarted", r
            # timeout + grace, plus the time a new kernel takes to come up (seconds under gVisor on a
            # loaded machine); far less than the controller's own give-up deadline of over a minute
            assert elapsed < 1.5 + 1.0 + 30.0, elapsed
            assert r.notice and "restarted" in r.notice
            nxt = await box.execute("print('alive')\n'lost' in globals()")
            assert nxt.status == "ok" and nxt.stdout == "alive\n"
            assert nxt.display == [{"text/plain": "False"}]
            assert nxt.notice and "restarted" in nxt.notice  # the next cell is told state is gone

    async def test_huge_output_is_capped(self) -> None:
        limit = 64 * 1024
        async with open_sandbox(self.make_spec(output_limit_bytes=limit)) as box:
            r = await box.execute(
                "import sys\nchunk = 'x' * (1 << 20)\n"
                "sys.stdout.write('BEGIN')\n"
                "for _ in range(1024): sys.stdout.write(chunk)\n"  # 1 GiB through print paths
                "sys.stdout.write('END')\n", timeout=120)
            assert r.status == "ok", r  # within its timeout: the flood is cut in the box, not carried
            assert r.stdout.startswith("BEGIN") and r.stdout.endswith("END")
            assert "characters omitted" in r.stdout
            assert len(r.stdout) <= 2 * limit + 200

    async def test_subprocess_output_is_capped(self) -> None:
        limit = 32 * 1024
        async with open_sandbox(self.make_spec(output_limit_bytes=limit)) as box:
            r = await box.execute("import os\nos.system(\"head -c 50000000 /dev/zero | tr '\\\\0' y\")", timeout=120)
            assert r.status == "ok", r
            assert "characters omitted" in r.stdout
            assert len(r.stdout) <= 2 * limit + 200
            assert set(r.stdout.replace("\n", "").split("[... ")[0]) == {"y"}

    async def test_upload_100mb_is_readable_in_kernel(self, tmp_path: Path) -> None:
        data = bytes(range(256)) * (100 * MB // 256)
        async with open_sandbox(self.make_spec(disk_mb=1024, memory_mb=2048)) as box:
            await box.put_file("ctx/context.bin", data)
            r = await box.execute(
                "import hashlib\nblob = open('ctx/context.bin', 'rb').read()\n"
                "print(len(blob), hashlib.sha256(blob).hexdigest())")
            import hashlib
            assert r.stdout.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
            # from a local file too, and an empty one
            src = tmp_path / "small.txt"
            src.write_text("héllo")
            await box.put_file("small.txt", src)
            await box.put_file("empty.txt", b"")
            r = await box.execute("print(open('small.txt', encoding='utf-8').read(), len(open('empty.txt').read()))")
            assert r.stdout == "héllo 0\n"

    async def test_put_file_writes_only_inside_the_working_folder(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            for outside in ("../escape.txt", "a/../../escape.txt", "/etc/escape.txt", "/tmp/escape.txt", ".."):
                with pytest.raises(ValueError, match="working folder"):
                    await box.put_file(outside, b"x")
            await box.put_file(f"{box.workdir}/absolute.txt", b"inside")  # absolute, but inside: fine
            # Kernel code plants symbolic links to a folder outside: as the file, and as a folder on the way.
            r = await box.execute(
                "import os, tempfile\n"
                "outside = tempfile.mkdtemp()\n"
                "os.symlink(os.path.join(outside, 'target.txt'), 'link.txt')\n"
                "os.symlink(outside, 'linked')\n"
                "print(open('absolute.txt').read())\n")
            assert r.status == "ok" and r.stdout == "inside\n", r
            for planted in ("link.txt", "linked/f.txt"):
                with pytest.raises(SandboxError, match="could not write"):
                    await box.put_file(planted, b"redirected")
            r = await box.execute("print(os.listdir(outside), os.path.islink('link.txt'))")
            assert r.stdout == "[] True\n", r
            await box.put_file("sub/dir/ok.txt", b"fine")  # folders on the way are made
            assert (await box.execute("print(open('sub/dir/ok.txt').read())")).stdout == "fine\n"

    async def test_a_staged_file_is_readable_and_read_only_in_the_box(self) -> None:
        data = ("héllo " * 100_000).encode("utf-8")
        async with open_sandbox(self.make_spec()) as box:
            path = await box.stage_file("context_0.txt", data)
            r = await box.execute(f"blob = open({path!r}, 'rb').read()\nprint(len(blob), blob[:6].decode())")
            assert r.stdout.split() == [str(len(data)), "héllo"]
            again = await box.stage_file("context_0.txt", b"second")  # replaced whole
            r = await box.execute(f"print(open({again!r}).read())")
            assert r.stdout == "second\n"
            with pytest.raises(ValueError):
                await box.stage_file("../escape", b"x")
            if box.backend.shared_folder() is not None and self.backend != "local":
                r = await box.execute(f"open({path!r}, 'ab').write(b'x')")
                assert r.status == "error" and r.error.name in ("PermissionError", "OSError"), r.error

    async def test_guest_calls_from_many_threads(self) -> None:
        async with open_sandbox(self.make_spec(), handlers=HANDLERS) as box:
            r = await box.execute(
                "from concurrent.futures import ThreadPoolExecutor\n"
                "from sandboxes.guest.runtime import call\n"
                "with ThreadPoolExecutor(32) as pool:\n"
                "    got = list(pool.map(lambda i: call('echo', {'i': i, 's': 'é' * (i % 7)}), range(1000)))\n"
                "bad = [i for i, g in enumerate(got) if g != {'i': i, 's': 'é' * (i % 7)}]\n"
                "print(len(got), bad)", timeout=60)
            assert r.status == "ok", r
            assert r.stdout == "1000 []\n"

    async def test_handler_error_reaches_kernel_code(self) -> None:
        async with open_sandbox(self.make_spec(), handlers=HANDLERS) as box:
            r = await box.execute(
                "from sandboxes.guest.runtime import call, GuestCallError\n"
                "try:\n    call('fail', 7)\nexcept GuestCallError as e:\n    print('caught', e)\n"
                "try:\n    call('nope')\nexcept GuestCallError as e:\n    print('unknown', 'nope' in str(e))\n")
            assert r.status == "ok", r
            assert "caught RuntimeError: handler refused 7" in r.stdout
            assert "unknown True" in r.stdout

    async def test_forged_and_oversized_calls_are_refused(self) -> None:
        async with open_sandbox(self.make_spec(), handlers=HANDLERS) as box:
            r = await box.execute(
                "import os, socket, json\n"
                "from sandboxes.guest.runtime import call, GuestCallError\n"
                "try:\n    call('echo', 'x' * (9 << 20))\nexcept GuestCallError as e:\n    print('big', 'cap' in str(e))\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(os.environ['SANDBOX_CALL_SOCKET'])\n"
                "s.sendall(b'not json\\n' + b'y' * (9 << 20) + b'\\n' + json.dumps({'id': 5, 'name': 'echo', 'payload': 1}).encode() + b'\\n')\n"
                "buf = b''\n"
                "while buf.count(b'\\n') < 3: buf += s.recv(65536)\n"
                "print([json.loads(l).get('ok') for l in buf.splitlines()])\n"
                "print(call('echo', 'fine'))\n")
            assert r.status == "ok", r
            assert "big True" in r.stdout
            assert "[False, False, True]" in r.stdout
            assert "fine" in r.stdout
            assert (await box.execute("1")).status == "ok"

    async def test_killing_the_agent_reports_sandbox_lost(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            r = await box.execute("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time; time.sleep(30)",
                                  timeout=20)
            if not self.kernel_can_signal_agent:  # the kernel runs as a user of its own: refused
                assert r.status == "error" and r.error is not None and r.error.name == "PermissionError", r
                assert (await box.execute("print('still here')")).stdout == "still here\n"
                return
            assert r.status == "sandbox_lost", r
            assert r.notice and "open a new sandbox" in r.notice
            again = await box.execute("1")
            assert again.status == "sandbox_lost"
            with pytest.raises(SandboxLost):
                await box.put_file("x", b"1")

    async def test_two_boxes_are_independent(self) -> None:
        async with open_sandbox(self.make_spec()) as a, open_sandbox(self.make_spec()) as b:
            await a.execute("v = 'a'")
            r, slow = await asyncio.gather(b.execute("'v' in globals()"), a.execute("import time; time.sleep(0.5); v"))
            assert r.display == [{"text/plain": "False"}]
            assert slow.display == [{"text/plain": "'a'"}]
            assert a.box_id != b.box_id

    async def test_interrupt_from_controller(self) -> None:
        started = asyncio.Event()

        async def cell_started(payload: Any) -> None:
            started.set()

        async with open_sandbox(self.make_spec(), handlers={"started": cell_started}) as box:
            cell = asyncio.ensure_future(box.execute(
                "import time\nfrom sandboxes.guest.runtime import call\ncall('started')\n"
                "while True: time.sleep(0.01)", timeout=120))
            await asyncio.wait_for(started.wait(), 60)  # the cell runs its loop now
            await box.interrupt()
            r = await asyncio.wait_for(cell, 60)
            assert r.status == "error" and r.error is not None and r.error.name == "KeyboardInterrupt"

    async def test_rich_display_image(self) -> None:
        async with open_sandbox(self.make_spec()) as box:
            png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
            r = await box.execute(
                "import base64\nfrom IPython.display import Image, display\n"
                f"display(Image(data=base64.b64decode('{png}')))")
            assert r.status == "ok", r
            assert r.display and r.display[0].get("image/png", "").strip() == png
