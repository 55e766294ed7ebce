"""`rlm sandbox doctor`: is this machine ready to run Docker boxes, and does the hardening hold?

Checks the engine, its runtimes (gVisor registered with the arguments it needs), the kernel image
(present, and holding this controller's guest), and then starts a real box per runtime and looks at
it from the inside: user, capabilities, no-new-privileges, seccomp, read-only root, network
interfaces and routes, and the cgroup limits. What a box sees of itself is what an attacker sees.
"""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from sandboxes.errors import SandboxError

# Runs inside a box; prints one JSON object with what the box can see of its own confinement.
PROBE_CELL = r'''
import json, os
def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
def _status(key, pid="self"):
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
def _writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".probe"))
        return True
    except OSError:
        return False
def _first(*paths):
    for p in paths:
        v = _read(p)
        if v is not None:
            return v.strip()
routes = [l for l in (_read("/proc/net/route") or "").splitlines()[1:] if l.strip()]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "agent_uid": int((_status("Uid", os.getppid()) or "-1").split()[0]),
    "cap_eff": _status("CapEff"), "cap_bnd": _status("CapBnd"), "cap_prm": _status("CapPrm"),
    "cap_inh": _status("CapInh"), "cap_amb": _status("CapAmb"),
    "no_new_privs": str(__import__("ctypes").CDLL(None).prctl(39, 0, 0, 0, 0)),  # PR_GET_NO_NEW_PRIVS
    "root_writable": _writable("/"), "usr_writable": _writable("/usr"),
    "home_writable": _writable(os.path.expanduser("~")), "tmp_writable": _writable("/tmp"),
    "channel_writable": _writable("/run/sandbox"),
    "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else [],
    "routes": len(routes),
    "pids_max": _first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    "memory_max": _first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "memsw_max": _first("/sys/fs/cgroup/memory.swap.max", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
    "nofile": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1],
    "fsize": __import__("resource").getrlimit(__import__("resource").RLIMIT_FSIZE)[1],
    "env": sorted(os.environ),
    "kernel": os.uname().release,
}))
'''


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    # A failed check that is a warning (e.g. gVisor missing) does not fail the doctor.
    required: bool = True


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str, required: bool = True) -> None:
        self.checks.append(Check(name, ok, detail, required))

    @property
    def ok(self) -> bool:
        return all(c.ok or not c.required for c in self.checks)

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks], "facts": self.facts}, indent=2)

    def to_text(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            lines.append(f"[{mark}] {c.name}: {c.detail}")
        lines.append("all checks passed" if self.ok else "some checks failed: see the lines marked FAIL")
        return "\n".join(lines)


def hardening_findings(seen: dict[str, Any], memory_mb: int, pids: int) -> list[tuple[str, bool, str]]:
    """Judge a probe's output: (what, holds, detail) for each hardening default."""
    mb = 1024 * 1024
    out: list[tuple[str, bool, str]] = []
    out.append(("non-root user", seen["uid"] != 0 and seen["gid"] != 0, f"uid {seen['uid']}, gid {seen['gid']}"))
    out.append(("kernel user differs from the agent's", seen.get("agent_uid") not in (None, -1, seen["uid"]),
                f"kernel uid {seen['uid']}, agent uid {seen.get('agent_uid')}"))
    sets = {name: seen.get(f"cap_{name.lower()[3:]}") for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}
    # gVisor shows no ambient set; every other set must be there, and empty.
    held = {name: v for name, v in sets.items() if (v is None and name != "CapAmb") or (v is not None and int(v, 16))}
    out.append(("kernel holds no capability", not held,
                ", ".join(f"{name} {v}" for name, v in sets.items() if v is not None)))
    out.append(("no-new-privileges", seen.get("no_new_privs") == "1", f"NoNewPrivs {seen.get('no_new_privs')}"))
    out.append(("read-only root", not seen["root_writable"] and not seen["usr_writable"],
                f"/ writable: {seen['root_writable']}, /usr writable: {seen['usr_writable']}"))
    out.append(("channel folder read-only", not seen["channel_writable"], f"/run/sandbox writable: {seen['channel_writable']}"))
    out.append(("writable working folder", seen["home_writable"] and seen["tmp_writable"],
                f"home: {seen['home_writable']}, /tmp: {seen['tmp_writable']}"))
    out.append(("no network", seen["interfaces"] in ([], ["lo"]) and seen["routes"] == 0,
                f"interfaces {seen['interfaces']}, routes {seen['routes']}"))
    # gVisor shows no cgroup files inside the box: there the host's cgroup of the box is what counts.
    host = seen.get("_host") or {}
    pmax = seen.get("pids_max") or host.get("pids_max")
    out.append(("process limit", pmax is not None and pmax != "max" and int(pmax) <= pids, f"pids.max {pmax}"))
    mmax = seen.get("memory_max") or host.get("memory_max")
    out.append(("memory limit", mmax is not None and mmax != "max" and int(mmax) <= memory_mb * mb,
                f"memory limit {mmax} bytes"))
    sw = seen.get("memsw_max") or host.get("memsw_max")
    out.append(("no swap beyond the memory limit", sw is None or sw in ("0",) or (sw != "max" and int(sw) <= memory_mb * mb),
                f"memory+swap limit {sw}"))
    secrets_seen = [k for k in seen["env"] if any(s in k.upper() for s in ("KEY", "TOKEN", "SECRET", "PASSWORD"))]
    out.append(("no host secrets in the environment", not secrets_seen, f"variables: {', '.join(seen['env'])}"))
    return out


def host_view(container: str) -> dict[str, Any]:
    """The box's limits as the host enforces them: the cgroup files of its container, where readable."""
    from sandboxes.backends.docker.engine import engine_client

    attrs = engine_client().api.inspect_container(container)
    cid = attrs["Id"]
    parent = attrs["HostConfig"].get("CgroupParent") or "docker"
    view: dict[str, Any] = {}
    for key, paths in {
        "pids_max": (f"pids/{parent}/{cid}/pids.max", f"{parent}/{cid}/pids.max", f"system.slice/docker-{cid}.scope/pids.max"),
        "memory_max": (f"memory/{parent}/{cid}/memory.limit_in_bytes", f"{parent}/{cid}/memory.max",
                       f"system.slice/docker-{cid}.scope/memory.max"),
        "memsw_max": (f"memory/{parent}/{cid}/memory.memsw.limit_in_bytes",),
    }.items():
        for path in paths:
            try:
                with open(f"/sys/fs/cgroup/{path}") as f:
                    view[key] = f.read().strip()
                break
            except OSError:
                continue
    return view


async def _probe_box(runtime: str | None, image: str | None) -> dict[str, Any]:
    from sandboxes.sandbox import open_sandbox
    from sandboxes.spec import SandboxSpec

    spec = SandboxSpec(backend="docker", runtime=runtime, image=image, memory_mb=512, pids=128,
                       startup_timeout_s=60)
    async with open_sandbox(spec) as box:
        result = await box.execute(PROBE_CELL, timeout=30)
        host = await asyncio.to_thread(host_view, box.backend.container_name)
    if result.status != "ok":
        raise SandboxError(f"the probe cell ended with {result.status}: {result.error or result.stderr[-500:]}")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    from sandboxes.backends.docker.backend import engine_pids_limit

    seen["_spec"] = {"memory_mb": spec.memory_mb, "pids": engine_pids_limit(spec)}
    seen["_host"] = host
    return seen


def run_doctor(image: str | None = None, start_boxes: bool = True) -> Report:
    """Every check, in order; stops early only where later checks cannot run."""
    from sandboxes.backends.docker.engine import engine_client, engine_runtimes
    from sandboxes.errors import SandboxUnavailable
    from sandboxes.backends.docker.image_check import BUILD_COMMAND, default_image, describe_image

    report = Report()
    image = image or default_image()
    try:
        client = engine_client()
    except SandboxUnavailable as exc:
        report.add("engine", False, str(exc))
        return report
    info = client.info()
    version = client.version()
    report.facts["engine"] = {k: info.get(k) for k in ("ServerVersion", "CgroupVersion", "CgroupDriver",
                                                       "OperatingSystem", "KernelVersion", "SecurityOptions")}
    report.add("engine", True, f"Docker {version.get('Version')} (API {client.api.api_version}), cgroup "
               f"v{info.get('CgroupVersion', '?')}, {info.get('OperatingSystem')}")
    if "rootless" in " ".join(info.get("SecurityOptions") or []):
        report.add("rootful engine", False, "the engine runs rootless: uid mapping differs from what the "
                   "image expects; boxes may fail to reach their channel socket", required=False)

    runtimes = engine_runtimes(client)
    report.add("runc", "runc" in runtimes, f"runtimes: {', '.join(sorted(runtimes))}")
    runsc = runtimes.get("runsc")
    if runsc is None:
        binary = shutil.which("runsc")
        hint = ("runsc is installed but not registered" if binary else "gVisor is not installed (`apt-get install runsc`)")
        report.add("gVisor (runsc)", False, f"{hint}; register it in /etc/docker/daemon.json with "
                   '"runtimeArgs": ["--network=none", "--host-uds=all"] and restart the engine', required=False)
    else:
        args = runsc.get("runtimeArgs") or runsc.get("runtimeargs") or []
        missing = [a for a in ("--network=none", "--host-uds=all") if a not in args]
        report.add("gVisor (runsc)", not missing,
                   f"registered at {runsc.get('path')} with {args}" + (
                       f"; missing {missing}: without them gVisor boxes cannot start or reach their channel"
                       if missing else ""), required=False)

    seen_image = describe_image(client, image)
    report.facts["image"] = seen_image
    if not seen_image["present"]:
        report.add("image", False, f"{image} is not present: build it with `{BUILD_COMMAND}`")
        return report
    report.add("image", seen_image["up_to_date"],
               f"{image}, guest {seen_image['guest_version']}" + (
                   "" if seen_image["up_to_date"] else
                   f" but this controller is {seen_image['expected_guest_version']}: run `{BUILD_COMMAND}`"))
    if not seen_image["up_to_date"] or not start_boxes:
        return report

    for runtime in ("runc", "runsc"):
        if runtime == "runsc" and runsc is None:
            continue
        try:
            seen = asyncio.run(_probe_box(None if runtime == "runc" else runtime, image))
        except Exception as exc:
            report.add(f"{runtime}: box starts", False, f"{exc.__class__.__name__}: {str(exc)[:400]}",
                       required=runtime == "runc")
            continue
        report.facts[runtime] = {k: v for k, v in seen.items() if not k.startswith("_")}
        report.add(f"{runtime}: box starts", True, f"kernel {seen['kernel']}")
        for what, holds, detail in hardening_findings(seen, seen["_spec"]["memory_mb"], seen["_spec"]["pids"]):
            report.add(f"{runtime}: {what}", holds, detail)
    report.facts["host"] = {"python": platform.python_version(), "machine": platform.machine()}
    return report
