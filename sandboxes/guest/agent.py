"""The guest agent: runs inside the box, supervises one ipykernel, and speaks the protocol.

It is the only process the controller talks to. It executes cells one at a time, bounds each by its
timeout (interrupt, then kill and restart after a grace period), caps what each cell sends back,
relays guest calls from kernel code to the controller, and writes uploaded files. It never trusts
the kernel either: kernel code can reach the agent's call socket and may be hostile.

This module holds the agent itself: its lifecycle, the dispatch of controller messages and the
execution of cells. Its parts each have a module: ``link`` (the controller stream), ``kernel`` (the
ipykernel it supervises), ``output`` (the caps on what a cell sends back), ``calls`` (guest calls
from kernel code), ``uploads`` (files from the controller) and ``box`` (cgroup counters, strays).

Run as ``python -m sandboxes.guest --config JSON (--connect SOCKET | --stdio)`` (see ``__main__``).
Standard library and jupyter_client only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import signal
import time
import traceback
from typing import Any

from sandboxes.guest import protocol
from sandboxes.guest.calls import CallRelay
from sandboxes.guest.box import OOM_EVENTS, PIDS_EVENTS, cgroup_counter, kill_strays, rose
from sandboxes.guest.kernel import Kernel
from sandboxes.guest.kernelproc import KernelProcess, launch
from sandboxes.guest.link import Link, open_link
from sandboxes.guest.memory_watch import MemoryWatch
from sandboxes.guest.output import DISPLAY_LIMIT, TRACEBACK_LIMIT, CappedText, display_item, fit_result
from sandboxes.guest.protocol import LineBuffer, ProtocolError
from sandboxes.guest.uploads import Uploads

LIVENESS_POLL = 0.2


class Agent:
    def __init__(self, config: dict[str, Any], link: Link, process: KernelProcess) -> None:
        self.link = link
        self.process = process
        self.workdir = process.workdir
        self.output_limit = int(config.get("output_limit", 256 * 1024))
        self.kill_grace = float(config.get("kill_grace", 2.0))
        self.owns_box = bool(config.get("owns_box", False))
        # The box's cgroup counters as last seen: one file read per cell tells whether this cell hit
        # the process limit (file reads are dear under gVisor), and a kernel death whether it was OOM.
        self.oom_seen = cgroup_counter(OOM_EVENTS)
        self.pids_seen = cgroup_counter(PIDS_EVENTS)
        self.kernel: Kernel | None = None
        self.executions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.executing: str | None = None
        self.pending_notice: str | None = None
        self.uploads = Uploads(self.workdir, link.send)
        self.calls = CallRelay(link.send)
        self.tasks: set[asyncio.Task[Any]] = set()
        # Where the box's memory is visible to it (gVisor), the kernel is stopped before the box's limit.
        self.memory_watch = MemoryWatch.for_box(config.get("memory_mb"), self.kill_kernel_side)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        call_socket = str(self.process.call_socket)
        server = await asyncio.start_unix_server(self.calls.serve, path=call_socket,
                                                 limit=protocol.MAX_LINE_BYTES)
        os.chmod(call_socket, 0o660 if self.process.user else 0o600)  # the kernel may be another user
        self.kernel = Kernel(self.process, self.output_limit, self.owns_box)
        if self.memory_watch is not None:
            self.memory_watch.start()
        try:
            await self.kernel.connect()
            import ipykernel
            import jupyter_client

            await self.link.send({
                "type": "ready",
                "protocol": protocol.PROTOCOL_VERSION,
                "versions": {
                    "guest": protocol.guest_version(),
                    "python": platform.python_version(),
                    "jupyter_client": jupyter_client.__version__,
                    "ipykernel": ipykernel.__version__,
                    "workdir": str(self.workdir),
                },
            })
            worker = asyncio.create_task(self.execute_worker())
            try:
                await self.read_controller()
            finally:
                worker.cancel()
        finally:
            server.close()
            if self.memory_watch is not None:
                self.memory_watch.stop()
            for task in list(self.tasks):
                task.cancel()
            await self.kernel.shutdown()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def read_controller(self) -> None:
        buffer = LineBuffer()
        while True:
            data = await self.link.reader.read(1 << 20)
            if not data:
                return  # the controller is gone: shut down
            for line in buffer.feed(data):
                if line is None:
                    continue  # an oversized line from the controller: drop it
                try:
                    message = protocol.decode(line, protocol.TO_AGENT)
                except ProtocolError:
                    continue
                if message["type"] == "shutdown":
                    return
                await self.dispatch(message)

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "execute":
            self.executions.put_nowait(message)
        elif kind == "interrupt":
            if self.kernel is not None:
                await self.kernel.interrupt()
        elif kind == "put_file":
            await self.uploads.put(message)
        elif kind == "reply":
            self.calls.reply(message)
        elif kind == "ping":
            await self.link.send({"type": "pong", "id": message["id"]})

    # --- cells --------------------------------------------------------------------------------

    async def execute_worker(self) -> None:
        while True:
            request = await self.executions.get()
            try:
                result = await self.execute(request["code"], float(request["timeout"]))
            except Exception as exc:  # a bug or a dead kernel that would not restart
                result = {"status": "error", "error": {"name": "SandboxAgentError", "value": str(exc)[:2000],
                                                        "traceback": ""}}
            result.update({"type": "result", "id": request["id"]})
            notice = result.get("notice")
            if self.pending_notice:
                result["notice"] = self.pending_notice + (f" {notice}" if notice else "")
                self.pending_notice = None
            if result["status"] in ("kernel_restarted", "oom"):
                self.pending_notice = ("The kernel was restarted after the previous cell:"
                                       " variables defined before it are gone.")
            await self.link.send(fit_result(result))

    async def execute(self, code: str, timeout: float) -> dict[str, Any]:
        kernel = self.kernel
        assert kernel is not None
        kc = kernel.kc
        stdout, stderr = CappedText(self.output_limit), CappedText(self.output_limit)
        display: list[dict[str, Any]] = []
        display_bytes = 0
        dropped_display = 0
        error: dict[str, Any] | None = None
        started = time.monotonic()
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        deadline = started + timeout
        interrupted_at: float | None = None
        status = "ok"
        notice = None
        while True:
            now = time.monotonic()
            if interrupted_at is None and now >= deadline:
                await kernel.interrupt()
                interrupted_at = now
            if interrupted_at is not None and now >= interrupted_at + self.kill_grace:
                await kernel.restart()
                status = "kernel_restarted"
                notice = (f"The cell ignored the interrupt at its {timeout:g} s timeout and the kernel was killed"
                          " and restarted: variables from earlier cells are gone.")
                break
            wait = LIVENESS_POLL
            wait = min(wait, max(0.001, (interrupted_at + self.kill_grace if interrupted_at else deadline) - now))
            try:
                msg = await kc.get_iopub_msg(timeout=wait)
            except queue.Empty:
                if not await kernel.alive():
                    status, notice = await self.kernel_died()
                    break
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            content = msg["content"]
            if kind == "stream":
                (stdout if content.get("name") == "stdout" else stderr).add(content.get("text", ""))
            elif kind in ("display_data", "execute_result"):
                item = display_item(content.get("data"))
                size = sum(len(str(v)) for v in item.values())
                if item and display_bytes + size <= DISPLAY_LIMIT and len(display) < protocol.MAX_DISPLAY_ITEMS:
                    display.append(item)
                    display_bytes += size
                elif item:
                    dropped_display += 1
            elif kind == "error":
                error = {
                    "name": str(content.get("ename", ""))[:500],
                    "value": str(content.get("evalue", ""))[:TRACEBACK_LIMIT],
                    "traceback": "\n".join(content.get("traceback", []))[-TRACEBACK_LIMIT:],
                }
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        if status == "ok":
            if interrupted_at is not None:
                status = "timeout"
                notice = f"The cell was interrupted at its {timeout:g} s timeout; the kernel kept its state."
            elif error is not None:
                status = "error"
        extras = []
        pids_now = cgroup_counter(PIDS_EVENTS)
        hit_pids_limit = rose(self.pids_seen, pids_now)
        self.pids_seen = pids_now
        if hit_pids_limit:
            extras.append("The box reached its process limit during this cell: starting a process or thread failed.")
            if self.owns_box and kernel.process.pid is not None:
                # A fork bomb's copies outlive the cell (setsid puts them beyond the interrupt): clear
                # them so the box can start processes again.
                killed = await asyncio.to_thread(kill_strays, {kernel.process.pid})
                if killed:
                    extras.append(f"{killed} other processes in the box were killed to free it.")
        if dropped_display:
            extras.append(f"{dropped_display} display output(s) dropped: over the {DISPLAY_LIMIT}-byte cap.")
        if extras:
            notice = " ".join([notice, *extras] if notice else extras)
        return {
            "status": status,
            "stdout": stdout.value(),
            "stderr": stderr.value(),
            "error": error,
            "display": display,
            "duration": round(time.monotonic() - started, 6),
            "notice": notice,
        }

    async def kernel_died(self) -> tuple[str, str]:
        kernel = self.kernel
        assert kernel is not None
        code = await kernel.exit_code()
        oom_now = cgroup_counter(OOM_EVENTS)
        oomed = rose(self.oom_seen, oom_now)
        self.oom_seen = oom_now
        if self.memory_watch is not None and self.memory_watch.take_fired():
            oomed = True
        await kernel.restart()
        if oomed:
            return "oom", ("The kernel ran out of memory and was killed; a new kernel was started:"
                           " variables from earlier cells are gone.")
        how = f" (signal {-code})" if isinstance(code, int) and code < 0 else (
            f" (exit code {code})" if code is not None else "")
        return "kernel_restarted", (f"The kernel process died{how}; a new kernel was started:"
                                    " variables from earlier cells are gone.")


    def kill_kernel_side(self) -> None:
        """SIGKILL the kernel's processes (from the memory watch's thread): in a box the agent owns,
        every process but the agent and init, so children that left the kernel's group go too."""
        if self.owns_box:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
        else:
            self.process.signal(signal.SIGKILL)


async def _main(args: argparse.Namespace, process: KernelProcess) -> None:
    config = json.loads(args.config)
    link = await open_link(None if args.stdio else args.connect)
    agent = Agent(config, link, process)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.create_task(agent.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not runner.done():
        runner.cancel()
    try:
        await runner
    except asyncio.CancelledError:
        pass
    except Exception:
        # Whoever started the agent reads its stderr to say why the box died (a template without
        # jupyter_client, a kernel that would not start): leave the reason there, and a failing exit.
        traceback.print_exc()
        raise SystemExit(1) from None


def main(argv: list[str] | None = None, process: KernelProcess | None = None) -> None:
    """Run the agent; ``process`` is a kernel already launched by the entry point (``__main__``)."""
    parser = argparse.ArgumentParser(prog="sandboxes.guest")
    parser.add_argument("--config", default="{}")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", help="Unix socket the controller listens on")
    where.add_argument("--stdio", action="store_true", help="speak the protocol on stdin/stdout")
    args = parser.parse_args(argv)
    if process is None:
        process = launch(json.loads(args.config))
    try:
        asyncio.run(_main(args, process))
    finally:
        process.signal(signal.SIGKILL)  # never leave the kernel behind, however the agent ends
