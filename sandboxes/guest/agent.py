"""The guest agent: runs inside the box, supervises one ipykernel, and speaks the protocol.

It is the only process the controller talks to. It executes cells one at a time, bounds each by its
timeout (interrupt, then kill and restart after a grace period), caps what each cell sends back,
relays guest calls from kernel code to the controller, and writes uploaded files. It never trusts
the kernel either: kernel code can reach the agent's call socket and may be hostile.

Run as ``python -m sandboxes.guest --config JSON (--connect SOCKET | --stdio)`` (see ``__main__``).
Standard library and jupyter_client only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import queue
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sandboxes.guest import protocol
from sandboxes.guest.kernelproc import KernelProcess, launch
from sandboxes.guest.protocol import LineBuffer, ProtocolError

TRACEBACK_LIMIT = 64 * 1024
DISPLAY_LIMIT = 2 * 1024 * 1024
DISPLAY_MIMES = ("text/plain", "text/html", "text/markdown", "image/png", "image/jpeg", "image/svg+xml",
                 "application/json")
# How long a freshly started kernel may take to answer its first request.
KERNEL_READY_TIMEOUT = 60.0
LIVENESS_POLL = 0.2
MAX_KERNEL_CALL_CONNECTIONS = 256


class Link:
    """The agent's end of the controller stream: a reader and a writer of protocol lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        async with self.lock:
            self.writer.write(data)
            await self.writer.drain()


class CappedText:
    """Collects one cell's stream text: keeps the head and the tail, counts what was cut.

    A second line of defence behind the in-kernel cap (kernel code can undo that one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.cut = 0

    def add(self, text: str) -> None:
        room = self.limit - self.head_len
        if room > 0:
            self.head.append(text[:room])
            self.head_len += min(room, len(text))
        if len(text) > max(room, 0):
            keep_from = max(room, len(text) - self.limit, 0)
            self.cut += keep_from - max(room, 0)
            self.tail += text[keep_from:]
            if len(self.tail) > self.limit:
                self.cut += len(self.tail) - self.limit
                self.tail = self.tail[-self.limit :]

    def value(self) -> str:
        text = "".join(self.head)
        if self.cut:
            text += f"\n[... {self.cut} characters omitted ...]\n"
        return text + self.tail


OOM_EVENTS = (("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"), "oom_kill")
PIDS_EVENTS = (("/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"), "max")


def _cgroup_counter(which: tuple[tuple[str, ...], str]) -> int | None:
    """A counter of the box's cgroup (v2, or v1): OOM kills, or forks refused at the pids limit.
    None where there is no cgroup to read (the local backend, some providers)."""
    paths, wanted = which
    for path in paths:
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == wanted:
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def _rose(before: int | None, after: int | None) -> bool:
    return before is not None and after is not None and after > before


def _kill_strays(keep: set[int]) -> int:
    """SIGKILL every process in the box but ``keep`` and init; sweep until none is left (a fork can
    race a sweep). Only for an agent that owns its box. Returns how many were killed."""
    keep = keep | {1, os.getpid()}
    killed = 0
    for _ in range(10):
        found = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) not in keep]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.02)
    return killed


class Kernel:
    """The agent's hold on the kernel: its process (``KernelProcess``) and a jupyter_client client.

    The agent launches the kernel process itself (a connection file and ``Popen``) rather than
    through jupyter_client's KernelManager: the kernel starts before the agent has even imported
    jupyter_client, and interrupting, killing and restarting are plain signals to a process group
    the agent owns.
    """

    def __init__(self, process: KernelProcess, output_limit: int, owns_box: bool = False) -> None:
        self.process = process
        self.output_limit = output_limit
        # In a box of its own (a container) the agent may clear out every other process on a restart,
        # so escaped children (a setsid fork bomb) cannot keep the box's process limit used up.
        self.owns_box = owns_box
        self.kc: Any = None
        self.drain: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from jupyter_client.asynchronous import AsyncKernelClient

        import zmq

        self.kc = AsyncKernelClient(connection_file=str(self.process.connection_file))
        # The client connects before the kernel has bound its sockets; retry every 10 ms, not 100.
        self.kc.context.setsockopt(zmq.RECONNECT_IVL, 10)
        self.kc.load_connection_file()
        # No heartbeat channel: its 1 s deadline declares a kernel dead while many kernels start at
        # once on a busy machine. Liveness is the kernel process itself, which the agent owns.
        self.kc.start_channels(hb=False)
        await self._wait_ready()
        # Set up the kernel side: the output cap and nothing else; runs silently, outside history.
        bootstrap = (
            "import sandboxes.guest.runtime as __sandbox_rt\n"
            f"__sandbox_rt.install_output_cap({int(self.output_limit)})\n"
            "del __sandbox_rt\n"
        )
        msg_id = self.kc.execute(bootstrap, silent=True, store_history=False)
        deadline = time.monotonic() + KERNEL_READY_TIMEOUT
        while True:
            reply = await self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"].get("status") != "ok":
                    raise RuntimeError(f"kernel bootstrap failed: {reply['content'].get('evalue')}")
                break
        # Shell replies are not needed (iopub carries everything); drain them so none pile up.
        self.drain = asyncio.create_task(self._drain_shell(self.kc))

    async def _wait_ready(self) -> None:
        """Until the kernel answers on shell and its iopub subscription is live.

        jupyter_client's ``wait_for_ready`` waits a fixed 0.2 s for iopub after each reply, and a
        subscription made while the kernel binds is often not live for the first one; here the
        kernel is asked again every 20 ms instead, which takes a fifth of a second off a cold start.
        """
        deadline = time.monotonic() + KERNEL_READY_TIMEOUT
        answered = False
        last_ask = 0.0
        while True:
            if not await self.alive():
                raise RuntimeError(f"the kernel exited with code {await self.exit_code()} before it answered")
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"the kernel did not answer within {KERNEL_READY_TIMEOUT:g} s")
            # Before the first answer the request waits in the client's queue: ask again only rarely.
            if now - last_ask >= (0.02 if answered else 1.0):
                self.kc.kernel_info()
                last_ask = now
            try:
                if not answered:
                    reply = await self.kc.get_shell_msg(timeout=0.1)
                    answered = reply["msg_type"] == "kernel_info_reply"
                else:
                    await self.kc.get_iopub_msg(timeout=0.02)
                    return
            except queue.Empty:
                continue

    @staticmethod
    async def _drain_shell(kc: Any) -> None:
        while True:
            try:
                await kc.get_shell_msg(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.1)

    def _disconnect(self) -> None:
        if self.drain is not None:
            self.drain.cancel()
            self.drain = None
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    async def _kill(self) -> None:
        self.process.signal(signal.SIGKILL)
        for _ in range(500):
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.01)

    async def restart(self) -> None:
        self._disconnect()
        await self._kill()
        if self.owns_box:
            for _ in range(3):  # a fork racing the kill can leave a child: sweep again
                try:
                    os.kill(-1, signal.SIGKILL)  # every process but this one and the box's init
                except OSError:
                    break
                await asyncio.sleep(0.02)
        self.process.spawn()
        await self.connect()

    async def alive(self) -> bool:
        return self.process.poll() is None

    async def interrupt(self) -> None:
        self.process.signal(signal.SIGINT)

    async def exit_code(self) -> int | None:
        return self.process.poll()

    async def shutdown(self) -> None:
        self._disconnect()
        await self._kill()


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
        self.oom_seen = _cgroup_counter(OOM_EVENTS)
        self.pids_seen = _cgroup_counter(PIDS_EVENTS)
        self.kernel: Kernel | None = None
        self.executions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.executing: str | None = None
        self.pending_notice: str | None = None
        self.uploads: dict[str, Any] = {}
        self.failed_uploads: set[str] = set()
        self.call_ids = itertools.count(1)
        self.calls: dict[str, tuple[asyncio.StreamWriter, Any]] = {}
        self.connections = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        call_socket = str(self.process.call_socket)
        server = await asyncio.start_unix_server(self.serve_kernel_calls, path=call_socket,
                                                 limit=protocol.MAX_LINE_BYTES)
        os.chmod(call_socket, 0o600)
        self.kernel = Kernel(self.process, self.output_limit, self.owns_box)
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
            await self.put_file(message)
        elif kind == "reply":
            self.relay_reply(message)
        elif kind == "ping":
            await self.link.send({"type": "pong", "id": message["id"]})

    # --- files --------------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        target = Path(path)
        if not target.is_absolute():
            target = self.workdir / target
        return target

    async def put_file(self, message: dict[str, Any]) -> None:
        upload_id = message["id"]
        if upload_id in self.failed_uploads:
            if message["last"]:
                self.failed_uploads.discard(upload_id)
            return
        try:
            handle = self.uploads.get(upload_id)
            if handle is None:
                if message["offset"] != 0:
                    raise ValueError("upload must start at offset 0")
                target = self.resolve(message["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = open(target, "wb")
                self.uploads[upload_id] = handle
            if handle.tell() != message["offset"]:
                raise ValueError(f"chunk at offset {message['offset']}, expected {handle.tell()}")
            handle.write(protocol.b64decode(message["chunk"]))
            if message["last"]:
                del self.uploads[upload_id]
                handle.close()
                await self.link.send({"type": "result", "id": upload_id, "status": "ok"})
        except (OSError, ValueError) as exc:
            handle = self.uploads.pop(upload_id, None)
            if handle is not None:
                handle.close()
            if not message["last"]:
                self.failed_uploads.add(upload_id)
            await self.link.send({
                "type": "result", "id": upload_id, "status": "error",
                "error": {"name": type(exc).__name__, "value": str(exc)[:2000], "traceback": ""},
            })

    # --- guest calls from kernel code ---------------------------------------------------------

    async def serve_kernel_calls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_KERNEL_CALL_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        mine: set[str] = set()
        buffer = LineBuffer()
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                for line in buffer.feed(data):
                    await self.forward_call(line, writer, mine)
        except (ConnectionError, OSError):
            return
        finally:
            self.connections -= 1
            for call_id in mine:
                self.calls.pop(call_id, None)
            writer.close()

    async def forward_call(self, line: bytes | None, writer: asyncio.StreamWriter, mine: set[str]) -> None:
        try:
            if line is None:
                raise ProtocolError("call exceeds the size cap")
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("name"), str):
                raise ProtocolError("malformed call")
            kernel_id = request.get("id")
        except (ValueError, ProtocolError) as exc:
            writer.write(json.dumps({"id": None, "ok": False, "error": str(exc)}).encode() + b"\n")
            return
        call_id = f"k{next(self.call_ids)}"
        try:
            await self.link.send({"type": "call", "id": call_id, "name": request["name"][:protocol.MAX_CALL_NAME_CHARS],
                                  "payload": request.get("payload")})
        except (ProtocolError, ValueError) as exc:
            writer.write(json.dumps({"id": kernel_id, "ok": False, "error": str(exc)}).encode() + b"\n")
            return
        self.calls[call_id] = (writer, kernel_id)
        mine.add(call_id)

    def relay_reply(self, message: dict[str, Any]) -> None:
        target = self.calls.pop(message["to"], None)
        if target is None:
            return
        writer, kernel_id = target
        reply = {"id": kernel_id, "ok": message["ok"]}
        if message["ok"]:
            reply["value"] = message.get("value")
        else:
            reply["error"] = message.get("error") or "guest call failed"
        try:
            writer.write(json.dumps(reply, ensure_ascii=True, separators=(",", ":")).encode() + b"\n")
        except (ConnectionError, OSError, RuntimeError):
            pass

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
                item = {k: v for k, v in content.get("data", {}).items() if k in DISPLAY_MIMES}
                size = sum(len(str(v)) for v in item.values())
                if item and display_bytes + size <= DISPLAY_LIMIT:
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
        pids_now = _cgroup_counter(PIDS_EVENTS)
        hit_pids_limit = _rose(self.pids_seen, pids_now)
        self.pids_seen = pids_now
        if hit_pids_limit:
            extras.append("The box reached its process limit during this cell: starting a process or thread failed.")
            if self.owns_box and kernel.process.pid is not None:
                # A fork bomb's copies outlive the cell (setsid puts them beyond the interrupt): clear
                # them so the box can start processes again.
                killed = await asyncio.to_thread(_kill_strays, {kernel.process.pid})
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
        oom_now = _cgroup_counter(OOM_EVENTS)
        oomed = _rose(self.oom_seen, oom_now)
        self.oom_seen = oom_now
        await kernel.restart()
        if oomed:
            return "oom", ("The kernel ran out of memory and was killed; a new kernel was started:"
                           " variables from earlier cells are gone.")
        how = f" (signal {-code})" if isinstance(code, int) and code < 0 else (
            f" (exit code {code})" if code is not None else "")
        return "kernel_restarted", (f"The kernel process died{how}; a new kernel was started:"
                                    " variables from earlier cells are gone.")


def fit_result(result: dict[str, Any]) -> dict[str, Any]:
    """Make sure a result fits one protocol line, shrinking outputs if it would not."""
    try:
        protocol.encode(result)
        return result
    except ProtocolError:
        pass
    result["display"] = []
    for field in ("stdout", "stderr"):
        text = result.get(field) or ""
        if len(text) > 65536:
            result[field] = text[:32768] + "\n[... output cut to fit the message cap ...]\n" + text[-32768:]
    result["notice"] = ((result.get("notice") or "") + " Output was cut further to fit the message cap.").strip()
    return result


async def _open_link(args: argparse.Namespace) -> Link:
    if args.stdio:
        loop = asyncio.get_running_loop()
        # The protocol owns fd 0 and fd 1. Anything else printing (warnings, a library) goes to stderr.
        proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
        proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        reader = asyncio.StreamReader(limit=protocol.MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proto_in)
        transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, proto_out)
        writer = asyncio.StreamWriter(transport, proto, None, loop)
        return Link(reader, writer)
    reader, writer = await asyncio.open_unix_connection(args.connect, limit=protocol.MAX_LINE_BYTES)
    return Link(reader, writer)


async def _main(args: argparse.Namespace, process: KernelProcess) -> None:
    config = json.loads(args.config)
    link = await _open_link(args)
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
