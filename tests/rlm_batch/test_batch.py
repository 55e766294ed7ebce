"""`rlm batch`: durable results, resume, failure isolation, bounded concurrency, the summary.

The first tests drive ``run_batch`` with a scripted runner (fast, exact). The last ones run the real
command as a subprocess: 200 tasks, the real RLM loop, the fake model server and a sandbox backend
(local by default; RLM_TEST_ENVIRONMENT=docker for Docker), killed with SIGKILL halfway and resumed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm.batch import FAILED, BatchError, ResultsFile, Task, run_batch, scan_tasks
from rlm.budget import Totals
from rlm.testing import FakeLLMServer, FakeRequest
from tests.conftest import box_processes

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = os.environ.get("RLM_TEST_ENVIRONMENT", "local")


class FakeResult:
    """What the batch needs of an RLMResult."""

    def __init__(self, status: str, response: str | None, cost: float | None) -> None:
        self.status = status
        self.response = response
        self.totals = Totals(calls=1, input_tokens=10, output_tokens=2, cost_usd=cost)

    def to_dict(self) -> dict[str, Any]:
        return {"response": self.response, "status": self.status, "cost_usd": self.totals.cost_usd,
                "execution_time": 0.01}


def write_tasks(path: Path, items: list[Any]) -> Path:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_every_task_gets_one_durable_line_and_a_rerun_skips_them(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": i, "question": f"q{i}", "context": "c" * i, "gold": i * 2} for i in range(30)])
    ran: list[str] = []

    async def runner(task: Task) -> FakeResult:
        ran.append(task.key)
        await asyncio.sleep(0.001 * (task.id % 5))
        assert task.context == "c" * task.id and task.question == f"q{task.id}"
        return FakeResult("final", f"answer {task.id}", 0.01)

    out = tmp_path / "results.jsonl"
    summary = await run_batch(tasks, out, runner, concurrency=7, progress=open(os.devnull, "w"))
    lines = read_results(out)
    assert sorted(r["id"] for r in lines) == list(range(30))
    assert all(r["task"] == {"gold": r["id"] * 2} for r in lines)  # extra fields travel with the result
    assert summary.statuses == {"final": 30} and summary.ran == 30 and summary.remaining == 0
    assert summary.cost_usd == pytest.approx(0.30) and summary.input_tokens == 300
    ran.clear()
    again = await run_batch(tasks, out, runner, concurrency=7, progress=open(os.devnull, "w"))
    assert ran == [] and again.already_done == 30 and again.ran == 0
    assert again.all_statuses == {"final": 30} and again.all_cost_usd == pytest.approx(0.30)
    assert len(read_results(out)) == 30


async def test_a_failing_task_never_stops_the_others(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "a.txt").write_text("from a file")
    (tmp_path / "ctx" / "b.json").write_text('{"k": [1, 2]}')
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "file", "question": "q", "context_path": "ctx/a.txt"},
        {"id": "json", "question": "q", "context_path": "ctx/b.json"},
        {"id": "missing", "question": "q", "context_path": "ctx/nope.txt"},
        {"id": "both", "question": "q", "context": "x", "context_path": "ctx/a.txt"},
        {"id": "noq", "context": "x"},
        "this is not json",
        "",
        {"id": "boom", "question": "q", "context": "x"},
        {"id": "fine", "question": "q", "context": ["a", "b"]},
    ])
    seen: dict[str, Any] = {}

    async def runner(task: Task) -> FakeResult:
        if task.key == "boom":
            raise RuntimeError("the sandbox would not start")
        seen[task.key] = task.context
        return FakeResult("final", "ok", None)

    out = tmp_path / "results.jsonl"
    summary = await run_batch(tasks, out, runner, concurrency=3, progress=open(os.devnull, "w"))
    by_key = {r["key"]: r for r in read_results(out)}
    assert seen == {"file": "from a file", "json": {"k": [1, 2]}, "fine": ["a", "b"]}
    assert {k for k, r in by_key.items() if r["status"] == FAILED} == {"missing", "both", "noq", "line:6", "boom"}
    assert "nope.txt" in by_key["missing"]["message"]
    assert "exactly one" in by_key["both"]["message"]
    assert "question" in by_key["noq"]["message"]
    assert "line 6" in by_key["line:6"]["message"]
    assert by_key["boom"]["message"] == "RuntimeError: the sandbox would not start"
    assert summary.statuses == {"final": 3, FAILED: 5} and summary.unpriced == 3


def test_duplicate_ids_are_refused_before_anything_runs(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": 1, "question": "q", "context": "x"},
                                                    {"id": "1", "question": "q", "context": "y"}])
    with pytest.raises(BatchError, match="duplicate task id '1' on lines 1 and 2"):
        scan_tasks(tasks)


async def test_partial_last_line_from_a_kill_is_dropped_and_its_task_reruns(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": i, "question": "q", "context": "x"} for i in range(3)])
    out = tmp_path / "results.jsonl"
    whole = json.dumps({"key": "0", "id": 0, "status": "final", "cost_usd": 0.5}) + "\n"
    out.write_text(whole + '{"key": "1", "id": 1, "status": "fin')  # killed mid-write
    ran: list[str] = []

    async def runner(task: Task) -> FakeResult:
        ran.append(task.key)
        return FakeResult("final", "ok", 0.25)

    progress = tmp_path / "progress.txt"
    with open(progress, "w") as stream:
        summary = await run_batch(tasks, out, runner, concurrency=2, progress=stream)
    assert sorted(ran) == ["1", "2"]
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == whole.strip()  # the fragment is gone, not glued to a new line
    assert sorted(json.loads(line)["key"] for line in lines) == ["0", "1", "2"]
    assert summary.all_cost_usd == pytest.approx(1.0)
    assert "partial line" in progress.read_text()


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": i, "question": "q", "context": "x"} for i in range(40)])
    running = 0
    peak = 0
    five_at_once = asyncio.Event()

    async def runner(task: Task) -> FakeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 5:
            five_at_once.set()
        # The first runs hold until five run at once, so the bound is reached whatever the timing;
        # a sixth would show as a peak above five.
        await asyncio.wait_for(five_at_once.wait(), 30)
        await asyncio.sleep(0)
        running -= 1
        return FakeResult("final", "ok", 0.0)

    await run_batch(tasks, tmp_path / "r.jsonl", runner, concurrency=5, progress=open(os.devnull, "w"))
    assert peak == 5


async def test_total_budget_stops_new_tasks(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": i, "question": "q", "context": "x"} for i in range(20)])

    async def runner(task: Task) -> FakeResult:
        return FakeResult("final", "ok", 1.0)

    summary = await run_batch(tasks, tmp_path / "r.jsonl", runner, concurrency=1, max_total_cost_usd=5.0,
                              progress=open(os.devnull, "w"))
    assert summary.ran == 5 and summary.remaining == 15 and "budget" in (summary.stopped or "")
    assert any("not run yet" in line for line in summary.lines())


def test_results_file_ignores_a_damaged_middle_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text('{"key": "a", "status": "final"}\n###\n{"key": "b", "status": "error"}\n')
    assert set(ResultsFile(out).load()) == {"a", "b"}


# --- the real command, killed and resumed --------------------------------------------------------------


class TaskPolicy:
    """The fake model's behaviour: look at the context in the REPL, then answer with the task's id.

    Records, per phase, which task ids started a run (the first request of a root conversation), so
    the test can tell which tasks ran in which invocation of the command."""

    def __init__(self) -> None:
        self.phase = 0
        self.started: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.lock = threading.Lock()

    def __call__(self, request: FakeRequest) -> str:
        match = re.search(r"TASK=(\w+)", request.text)
        task = match.group(1) if match else "?"
        if request.turn == 0:
            with self.lock:
                self.started[self.phase][task] += 1
            return "```repl\nprint(len(context))\n```"
        return f"FINAL(done {task})"


def batch_command(tasks: Path, out: Path, server: FakeLLMServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlm.cli", "batch", str(tasks), "--out", str(out), "--concurrency", "16",
            "--sandbox", ENVIRONMENT, "--model", "gpt-5-mini", "--sub-model", "gpt-5-nano",
            "--base-url", server.openai_base_url, "--max-iterations", "4", *extra]


def batch_env(box_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env["OPENAI_API_KEY"] = "test-key"
    env["PYTHONPATH"] = str(ROOT)
    env["TMPDIR"] = str(box_tmp)  # local boxes' folders go here: how the test finds them
    return env


@pytest.fixture
def box_tmp() -> Any:
    """A short folder for the batch's TMPDIR (a box's socket path must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rlmb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def boxes_of(tmp_path: Path, batch_pid: int) -> list[str]:
    """Boxes the batch process started that still exist: local box processes (their environment
    names folders under ``tmp_path``, the batch's TMPDIR) or Docker containers it owns."""
    found = [f"pid {pid}" for pid in box_processes() if _environ_mentions(pid, str(tmp_path))]
    if ENVIRONMENT == "docker":
        listing = subprocess.run(["docker", "ps", "--filter", "label=org.rlm-sandboxes.managed", "--format",
                                  '{{.ID}} {{.Label "org.rlm-sandboxes.owner"}}'],
                                 capture_output=True, text=True, timeout=30).stdout
        found += [line for line in listing.splitlines() if f":{batch_pid}:" in line]
    return found


def _environ_mentions(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def wait_for_no_boxes(tmp_path: Path, batch_pid: int, deadline_s: float) -> list[str]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not boxes_of(tmp_path, batch_pid):
            return []
        time.sleep(0.2)
    return boxes_of(tmp_path, batch_pid)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_200_tasks_killed_halfway_and_resumed(tmp_path: Path, box_tmp: Path) -> None:
    n = 200
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"id": f"t{i:03d}", "question": f"How long is the context? TASK=t{i:03d}", "context": "word " * (100 + i)}
        for i in range(n)])
    out = tmp_path / "results.jsonl"
    policy = TaskPolicy()
    with FakeLLMServer(policy) as server:
        # First run: SIGKILL once about half the results are on disk.
        policy.phase = 1
        proc = subprocess.Popen(batch_command(tasks, out, server), env=batch_env(box_tmp), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=tmp_path)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= n // 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        done_first = {json.loads(line)["key"] for line in out.read_text().splitlines() if line.endswith("}")}
        assert n // 2 <= len(done_first) < n
        # The killed controller's boxes go away on their own (each agent exits when its channel closes).
        assert wait_for_no_boxes(box_tmp, proc.pid, 60) == []

        # Second run: the same command finishes the rest.
        policy.phase = 2
        started = time.monotonic()
        summary_path = tmp_path / "summary.json"
        second = subprocess.run(batch_command(tasks, out, server, "--summary-json", str(summary_path)),
                                env=batch_env(box_tmp), capture_output=True, text=True, cwd=tmp_path, timeout=800)
        resume_s = time.monotonic() - started
    assert second.returncode == 0, second.stderr[-3000:]
    results = read_results(out)
    keys = [r["key"] for r in results]
    assert len(keys) == n and set(keys) == {f"t{i:03d}" for i in range(n)}  # none lost, none written twice
    assert all(r["status"] == "final" and r["response"] == f"done {r['key']}" for r in results)
    # No task that had finished ran again; every task that had not ran exactly once.
    rerun = policy.started[2]
    assert not (set(rerun) & done_first)
    assert set(rerun) == {f"t{i:03d}" for i in range(n)} - done_first
    assert all(count == 1 for count in rerun.values())
    # The summary: counts, cost and time, on stderr and as JSON.
    assert f"{n} of {n} have results: final {n}" in second.stderr
    assert re.search(r"cost \$\d+\.\d{4}", second.stderr) and re.search(r"ran \d+ task\(s\) in [\d.]+ s", second.stderr)
    summary = json.loads(summary_path.read_text())
    assert summary["already_done"] == len(done_first) and summary["ran"] == n - len(done_first)
    assert summary["all_statuses"] == {"final": n} and summary["all_cost_usd"] > 0 and summary["wall_s"] > 0
    assert summary["unpriced"] == 0
    print(f"\n200-task batch ({ENVIRONMENT}): killed after {len(done_first)} results; "
          f"resume ran {summary['ran']} in {resume_s:.1f} s; total cost ${summary['all_cost_usd']:.4f}")


async def test_results_that_cannot_be_written_stop_the_batch_and_every_run(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": i, "question": "q", "context": "x"} for i in range(10)])
    out = tmp_path / "results.jsonl"
    cancelled = 0
    started = 0
    others_running = asyncio.Event()

    async def runner(task: Task) -> FakeResult:
        nonlocal cancelled, started
        if task.id == 0:
            # Break the results file only once the other three runs are in flight.
            await others_running.wait()
            out.unlink(missing_ok=True)
            out.mkdir()  # the results file can no longer be opened for appending
            return FakeResult("final", "ok", 0.0)
        started += 1
        if started == 3:
            others_running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return FakeResult("final", "ok", 0.0)

    with pytest.raises(OSError):
        await asyncio.wait_for(run_batch(tasks, out, runner, concurrency=4, progress=open(os.devnull, "w")), 10)
    assert cancelled == 3  # the other runs in flight were stopped, not left behind


async def test_an_unwritable_results_path_is_refused_before_anything_runs(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": 1, "question": "q", "context": "x"}])

    async def runner(task: Task) -> FakeResult:
        raise AssertionError("nothing may run")

    with pytest.raises(BatchError, match="cannot use the results file"):
        await run_batch(tasks, tmp_path / "no" / "such" / "dir.jsonl", runner, progress=open(os.devnull, "w"))
