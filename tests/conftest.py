"""Shared test setup: quiet operational logs, and a check that no test leaves a box process behind."""

from __future__ import annotations

import logging
import os
import time

import pytest
import structlog

from sandboxes.backends.local import CONTROLLER_ENV, MARKER_ENV, marked_processes

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def box_processes(box_id: str | None = None) -> list[int]:
    """PIDs of live processes that belong to a local sandbox (all boxes, or one)."""
    if box_id is None:
        return sorted(marked_processes(f"{MARKER_ENV}=", prefix=True))
    return sorted(marked_processes(f"{MARKER_ENV}={box_id}"))


@pytest.fixture(autouse=True, scope="session")
def no_leftover_box_processes():
    """No local box started by this test session may have a process left when the session ends (other
    sessions' boxes on the same machine are not ours to judge: they carry another controller pid)."""
    yield
    # A box whose controller side went away without closing it (its event loop ended) is ended by its
    # agent, which exits when its connection closes: that takes a moment. What is still running after
    # the deadline is a leak.
    marker = f"{CONTROLLER_ENV}={os.getpid()}"
    deadline = time.monotonic() + 20.0
    while (left := sorted(marked_processes(marker))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"sandbox processes left running after the tests: {left}"
