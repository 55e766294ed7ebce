"""`rlm serve` under load, with one tenant flooding: prints figures; asserts nothing.

    python benchmarks/service_load.py                      # local boxes, 200 runs
    python benchmarks/service_load.py --sandbox docker

A real `rlm serve` process (SQLite file, the fake model server on 127.0.0.1 with a little latency),
five tenants made with `rlm tenants add`. Every run is a real RLM run: two model turns and one REPL
cell over its context, in its own sandbox. Three phases, 200 runs in all by default:

1. quiet:  four quiet tenants submit runs at a steady pace (no flood): the baseline;
2. flood:  the same quiet load while the fifth tenant submits its whole batch at once;
3. crash:  every tenant submits at once; the server is killed with SIGKILL once a few runs have
           finished, restarted on the same database, and every run is followed to its end.

Reported: accepted, finished, lost (accepted runs that never reached a terminal status), runs per
minute, per tenant p50/p99 of POST -> first event and POST -> result, the quiet tenants' p99
time-to-first-event with and without the flood, and box processes left after the crash.
Each run's time to first event is measured by the client: POST sent -> first Server-Sent Event read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlm.testing import FakeLLMServer, FakeRequest

ROOT = Path(__file__).resolve().parents[1]
ACTIVE = ("queued", "running")
QUIET = ["quiet-1", "quiet-2", "quiet-3", "quiet-4"]
FLOOD = "flood"


def policy(request: FakeRequest) -> str:
    if request.turn == 0:
        return "```repl\nprint(len(context))\n```"
    return "FINAL(done)"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Sample:
    tenant: str
    phase: str
    run_id: str | None = None
    posted: float = 0.0
    first_event: float | None = None
    result: float | None = None
    status: str | None = None


@dataclass
class Server:
    work: Path
    config: Path
    db: str
    port: int
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.work / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlm.cli", "serve", "--port", str(self.port),
                                      "--config", str(self.config), "--db", self.db, "--log-level", "warning"],
                                     stdout=log, stderr=log, env=self.env, cwd=self.work)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"rlm serve exited: see {self.work / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit("rlm serve did not become ready within 60 s")

    def tenant(self, name: str, *flags: str) -> str:
        out = subprocess.run([sys.executable, "-m", "rlm.cli", "tenants", "--db", self.db, "add", name, *flags],
                             capture_output=True, text=True, env=self.env, check=True)
        return out.stdout.strip()


async def one_run(client: httpx.AsyncClient, sample: Sample, context: str) -> None:
    sample.posted = time.monotonic()
    response = await client.post("/v1/runs", json={"root_prompt": "How long is it?", "context": context})
    if response.status_code != 202:
        sample.status = f"refused {response.status_code}"
        return
    sample.run_id = response.json()["id"]
    try:
        async with client.stream("GET", f"/v1/runs/{sample.run_id}/events",
                                 timeout=httpx.Timeout(30.0, read=None)) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    if sample.first_event is None:
                        sample.first_event = time.monotonic()
                    data = json.loads(line[6:])
                    if data.get("event") == "status" and data.get("status") not in ACTIVE:
                        sample.result = time.monotonic()
                        sample.status = data["status"]
                        return
    except httpx.HTTPError:
        pass  # the server went away (the crash phase); the run is followed up after the restart


async def paced(client: httpx.AsyncClient, tenant: str, phase: str, count: int, interval: float, offset: float,
                context: str, out: list[Sample]) -> None:
    await asyncio.sleep(offset)
    tasks = []
    for _ in range(count):
        sample = Sample(tenant, phase)
        out.append(sample)
        tasks.append(asyncio.create_task(one_run(client, sample, context)))
        await asyncio.sleep(interval)
    await asyncio.gather(*tasks)


def report(samples: list[Sample], phase: str) -> dict[str, float]:
    p99s = {}
    print(f"\n  phase {phase}: per tenant  (seconds; POST -> first event | POST -> result)")
    for tenant in [*QUIET, FLOOD]:
        mine = [s for s in samples if s.phase == phase and s.tenant == tenant and s.result is not None]
        if not mine:
            continue
        first = [s.first_event - s.posted for s in mine if s.first_event is not None]
        done = [s.result - s.posted for s in mine]
        print(f"    {tenant:8s} n={len(mine):3d}  first event p50 {pct(first, 50):6.3f} p99 {pct(first, 99):6.3f}"
              f"  | result p50 {pct(done, 50):6.2f} p99 {pct(done, 99):6.2f}")
    quiet_first = [s.first_event - s.posted for s in samples
                   if s.phase == phase and s.tenant in QUIET and s.first_event is not None]
    p99s["quiet_first_p99"] = pct(quiet_first, 99)
    return p99s


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="service-bench-"))
    with FakeLLMServer(policy, latency=args.model_latency) as fake:
        config = work / "service.toml"
        config.write_text("\n".join([
            "[server]", f'backends = ["{args.sandbox}"]', f"max_concurrent_runs = {args.max_running}",
            "max_boxes = 64", f'data_dir = "{work / "data"}"', "shutdown_grace_s = 5",
            '[models."gpt-5-mini"]', 'backend = "openai"', f'base_url = "{fake.openai_base_url}"', 'api_key = "bench"',
            "[defaults]", 'model = "gpt-5-mini"', 'sub_model = "gpt-5-mini"']) + "\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env["PYTHONPATH"] = str(ROOT)
        server = Server(work, config, f"sqlite:///{work / 'service.db'}", port, env=env)
        server.start()
        keys = {name: server.tenant(name, "--backends", args.sandbox, "--max-concurrent-runs", str(args.tenant_running),
                                    "--max-queued-runs", "1000") for name in [*QUIET, FLOOD]}
        context = "lorem ipsum " * 200
        clients = {name: httpx.AsyncClient(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"},
                                           limits=httpx.Limits(max_connections=400, max_keepalive_connections=400))
                   for name, key in keys.items()}
        samples: list[Sample] = []
        per_quiet = args.quiet_runs
        started = time.monotonic()

        print(f"rlm serve at {server.url}, sandbox {args.sandbox}, {args.max_running} runs at once "
              f"({args.tenant_running} per tenant), model latency {args.model_latency} s")
        # 1. quiet load only
        await asyncio.gather(*(paced(clients[t], t, "quiet", per_quiet, args.interval, i * args.interval / 4, context,
                                     samples) for i, t in enumerate(QUIET)))
        # 2. the same quiet load under a flood
        flood_samples: list[Sample] = []
        flood = [Sample(FLOOD, "flood") for _ in range(args.flood_runs)]
        samples += flood
        flood_tasks = [asyncio.create_task(one_run(clients[FLOOD], s, context)) for s in flood]
        await asyncio.sleep(1.0)  # the flood is queued before the quiet tenants start
        await asyncio.gather(*(paced(clients[t], t, "flood", per_quiet, args.interval, i * args.interval / 4, context,
                                     flood_samples) for i, t in enumerate(QUIET)))
        await asyncio.gather(*flood_tasks)
        samples += flood_samples
        load_minutes = (time.monotonic() - started) / 60
        load_done = sum(1 for s in samples if s.status is not None and not s.status.startswith("refused"))

        # 3. a crash mid-load
        crash = [Sample(t, "crash") for t in [*QUIET, FLOOD] for _ in range(args.crash_runs // 5)]
        samples += crash
        crash_tasks = [asyncio.create_task(one_run(clients[s.tenant], s, context)) for s in crash]
        while sum(1 for s in crash if s.result is not None) < max(1, len(crash) // 4):
            await asyncio.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        killed_with = {"done": sum(1 for s in crash if s.result is not None)}
        await asyncio.gather(*crash_tasks)
        server.start()
        deadline = time.monotonic() + 600
        for sample in samples:
            if sample.run_id is None:
                continue
            while sample.status is None or sample.status in ACTIVE:
                run = (await clients[sample.tenant].get(f"/v1/runs/{sample.run_id}")).json()
                if run.get("status") not in ACTIVE:
                    sample.status = run.get("status", "missing")
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        for client in clients.values():
            await client.aclose()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(120)

    from sandboxes.backends.local import marked_processes

    accepted = [s for s in samples if s.run_id is not None]
    lost = [s for s in accepted if s.status is None or s.status in ACTIVE or s.status == "missing"]
    boxes = sum(len(marked_processes(f"RLM_SERVICE_RUN={s.run_id}")) for s in accepted)
    statuses: dict[str, int] = {}
    for s in accepted:
        statuses[s.status or "none"] = statuses.get(s.status or "none", 0) + 1
    print(f"\nsubmitted {len(samples)}, accepted {len(accepted)}, finished {len(accepted) - len(lost)}, "
          f"lost {len(lost)}; statuses {statuses}")
    print(f"runs per minute (phases 1-2, {load_done} runs): {load_done / load_minutes:.1f}")
    base = report(samples, "quiet")
    under = report(samples, "flood")
    print(f"\n  quiet tenants' p99 time to first event: {base['quiet_first_p99']:.3f} s without the flood, "
          f"{under['quiet_first_p99']:.3f} s with it (ratio {under['quiet_first_p99'] / base['quiet_first_p99']:.2f})")
    print(f"\n  crash: SIGKILL after {killed_with['done']} of {len(crash)} runs had finished; after the restart "
          f"every accepted run is terminal: {not lost}; box processes left: {boxes}")
    print(f"  work folder: {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", default="local", choices=["local", "docker"])
    parser.add_argument("--quiet-runs", type=int, default=5, help="runs per quiet tenant, in each of phases 1 and 2")
    parser.add_argument("--flood-runs", type=int, default=120)
    parser.add_argument("--crash-runs", type=int, default=40)
    parser.add_argument("--interval", type=float, default=8.0, help="seconds between a quiet tenant's runs")
    parser.add_argument("--max-running", type=int, default=6, help="the server's max_concurrent_runs")
    parser.add_argument("--tenant-running", type=int, default=2, help="each tenant's max_concurrent_runs")
    parser.add_argument("--model-latency", type=float, default=0.05)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
