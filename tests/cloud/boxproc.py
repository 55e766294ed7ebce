"""A box's main process as the fakes run it: a local subprocess, with what a provider would do to it.

Both fakes run the real guest agent this way. What makes it a fair stand-in for a provider:
- the process gets only the environment the SDK call gave it (nothing of the host's);
- its stdout is delivered as *text* in chunks of random size, cut anywhere (mid-line, mid-message),
  decoded incrementally the way the SDKs decode it;
- killing the box kills every process in it, including ones that left the process group (found by a
  marker in their environment, which the kernel inherits from the agent);
- its files live under a private folder that disappears with the box.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from sandboxes.backends.local import kill_sweep, marked_processes

if TYPE_CHECKING:
    from sandboxes.transport import ByteStream

MARKER_ENV = "FAKE_PROVIDER_BOX"
# Marker values start with the test process's pid, so two test sessions on one machine never kill
# (or count) each other's boxes.
MARKER_PREFIX = f"{os.getpid()}:"


def python_bin_dir(root: Path) -> Path:
    """A bin folder where `python` and `python3` run this interpreter in this environment (it has
    ipykernel installed), standing in for the Python of the provider's image.

    Small scripts that exec ``sys.executable``, not symlinks to it: Python finds its virtual environment
    by the ``pyvenv.cfg`` beside the path it was started as, so a symlink in another folder would start
    the base interpreter without the venv's packages."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        script = bin_dir / name
        if not script.exists():
            script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            script.chmod(0o755)
    return bin_dir


class BoxProcess:
    """One process in one fake box."""

    def __init__(self, box_id: str, root: Path, seed: int | None = None, max_chunk: int = 8192) -> None:
        self.box_id = box_id
        self.root = root
        self.rng = random.Random(seed if seed is not None else box_id)
        self.max_chunk = max_chunk
        self.proc: asyncio.subprocess.Process | None = None
        self.stdin_bytes = 0
        self.stdout_bytes = 0
        self.chunks_delivered = 0
        self.last_stdin = time.monotonic()

    @property
    def marker(self) -> str:
        return f"{MARKER_PREFIX}{self.box_id}"

    @classmethod
    def new_root(cls) -> Path:
        return Path(tempfile.mkdtemp(prefix="fake-box-"))

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": f"{python_bin_dir(self.root)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "LANG": "C.UTF-8",
            MARKER_ENV: self.marker,
        }

    async def start(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        full_env = {**self.base_env(), **env, MARKER_ENV: self.marker}
        self.proc = await asyncio.create_subprocess_exec(
            *argv, env=full_env, cwd=cwd or str(self.root),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, limit=1 << 22)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def write(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.returncode is not None:
            raise BrokenPipeError("the box's process has exited")
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()
        self.stdin_bytes += len(data)
        self.last_stdin = time.monotonic()

    async def text_chunks(self, which: str = "stdout") -> AsyncIterator[str]:
        """The stream as text pieces of random size, as a provider's API hands them over."""
        assert self.proc is not None
        pipe = self.proc.stdout if which == "stdout" else self.proc.stderr
        assert pipe is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            data = await pipe.read(self.rng.randint(1, self.max_chunk))
            if not data:
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
                return
            if which == "stdout":
                self.stdout_bytes += len(data)
            # Cut each read further at random points, so boundaries fall mid-line and mid-message.
            while data:
                cut = self.rng.randint(1, len(data))
                piece, data = data[:cut], data[cut:]
                text = decoder.decode(piece)
                if text:
                    if which == "stdout":
                        self.chunks_delivered += 1
                    yield text

    def box_pids(self) -> set[int]:
        pids = marked_processes(f"{MARKER_ENV}={self.marker}")
        if self.proc is not None and self.proc.returncode is None:
            pids.add(self.proc.pid)
        return pids

    def kill_all(self) -> None:
        """SIGKILL every process of the box (synchronous: also usable where no event loop runs)."""
        kill_sweep(self.box_pids)

    def kill_main(self) -> None:
        """Kill only the main process, as a crash inside the box would."""
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def destroy(self) -> None:
        self.kill_all()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def destroy_sync(self) -> None:
        self.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)


async def until_ready(stream: "ByteStream", timeout: float = 60.0) -> None:
    """Read a freshly started agent's stream up to its ``ready`` message: the agent and its kernel
    are then running (a process that is still being exec'd does not show its environment yet)."""
    seen = b""
    async with asyncio.timeout(timeout):
        while b'"ready"' not in seen:
            data = await stream.read()
            assert data, "the agent ended before it was ready"
            seen = seen[-16:] + data
