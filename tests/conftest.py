"""Shared test setup: quiet operational logs, and a check that no test leaves a box process behind."""

from __future__ import annotations

import logging
import os
import time

import pytest
import structlog

from sandboxes.backends.local import CONTROLLER_ENV, MARKER_ENV, marked_processes, stat_fields

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def box_processes(box_id: str | None = None) -> list[int]:
    """PIDs of live processes that belong to a local sandbox (all boxes, or one)."""
    if box_id is None:
        return sorted(marked_processes(f"{MARKER_ENV}=", prefix=True))
    return sorted(marked_processes(f"{MARKER_ENV}={box_id}"))


# Box processes of this session alive at the end of a test, with the first test they outlived: a
# leak found at the end of the session names where it began.
_outlived: dict[int, str] = {}


def _own_box_processes() -> set[int]:
    return marked_processes(f"{CONTROLLER_ENV}={os.getpid()}")


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    alive = _own_box_processes()
    for pid in list(_outlived):
        if pid not in alive:
            del _outlived[pid]
    for pid in alive:
        _outlived.setdefault(pid, nodeid)


def _described(pid: int) -> str:
    try:
        state = stat_fields(str(pid))[0].decode()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")[:80]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} (state {state}, {command!r}, alive since the end of {_outlived.get(pid, '?')})"


@pytest.fixture(autouse=True, scope="session")
def no_leftover_box_processes():
    """No local box started by this test session may have a process left when the session ends (other
    sessions' boxes on the same machine are not ours to judge: they carry another controller pid)."""
    yield
    # A box whose controller side went away without closing it (its event loop ended) is ended by its
    # agent, which exits when its connection closes: that takes a moment. What is still running after
    # the deadline is a leak.
    deadline = time.monotonic() + 20.0
    while (left := sorted(_own_box_processes())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"sandbox processes left running after the tests: {[_described(pid) for pid in left]}"
