"""The service under test: a real `rlm serve` process on 127.0.0.1, its models served by an in-process
FakeLLMServer (reached through the official SDKs), a SQLite file of its own, the local sandbox backend
(or Docker for the smoke test). Tenants are added with the real `rlm tenants` command.

The scripted root model reads directives from the question:
  [sleep]     the first cell sleeps for ten minutes (a run that is provably busy in its box)
  [subcall]   the first cell makes an llm_query (a second model, counted in usage)
  [spin]      every reply is a cell that prints and never a final answer (runs until a limit)
  [heavy]     like [spin], each call reporting 10,000 input tokens
otherwise the first cell prints ``LEN <len(context)>`` and the second reply is ``FINAL(len=<that>)``,
so a final answer proves the context reached the box.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from rlm.testing import FakeLLMServer, FakeRequest, Reply, is_rlm_root
from sandboxes.backends.local import marked_processes

RUN_MARKER_ENV = "RLM_SERVICE_RUN"
READY_DEADLINE_S = 60.0
_LEN = re.compile(r"LEN (\d+)")


def root_policy(request: FakeRequest) -> Reply | str:
    question = request.messages[0]["content"] if request.messages else ""
    if not is_rlm_root(request):
        return Reply(text=f"sub-answer to: {request.last_user[:40]}", input_tokens=50, output_tokens=10)
    if "[spin]" in question:
        return Reply(text="```repl\nprint('still going')\n```", input_tokens=1000, output_tokens=20)
    if "[heavy]" in question:  # reports far more input than it was sent (a provider the estimate cannot bound)
        return Reply(text="```repl\nprint('still going')\n```", input_tokens=10_000, output_tokens=20)
    if request.turn == 0:
        if "[sleep]" in question:
            code = "import time\ntime.sleep(600)"
        elif "[subcall]" in question:
            code = "print('LEN', len(context))\nprint(llm_query('summarise this'))"
        else:
            code = "print('LEN', len(context))"
        return Reply(text=f"```repl\n{code}\n```", input_tokens=100, output_tokens=20)
    found = _LEN.search(request.last_user)
    return Reply(text=f"FINAL(len={found.group(1) if found else 'unknown'})", input_tokens=120, output_tokens=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_boxes(run_id: str) -> set[int]:
    """PIDs of live processes of any sandbox opened for this run."""
    return marked_processes(f"{RUN_MARKER_ENV}={run_id}")


def wait_until(check: Any, deadline_s: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` (a cheap predicate on real state) until it returns something truthy."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(interval)


class Service:
    """One `rlm serve` process and the command line to manage its tenants."""

    def __init__(self, workdir: Path, fake: FakeLLMServer, *, backends: tuple[str, ...] = ("local",),
                 server_settings: dict[str, Any] | None = None, extra_toml: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.workdir = workdir
        self.db_url = f"sqlite:///{workdir / 'service.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        settings = {"data_dir": str(workdir / "data"), "backends": list(backends), "max_concurrent_runs": 4,
                    "max_boxes": 16, "body_timeout_s": 3.0, "max_request_bytes": 200_000,
                    "max_upload_bytes": 2_000_000, "tenant_poll_s": 0.2, "shutdown_grace_s": 2.0}
        settings.update(server_settings or {})
        lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        for name in ("gpt-5-mini", "gpt-5-nano"):
            lines += [f'[models."{name}"]', 'backend = "openai"', f'base_url = "{fake.openai_base_url}"',
                      'api_key = "test-provider-key"']
        lines += ['[models."claude-haiku-4-5"]', 'backend = "anthropic"', f'base_url = "{fake.anthropic_base_url}"',
                  'api_key = "test-provider-key"']
        lines += ["[defaults]", 'model = "gpt-5-mini"', 'sub_model = "gpt-5-nano"']
        self.config_path = workdir / "service.toml"
        self.config_path.write_text("\n".join(lines) + "\n" + extra_toml)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the process ---------------------------------------------------------------------------

    def start(self, ready_path: str = "/readyz") -> "Service":
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlm.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--config", str(self.config_path), "--db", self.db_url],
            stdout=log, stderr=log, cwd=self.workdir, env=env)
        log.close()
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"rlm serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"rlm serve not ready within {READY_DEADLINE_S} s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"rlm serve did not stop within {timeout} s after signal {sig}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- tenants -------------------------------------------------------------------------------

    def tenants(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "rlm.cli", "tenants", "--db", self.db_url,
                                 "--config", str(self.config_path), *args],
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"rlm tenants {' '.join(args)} failed: {result.stderr}")
        return result

    def add_tenant(self, name: str, *flags: str) -> str:
        """Add a tenant (local backend allowed unless the flags say otherwise); returns its API key."""
        if "--backends" not in flags:
            flags = ("--backends", "local", *flags)
        return self.tenants("add", name, *flags).stdout.strip()

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def events_of(client: httpx.Client, run_id: str, last_event_id: int | None = None,
              stop: Any = None) -> list[dict[str, Any]]:
    """Read a run's SSE stream until it ends (or ``stop(event)`` is true); events with their ids."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    out: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers,
                       timeout=httpx.Timeout(120.0)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in response.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                out.append(current)
                if stop is not None and stop(current):
                    return out
                current = {}
    return out


def wait_run(client: httpx.Client, run_id: str, deadline_s: float = 120.0) -> dict[str, Any]:
    """The run once it is over (follows its event stream, which ends with the run)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        events_of(client, run_id, stop=lambda e: e["event"] == "status" and e["data"]["status"] not in
                  ("queued", "running"))
    raise AssertionError(f"run {run_id} did not end within {deadline_s} s")


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(root_policy) as fake:
        yield fake


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLMServer) -> Iterator[Service]:
    """One server shared by the tests that do not stop it."""
    svc = Service(tmp_path_factory.mktemp("service"), fake_llm).start()
    yield svc
    svc.stop()


@pytest.fixture
def make_service(tmp_path: Path, fake_llm: FakeLLMServer) -> Iterator[Any]:
    """Servers of the test's own (for tests that stop or kill them, or need other settings):
    ``make_service(backends=..., server_settings=...)`` returns a Service, not yet started."""
    made: list[Service] = []

    def make(**kwargs: Any) -> Service:
        folder = tmp_path / f"svc{len(made)}"
        folder.mkdir()
        made.append(Service(folder, fake_llm, **kwargs))
        return made[-1]

    yield make
    for svc in made:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop(signal.SIGKILL)


def submit(client: httpx.Client, prompt: str = "How long is it?", context: Any = "hello world", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/runs", json={"root_prompt": prompt, "context": context, **body})
    assert response.status_code == 202, response.text
    return response.json()
