"""The local backend: the agent as a child process of the controller. For development only.

It is NOT an isolation boundary: kernel code runs as the controller's user, can read what that user
can read, and can reach the network. What it does give: a private temporary working folder, an
environment holding nothing of the host's (no API keys), rlimits (address space, CPU seconds, file
size, open files) in force before the kernel starts, and a guarantee that every process the box
started is killed when it closes, including ones that left their process group (they are found by a
marker in their environment).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from sandboxes.backends.base import Backend, agent_argv
from sandboxes.cancellation import cancelling
from sandboxes.cpu_governor import SAMPLE_S, Governed, governor
from sandboxes.errors import SandboxStartError
from sandboxes.results import Diagnosis, DiagnosisKind
from sandboxes.backends.guest_bundle import write_guest
from sandboxes.transport import ByteStream, UnixListener

MARKER_ENV = "SANDBOX_BOX_ID"
# The controller process that started the box: its boxes' processes can be found after the fact.
CONTROLLER_ENV = "SANDBOX_CONTROLLER_PID"
# How long a diagnosis waits for the agent process to be reaped after its stream ended.
DIAGNOSE_WAIT_S = 0.5


def _minimal_env(home: Path, guest_root: Path, box_id: str, extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": os.pathsep.join(p for p in (str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin")),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(guest_root),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Fewer malloc arenas keep a kernel's address space inside RLIMIT_AS.
        "MALLOC_ARENA_MAX": "2",
        MARKER_ENV: box_id,
        CONTROLLER_ENV: str(os.getpid()),
    }
    env.update(extra)
    return env


def stat_fields(pid: str) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command's name (the state first, then the parent
    pid); OSError or ValueError where the process is gone or the line is cut."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def descendants(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and every process below it, from each process's parent pid."""
    found, frontier = set(), {root}
    while frontier:
        found |= frontier
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
    return found


def marked_processes(marker: str, *, prefix: bool = False, parents: dict[int, int] | None = None) -> set[int]:
    """Live (not zombie) processes whose environment holds ``marker`` (``NAME=value``), or with
    ``prefix`` a variable starting with it. Fills ``parents`` (pid -> ppid of every process) if given."""
    wanted = marker.encode()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = stat_fields(entry.name)
            if parents is not None:
                parents[pid] = int(fields[1])
            if fields[0] == b"Z":
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(v.startswith(wanted) for v in env) if prefix else wanted in env:
            found.add(pid)
    found.discard(os.getpid())
    return found


def _may_renice_others() -> bool:
    """Whether this process has CAP_SYS_NICE (needed to lift a process out of SCHED_IDLE)."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caps.split()[1], 16) >> 23 & 1)


# A box demoted to SCHED_IDLE can be restored only by a controller with CAP_SYS_NICE: without it, a
# local box is only confined to the busy cores, never lowered in priority for good.
RESTORABLE = _may_renice_others()
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_table: tuple[float, dict[int, tuple[int, int, int]]] = (0.0, {})


def process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, session, CPU time in ns) of every live process, from ``/proc/<pid>/stat``;
    one scan serves every local box the governor samples in one round."""
    global _table
    taken, table = _table
    if time.monotonic() - taken < SAMPLE_S / 2:
        return table
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(entry.name)
            if fields[0] != b"Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) * TICK_NS)
        except (OSError, ValueError, IndexError):
            continue
    _table = (time.monotonic(), table)
    return table


def tree(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """``root`` and its descendants, and every process in one of their sessions (a daemon that forked
    away from its parent but kept its session)."""
    if root not in table:
        return set()
    found = descendants(root, {pid: ppid for pid, (ppid, _, _) in table.items()})
    sessions = {table[pid][1] for pid in found}
    return found | {pid for pid, (_, sid, _) in table.items() if sid in sessions and sid != os.getsid(0)}


def kill_sweep(find: Callable[[], set[int]], sweeps: int = 3) -> None:
    """SIGKILL what ``find`` returns, again while it finds more (a fork can race a sweep).
    Synchronous, so it also serves where no event loop runs (exit, SIGTERM)."""
    for _ in range(sweeps):
        pids = find()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


class LocalSandbox(Backend):
    name = "local"

    def __init__(self, spec, box_id):  # type: ignore[no-untyped-def]
        super().__init__(spec, box_id)
        self.dir: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.listener: UnixListener | None = None

    async def start(self) -> ByteStream:
        self.dir = Path(tempfile.mkdtemp(prefix=f"sbx-{self.box_id[:8]}-"))
        work = self.dir / "work"
        (work / "tmp").mkdir(parents=True)
        guest_root = write_guest(self.dir / "guest")
        self.listener = await UnixListener.open(self.dir / "agent.sock", mode=0o600)
        argv = agent_argv(sys.executable, self.spec, str(work), str(self.listener.path), rlimits=self._rlimits())
        log = open(self.dir / "agent.log", "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=work, env=_minimal_env(work, guest_root, self.box_id, self.spec.env),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        finally:
            log.close()
        start_cores = governor.add(self.box_id, self._governed, confine_start=True)
        if governor.sets is not None:
            # Start-up is busy work: at idle priority (where it can be undone) and on the cores the
            # governor chose from the first moment, which the kernel the agent launches inherits (the
            # governor's first look may come later).
            try:
                if start_cores is not None:
                    os.sched_setaffinity(self.proc.pid, start_cores)
                if RESTORABLE:
                    os.sched_setscheduler(self.proc.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass
        accept = asyncio.ensure_future(self.listener.accept(self.spec.startup_timeout_s))
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait({accept, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the caller's start-up deadline cancels us
            exited.cancel()
            if not accept.done():
                accept.cancel()
                # A cancelled task is cancelled only once it has run again: wait for that.
                await asyncio.gather(accept, return_exceptions=True)
        if accept.cancelled():
            raise SandboxStartError(f"the local agent exited before connecting: {await self.diagnose()}")
        return accept.result()

    def _rlimits(self) -> dict[str, int]:
        """The agent's rlimits, which the kernel it starts inherits (set by the agent on itself before
        it launches the kernel: see ``sandboxes.guest.kernelproc.apply_rlimits``)."""
        mb = 1024 * 1024
        return {"AS": self.spec.memory_mb * mb, "FSIZE": self.spec.disk_mb * mb, "NOFILE": self.spec.nofile,
                "CPU": int(self.spec.lifetime_s) + 1}

    def _box_pids(self) -> set[int]:
        """Every live process of this box: the agent's tree, and any carrying the box's marker."""
        parents: dict[int, int] = {}
        pids = marked_processes(f"{MARKER_ENV}={self.box_id}", parents=parents)
        if self.proc is not None:
            pids |= descendants(self.proc.pid, parents)
        pids.discard(os.getpid())
        return pids

    def _kill_all(self) -> None:
        def live() -> set[int]:
            pids = self._box_pids()
            if self.proc is not None and self.proc.returncode is None:
                pids.add(self.proc.pid)
            return pids

        kill_sweep(live)

    def _governed(self) -> Governed | None:
        """The box's processes' CPU time, and their threads' cores and, where this process could
        restore it (CAP_SYS_NICE), their scheduling policy."""
        assert self.proc is not None
        agent = self.proc.pid

        def read() -> int | None:
            table = process_table()
            return sum(table[pid][2] for pid in tree(agent, table)) if agent in table else None

        def place(cores: frozenset[int] | None, busy: bool) -> None:
            policy = os.SCHED_IDLE if busy else os.SCHED_OTHER
            for pid in tree(agent, process_table()):
                try:
                    threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
                except OSError:
                    continue  # gone meanwhile
                for tid in threads:
                    try:
                        if cores is not None:
                            os.sched_setaffinity(tid, cores)
                        if RESTORABLE:
                            os.sched_setscheduler(tid, policy, os.sched_param(0))
                    except OSError:
                        pass  # the thread ended meanwhile

        return Governed(read, place)

    def on_ready(self) -> None:
        governor.ready(self.box_id)

    def shared_folder(self) -> tuple[str, str] | None:
        # A local box runs as this user on this host: its own folder is the same path on both sides.
        return (str(self.dir), str(self.dir)) if self.dir is not None else None

    async def _destroy(self) -> None:
        governor.remove(self.box_id)
        await asyncio.to_thread(self._kill_all)  # it scans /proc and waits between sweeps: not on the loop
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if cancelling():
                    raise
        if self.listener is not None:
            await self.listener.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _emergency_destroy(self) -> None:
        governor.remove(self.box_id)
        self._kill_all()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def diagnose(self) -> Diagnosis | None:
        """From the agent process's exit status; its stderr is quoted for a human, never judged."""
        if self.proc is None:
            return None
        try:  # the stream just ended: an agent that died is reaped a moment later
            code = await asyncio.wait_for(self.proc.wait(), DIAGNOSE_WAIT_S)
        except TimeoutError:
            return None
        kind: DiagnosisKind = "killed" if code < 0 else "exited"
        what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = ""
        if self.dir is not None:
            try:
                text = (self.dir / "agent.log").read_bytes()[-2000:].decode(errors="replace").strip()
                tail = f"; its last words: {text}" if text else ""
            except OSError:
                pass
        return Diagnosis(kind, f"the agent process {what}{tail}")

BACKEND = LocalSandbox
